// `strata capture` as a user runs it: the CLI, its errors, and peak memory of whole processes.
#define BOOST_TEST_MODULE capture_cli
#include <boost/test/unit_test.hpp>

#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include "io/activation_store.hpp"
#include "test_capture_fixture.hpp"
#include "test_helpers.hpp"

extern char** environ;
namespace fs = std::filesystem;
using namespace strata;

namespace {

struct ChildRun {
  int exit_code = -1;
  long peak_rss_kib = 0;  // the child's own VmHWM (ru_maxrss of exactly this child)
};

ChildRun run_strata(const std::vector<std::string>& args) {
  std::vector<std::string> argv_storage{testing::strata_binary().string()};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_storage) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  BOOST_REQUIRE(posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) == 0);
  int status = 0;
  rusage usage{};
  BOOST_REQUIRE(wait4(pid, &status, 0, &usage) == pid);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, usage.ru_maxrss};
}

std::string quoted(const fs::path& p) { return "'" + p.string() + "'"; }

}  // namespace

BOOST_AUTO_TEST_CASE(cli_writes_stores_for_depths_and_lists_the_files) {
  fs::path out = testing::fresh_dir("capture-cli");
  std::string output;
  int code = testing::run_command(fmt::format("{} capture --model {} --depths 0.5,1.0 --dataset synthetic --out {} "
                                              "--batch-size 4 --num-batches 2 --seq-len 32 --store-dtype bf16",
                                              quoted(testing::strata_binary()), quoted(testing::tiny_capture_checkpoint()),
                                              quoted(out)),
                                  &output);
  BOOST_TEST_MESSAGE(output);
  BOOST_REQUIRE(code == 0);
  // The model name defaults to the checkpoint's directory name; depths 0.5 and 1.0 of 4 layers = layers 2, 4.
  for (int layer : {2, 4}) {
    auto store = io::ActivationStore::open(out, "capture-tiny-gpt2", layer);
    BOOST_TEST(store.meta()["store_dtype"] == "bf16");
    BOOST_TEST(store.meta()["relative_depth"].get<double>() == layer / 4.0);
    BOOST_TEST(output.find(store.files().front().string()) != std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(cli_layer_out_of_range_names_the_real_depth) {
  fs::path out = testing::fresh_dir("capture-cli-range");
  std::string output;
  int code = testing::run_command(fmt::format("{} capture --model {} --layers 2,7 --dataset synthetic --out {}",
                                              quoted(testing::strata_binary()),
                                              quoted(testing::tiny_capture_checkpoint()), quoted(out)),
                                  &output);
  BOOST_TEST(code == 1);
  BOOST_TEST(output.find("layer 7 does not exist; the model has 4 layers") != std::string::npos, output);
  BOOST_TEST(fs::is_empty(out));
}
