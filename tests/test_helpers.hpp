// Small helpers shared by the test suites.
#pragma once
#include <cstdlib>
#include <filesystem>
#include <string>

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

}  // namespace strata::testing
