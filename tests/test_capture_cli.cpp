// `strata capture` as a user runs it: the CLI, its errors, and peak memory of whole processes.
#define BOOST_TEST_MODULE capture_cli
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <torch/torch.h>

#include <fstream>

#include "io/activation_store.hpp"
#include "io/safetensors.hpp"
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
  posix_spawn_file_actions_t quiet;  // the child lists the files it wrote on stdout: not wanted here
  posix_spawn_file_actions_init(&quiet);
  posix_spawn_file_actions_addopen(&quiet, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, argv[0], &quiet, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&quiet);
  BOOST_REQUIRE(spawned == 0);
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

// Memory is bounded by the batch and the shard, not by the number of tokens: capturing 10x the tokens
// (from a dataset far larger than either run reads, so documents must stream too) raises the peak RSS
// of the whole process by less than a small constant, although 10x the activations pass through it.
BOOST_AUTO_TEST_CASE(capturing_ten_times_the_tokens_does_not_raise_peak_memory) {
  const fs::path ckpt = testing::tiny_capture_checkpoint();
  auto capture = [&](int64_t tokens) {
    const fs::path out = testing::fresh_dir(fmt::format("capture-memory-{}", tokens));
    ChildRun run = run_strata({"capture", "--model", ckpt.string(), "--layers", "0,1,2,3,4", "--dataset", "synthetic:3",
                               "--max-docs", "100000000", "--packing", "pack", "--seq-len", "64", "--batch-size", "32",
                               "--tokens", std::to_string(tokens), "--shard-size-mb", "2", "--out", out.string()});
    BOOST_REQUIRE(run.exit_code == 0);
    int64_t stored_bytes = 0;
    for (const auto& entry : fs::directory_iterator(out)) stored_bytes += static_cast<int64_t>(entry.file_size());
    auto store = io::ActivationStore::open(out, "capture-tiny-gpt2", 4);
    BOOST_TEST(store.rows() == tokens);  // packing: every input token is a real, non-special row
    fs::remove_all(out);
    BOOST_TEST_MESSAGE(fmt::format("{} tokens: peak RSS {:.1f} MiB, {:.1f} MiB of stores written", tokens,
                                   run.peak_rss_kib / 1024.0, stored_bytes / 1048576.0));
    return std::pair{run.peak_rss_kib, stored_bytes};
  };
  const auto [small_rss_kib, small_bytes] = capture(20'000);
  const auto [large_rss_kib, large_bytes] = capture(200'000);
  BOOST_TEST(large_bytes > 9 * small_bytes);
  const double growth_mib = (large_rss_kib - small_rss_kib) / 1024.0;
  // 10x tokens move ~130 MiB more activations through the process; allow 8 MiB for allocator noise.
  BOOST_TEST(growth_mib < 8.0, "peak RSS grew by " << growth_mib << " MiB for 10x the tokens");
}

// The done-when of capture, through the two commands a user has: the rows `strata capture` stores are
// exactly `strata forward`'s resid_post at the same (sequence, position), bit for bit.
BOOST_AUTO_TEST_CASE(captured_rows_equal_strata_forward_resid_post) {
  const fs::path ckpt = testing::tiny_capture_checkpoint();
  const fs::path dir = testing::fresh_dir("capture-vs-forward");
  std::string output;
  const int captured = testing::run_command(
      fmt::format("{} capture --model {} --name tiny --layers 2,4 --dataset synthetic --batch-size 4 --num-batches 1 "
                  "--seq-len 48 --keep-special --out {}",
                  quoted(testing::strata_binary()), quoted(ckpt), quoted(dir / "stores")),
      &output);
  BOOST_TEST_REQUIRE(captured == 0, output);

  // The same four sequences, as capture cut them, given to `strata forward` as one batch.
  const auto seqs = text::make_sequences(text::Tokenizer::load(ckpt), text::load_dataset("synthetic", 4), 48,
                                         text::PackingPolicy::Truncate, true);
  BOOST_REQUIRE(seqs.size() == 4u);
  size_t T = 0;
  for (const auto& s : seqs) T = std::max(T, s.ids.size());
  nlohmann::json ids = nlohmann::json::array(), mask = nlohmann::json::array();
  for (const auto& s : seqs) {
    std::vector<int64_t> row(s.ids.begin(), s.ids.end()), real(s.ids.size(), 1);
    row.resize(T, 0), real.resize(T, 0);
    ids.push_back(row), mask.push_back(real);
  }
  std::ofstream(dir / "ids.json") << nlohmann::json{{"input_ids", ids}, {"attention_mask", mask}}.dump();
  const int forwarded = testing::run_command(fmt::format("{} forward --model {} --ids {} --out {}",
                                                         quoted(testing::strata_binary()), quoted(ckpt),
                                                         quoted(dir / "ids.json"), quoted(dir / "forward.safetensors")),
                                             &output);
  BOOST_TEST_REQUIRE(forwarded == 0, output);

  io::SafetensorsFile forward(dir / "forward.safetensors");
  for (int layer : {2, 4}) {
    auto store = io::ActivationStore::open(dir / "stores", "tiny", layer);
    const torch::Tensor hidden = forward.load(fmt::format("resid_post.{}", layer - 1));  // [4, T, H]
    const torch::Tensor expected =
        hidden.index({store.index_column("seq_id"), store.index_column("token_index")});  // [rows, H]
    size_t real_tokens = 0;
    for (const auto& s : seqs) real_tokens += s.ids.size();
    BOOST_TEST(store.rows() == static_cast<int64_t>(real_tokens));  // --keep-special: every real token
    BOOST_TEST(torch::equal(store.read_rows(0, store.rows()), expected), "layer " << layer);
  }
}

// Documents stream, so a bad record deep in a dataset is met mid-capture: the error names file and line,
// and no store (finished or temporary) is left behind.
BOOST_AUTO_TEST_CASE(a_bad_record_mid_dataset_fails_naming_file_and_line_and_leaves_nothing) {
  const fs::path dir = testing::fresh_dir("capture-bad-jsonl");
  {
    std::ofstream jsonl(dir / "d.jsonl");
    for (int i = 0; i < 100; ++i) jsonl << nlohmann::json{{"text", fmt::format("Tom has {} apples.", i)}}.dump() << "\n";
    jsonl << "{broken\n";
  }
  std::string output;
  const int code = testing::run_command(
      fmt::format("{} capture --model {} --layers 1,2 --dataset jsonl:{} --seq-len 32 --batch-size 8 --num-batches 100 --out {}",
                  quoted(testing::strata_binary()), quoted(testing::tiny_capture_checkpoint()),
                  (dir / "d.jsonl").string(), quoted(dir / "out")),
      &output);
  BOOST_TEST(code == 1);
  BOOST_TEST(output.find("d.jsonl:101: invalid JSON") != std::string::npos, output);
  BOOST_TEST((!fs::exists(dir / "out") || fs::is_empty(dir / "out")));
}
