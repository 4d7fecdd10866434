// The CPU-runnable parts of the GPU tooling: scripts/gpu-check.sh (parses, refuses bad arguments, a dry run
// lists every step and extrapolates sample figures) and the configure-time LibTorch ABI check
// (cmake/torch_abi.cmake).
#define BOOST_TEST_MODULE core_gpu_check
#include <boost/test/unit_test.hpp>

#include "core/fs.hpp"
#include "test_helpers.hpp"

using namespace strata;
namespace fs = std::filesystem;

namespace {

const fs::path kSource = STRATA_SOURCE_DIR;

bool contains(const std::string& text, const std::string& needle) { return text.find(needle) != std::string::npos; }

}  // namespace

BOOST_AUTO_TEST_CASE(gpu_check_script_parses) {
  std::string output;
  BOOST_TEST(testing::run_command("bash -n " + (kSource / "scripts/gpu-check.sh").string(), &output) == 0, output);
}

BOOST_AUTO_TEST_CASE(gpu_check_dry_run_lists_every_step_and_extrapolates) {
  const fs::path dir = testing::fresh_dir("gpu_check_dry_run");
  const fs::path results = dir / "results.txt";
  std::string output;
  const int rc = testing::run_command("env -u OUT bash " + (kSource / "scripts/gpu-check.sh").string() +
                                          " --dry-run --build-dir " + (dir / "build").string() + " --out " +
                                          results.string(),
                                      &output);
  BOOST_TEST(rc == 0, output);
  BOOST_REQUIRE(fs::exists(results));
  const std::string text = read_text_file(results);
  for (const char* needle :
       {"-DCMAKE_PREFIX_PATH=", "deps/usr", "test_sae_portable", "test_models", "bench sae --device cuda:0 --d-in 2560",
        "bench capture --device cuda:0 --dtype bf16", "phase5_4 capture + SAE training:", "results: "})
    BOOST_TEST(contains(text, needle), needle << " in:\n" << text);
  // The .debs are unpacked inside the build tree, never into /.
  BOOST_TEST(contains(text, "into " + (dir / "build" / "deps").string()), text);
  // Sample figures: 6 SAEs of d_in 2560 at 320000 tok/s over 10 x 0.9 x 204800 tokens = 35 s.
  BOOST_TEST(contains(text, "phi-2: capture 6 s, 6 SAEs 35 s"), text);
}

BOOST_AUTO_TEST_CASE(gpu_check_refuses_bad_arguments) {
  const std::string script = "env -u OUT bash " + (kSource / "scripts/gpu-check.sh").string();
  std::string output;
  BOOST_TEST(testing::run_command(script + " --dry-run --device cpu", &output) == 2);
  BOOST_TEST(contains(output, "not a CUDA device"), output);
  BOOST_TEST(testing::run_command(script + " --frobnicate", &output) == 2);
  BOOST_TEST(contains(output, "unknown argument '--frobnicate'"), output);
}

BOOST_AUTO_TEST_CASE(pre_cxx11_abi_libtorch_fails_at_configure_time_naming_the_fix) {
  const std::string script = (kSource / "cmake/torch_abi.cmake").string();
  std::string output;
  BOOST_TEST(testing::run_command("cmake -DTORCH_CXX_FLAGS=-D_GLIBCXX_USE_CXX11_ABI=0 -DTorch_DIR=/opt/old-torch -P " +
                                      script,
                                  &output) != 0);
  for (const char* needle : {"/opt/old-torch", "pre-C++11 ABI", "torch.utils.cmake_prefix_path", "libtorch-dev"})
    BOOST_TEST(contains(output, needle), needle << " in:\n" << output);
  BOOST_TEST(testing::run_command("cmake -DTORCH_CXX_FLAGS=-D_GLIBCXX_USE_CXX11_ABI=1 -DTorch_DIR=/opt/torch -P " + script,
                                  &output) == 0,
             output);
  BOOST_TEST(contains(output, "C++11 ABI"), output);
}
