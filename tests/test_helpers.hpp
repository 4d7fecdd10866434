// Small helpers shared by the test suites.
#pragma once
#include <boost/test/unit_test.hpp>

#include <cstdlib>
#include <filesystem>
#include <initializer_list>
#include <string>

#include "core/error.hpp"

namespace strata::testing {

inline std::filesystem::path data_dir() { return STRATA_TEST_DATA; }
inline std::filesystem::path strata_binary() { return STRATA_BINARY; }

// A fresh, empty directory under the build tree for one test.
inline std::filesystem::path fresh_dir(const std::string& name) {
  const char* root = std::getenv("STRATA_TEST_TMP");
  std::filesystem::path dir = std::filesystem::path(root ? root : "/tmp/strata-test") / name;
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// Runs a shell command, returns its exit status (stdout/stderr captured into `output` if given).
int run_command(const std::string& command, std::string* output = nullptr);

// Expects fn() to throw a strata::Error whose message contains every one of `needles`.
template <class Fn>
void expect_error(Fn&& fn, std::initializer_list<std::string> needles) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string message = e.what();
    BOOST_TEST_MESSAGE("error: " << message);
    for (const auto& needle : needles) BOOST_TEST(message.find(needle) != std::string::npos, needle << " in: " << message);
    return;
  }
  BOOST_FAIL("expected a strata::Error");
}

}  // namespace strata::testing
