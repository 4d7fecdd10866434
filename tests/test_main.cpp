// Shared main for every test executable: the same BLAS start-up as the CLI (re-exec with the right
// OpenBLAS core), then Boost.Test. Suites are compiled with BOOST_TEST_NO_MAIN, so BOOST_TEST_MODULE
// defines only init_unit_test() and this is the one main.
#include <boost/test/unit_test.hpp>

#include "core/log.hpp"
#include "core/runtime.hpp"

bool init_unit_test();

int main(int argc, char** argv) {
  strata::runtime::ensure_blas_core(argc, argv);
  strata::log::init();
  strata::runtime::set_threads(0);
  return boost::unit_test::unit_test_main(&init_unit_test, argc, argv);
}

#include <array>
#include <cstdio>
#include <sys/wait.h>

#include "test_helpers.hpp"

int strata::testing::run_command(const std::string& command, std::string* output) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (!pipe) return -1;
  std::array<char, 4096> buffer;
  std::string text;
  while (size_t n = fread(buffer.data(), 1, buffer.size(), pipe)) text.append(buffer.data(), n);
  int status = pclose(pipe);
  if (output) *output = text;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}
