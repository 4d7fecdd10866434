#define BOOST_TEST_MODULE reliability
#include <boost/test/unit_test.hpp>

#include <cstdlib>
#include <fstream>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/read_bounded.hpp"
#include "harness/manifest.hpp"
#include "harness/run_dir.hpp"
#include "harness/runner.hpp"
#include "harness/verify.hpp"
#include "io/activation_store.hpp"
#include "io/safetensors.hpp"
#include "io/safetensors_header.hpp"
#include "io/store_meta.hpp"
#include "models/spec.hpp"
#include "models/transformer.hpp"
#include "sae/cfg.hpp"
#include "test_helpers.hpp"
#include "text/dataset.hpp"
#include "text/tokenizer.hpp"
#include "validation/gates.hpp"

// Issue 17: files from elsewhere and interrupted or starved runs. Each case is a probe of the issue (or a
// fuzzer finding) with the error it must give.

using namespace strata;
namespace fs = std::filesystem;
using nlohmann::json;
using testing::expect_error;

namespace {

fs::path write_bytes(const fs::path& file, std::string_view bytes) {
  fs::create_directories(file.parent_path());
  std::ofstream out(file, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return file;
}

// A copy of a model fixture whose config.json is edited by `edit`.
fs::path model_with_config(const std::string& name, const std::string& test, const std::function<void(json&)>& edit) {
  fs::path dir = testing::fresh_dir(test);
  for (const auto& e : fs::directory_iterator(testing::data_dir() / "models" / name))
    fs::copy_file(e.path(), dir / e.path().filename());
  json config = json::parse(read_text_file(dir / "config.json"));
  edit(config);
  atomic_write_text(dir / "config.json", config.dump(2));
  return dir;
}

// Sets an environment variable for the lifetime of the object.
struct ScopedEnv {
  std::string name;
  ScopedEnv(std::string n, const std::string& value) : name(std::move(n)) { ::setenv(name.c_str(), value.c_str(), 1); }
  ~ScopedEnv() { ::unsetenv(name.c_str()); }
};

}  // namespace

// ------------------------------------------------------------------ untrusted numbers are bounded

BOOST_AUTO_TEST_CASE(config_json_depth_is_bounded_before_any_allocation) {
  // The probes of the issue: 2^32+6 layers (capture grew to 23 GB), 1e12 layers (reported as -727379968).
  expect_error([] { models::parse_config({{"model_type", "gpt2"}, {"n_layer", (1ll << 32) + 6}}, "m/config.json"); },
               {"m/config.json", "number of layers = 4294967302", "limit of 1024"});
  expect_error([] { models::parse_config({{"model_type", "gpt2"}, {"n_layer", 1e12}}, "m/config.json"); },
               {"m/config.json", "number of layers = 1000000000000"});
  expect_error([] { models::parse_config({{"model_type", "gpt_neox"}, {"num_hidden_layers", 1e12}}, "c.json"); },
               {"number of layers = 1000000000000"});
  // Integers that do not fit are errors, never wraps: 2^64-1 once read as -1, 1e30 was undefined behaviour.
  expect_error([] { models::parse_config({{"model_type", "gpt2"}, {"n_layer", UINT64_MAX}}, "c.json"); },
               {"'n_layer' = 18446744073709551615", "out of range"});
  expect_error([] { models::parse_config({{"model_type", "gpt2"}, {"n_embd", 1e30}}, "c.json"); },
               {"'n_embd'", "out of range"});
  expect_error([] { models::parse_config({{"model_type", "gpt2"}, {"n_layer", 2.5}}, "c.json"); },
               {"'n_layer' must be an integer, got 2.5"});
  // Widths, heads and vocabularies have caps too (a vocab x hidden table is allocated from them).
  expect_error([] { models::parse_config({{"model_type", "gpt2"}, {"vocab_size", 1ll << 40}}, "c.json"); },
               {"vocab size = 1099511627776", "limit"});
  expect_error([] { models::parse_config({{"model_type", "gemma"}, {"num_attention_heads", 1 << 20},
                                          {"num_key_value_heads", 1 << 20}}, "c.json"); },
               {"number of attention heads = 1048576"});
  expect_error([] { models::parse_config({{"model_type", "phi"}, {"intermediate_size", 1ll << 33}}, "c.json"); },
               {"intermediate size = 8589934592"});
  // A real config is still accepted at its full size.
  BOOST_TEST(models::parse_config({{"model_type", "gpt2"}, {"n_layer", 48}, {"n_embd", 1600}, {"n_head", 25}}, "xl")
                 .n_layers == 48);

  // Through the loader (what `strata capture` and `strata forward` do): a clear error, not an OOM.
  fs::path dir = model_with_config("gpt2-tiny", "reliability_deep_config",
                                   [](json& c) { c["n_layer"] = (1ll << 32) + 6; });
  expect_error([&] { models::Transformer::load(dir); }, {(dir / "config.json").string(), "4294967302"});
}

BOOST_AUTO_TEST_CASE(renamed_pickle_is_named_a_pickle_and_never_loaded) {
  fs::path dir = testing::fresh_dir("reliability_pickle");
  // torch.save's zip format, and the bare pickle of torch < 1.6 (PROTO 2 opcode first).
  write_bytes(dir / "zip.safetensors", std::string("PK\x03\x04\x14\x00\x00\x00\x08\x00", 10) + std::string(64, 'x'));
  write_bytes(dir / "bare.safetensors", std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8", 12) + std::string(64, 'y'));
  expect_error([&] { io::SafetensorsFile f(dir / "zip.safetensors"); },
               {"zip.safetensors", "zip archive holding a pickle", "never loads pickles", "arbitrary code"});
  expect_error([&] { io::SafetensorsFile f(dir / "bare.safetensors"); },
               {"bare.safetensors", "is a pickle", "never loads pickles"});

  // A genuine safetensors file whose 640-byte header makes it start with the same two bytes 0x80 0x02.
  std::string header = R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  header.resize(640, ' ');
  std::string file = std::string("\x80\x02\0\0\0\0\0\0", 8) + header + std::string("\0\0\x80\x3f", 4);
  write_bytes(dir / "real.safetensors", file);
  io::SafetensorsFile real(dir / "real.safetensors");
  BOOST_TEST(real.load("x").item<float>() == 1.0f);
}

BOOST_AUTO_TEST_CASE(store_meta_counts_and_shard_names_are_checked_against_the_shards) {
  fs::path dir = testing::fresh_dir("reliability_store_meta");
  {
    io::ActivationStoreWriter writer(dir, "m_layer1_activations", 4, torch::kFloat32, 64);  // 4 rows per shard
    io::RowIndex index;
    for (auto* column : {&index.doc_id, &index.seq_id, &index.token_index, &index.byte_begin, &index.byte_end})
      *column = torch::arange(10, torch::kInt64);
    writer.append(torch::arange(40, torch::kFloat32).reshape({10, 4}), index);
    writer.finish(json::object());
  }
  const fs::path meta_path = dir / "m_layer1_activations.meta.json";
  const json meta = json::parse(read_text_file(meta_path));
  BOOST_TEST_REQUIRE(meta["shards"].size() == 3u);
  BOOST_TEST(io::ActivationStore::open(meta_path).rows() == 10);

  auto with_meta = [&](const std::function<void(json&)>& edit) {
    json edited = meta;
    edit(edited);
    atomic_write_text(meta_path, edited.dump());
  };
  with_meta([](json& m) { m["rows"] = 11; });
  expect_error([&] { io::ActivationStore::open(meta_path); },
               {meta_path.string(), "\"rows\" = 11 but its shards hold 10 rows"});
  with_meta([](json& m) { m["rows"] = 1e300; });
  expect_error([&] { io::ActivationStore::open(meta_path); }, {meta_path.string(), "\"rows\"", "64-bit integer"});
  with_meta([](json& m) { m["shard_rows"] = {4, 4, 3}; });
  expect_error([&] { io::ActivationStore::open(meta_path); }, {"shard_rows[2] = 3 but shard 2 holds 2 rows"});
  with_meta([](json& m) { m["shards"][1] = "../../../etc/passwd"; });
  expect_error([&] { io::ActivationStore::open(meta_path); },
               {meta_path.string(), "shards[1]", "../../../etc/passwd", "not a plain file name"});
  with_meta([](json& m) { m["shards"][0] = 7; });
  expect_error([&] { io::ActivationStore::open(meta_path); }, {"shards[0] = 7", "not a plain file name"});
  with_meta([](json& m) { m["shards"] = "m_layer1_activations.safetensors"; });
  expect_error([&] { io::ActivationStore::open(meta_path); }, {meta_path.string(), "no \"shards\" list"});
  // A truncated store (the probe where `strata gate` said "11/12 present"): the file is named, by the
  // store and by gate 1's reasons.
  with_meta([](json&) {});
  const fs::path shard = dir / meta["shards"][2].get<std::string>();
  fs::resize_file(shard, fs::file_size(shard) - 8);
  expect_error([&] { io::ActivationStore::open(meta_path); }, {shard.string(), "truncated"});
  const fs::path run = dir.parent_path() / "reliability_store_meta_run";
  fs::remove_all(run);
  fs::create_directories(run);
  fs::rename(dir, run / "activations");
  const json gate = validation::gate1_stores(run, {{.model = "m", .layer = 1}}, validation::GateThresholds{});
  BOOST_TEST(gate["status"] == "FAIL");
  BOOST_TEST_REQUIRE(gate["reasons"].size() == 1u);
  const std::string reason = gate["reasons"][0];
  BOOST_TEST(reason.find(meta["shards"][2].get<std::string>()) != std::string::npos, reason);
  BOOST_TEST(reason.find("truncated") != std::string::npos, reason);
}

BOOST_AUTO_TEST_CASE(tokenizer_ids_are_bounded_before_the_token_table_is_sized) {
  fs::path dir = testing::fresh_dir("reliability_tokenizer_ids");
  write_bytes(dir / "merges.txt", "#version: 0.2\na b\n");
  write_bytes(dir / "vocab.json", R"({"a": 0, "b": 1, "ab": 2147483647})");
  // Before: a table of 2^31 strings was allocated (64 GB).
  expect_error([&] { text::Tokenizer::load(dir); },
               {(dir / "vocab.json").string(), "token \"ab\" is 2147483647", "[0, 4194303]"});
  write_bytes(dir / "vocab.json", R"({"a": 0, "b": 1, "ab": 2.5})");
  expect_error([&] { text::Tokenizer::load(dir); }, {"token \"ab\" is 2.5"});  // was read as 2

  fs::path json_dir = testing::fresh_dir("reliability_tokenizer_json_ids");
  json tok = json::parse(read_text_file(testing::data_dir() / "tokenizers" / "gpt2" / "tokenizer.json"));
  tok["added_tokens"] = json::array({{{"id", -1}, {"content", "<bad>"}, {"special", true}}});
  atomic_write_text(json_dir / "tokenizer.json", tok.dump());
  // Before: m.tokens[-1] was written (heap corruption).
  expect_error([&] { text::Tokenizer::load(json_dir); }, {"added token \"<bad>\" is -1"});
}

// ------------------------------------------------------------------ the failure handler and UTF-8

BOOST_AUTO_TEST_CASE(invalid_utf8_in_an_error_is_escaped_in_the_manifest) {
  BOOST_TEST(harness::valid_utf8("plain ascii") == "plain ascii");
  BOOST_TEST(harness::valid_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80") == "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
  BOOST_TEST(harness::valid_utf8("bad \xff\xfe end") == "bad \\xFF\\xFE end");
  BOOST_TEST(harness::valid_utf8("overlong \xc0\xaf") == "overlong \\xC0\\xAF");
  BOOST_TEST(harness::valid_utf8("surrogate \xed\xa0\x80") == "surrogate \\xED\\xA0\\x80");
  BOOST_TEST(harness::valid_utf8("cut \xe2\x82") == "cut \\xE2\\x82");

  fs::path dir = testing::fresh_dir("reliability_utf8_manifest");
  harness::Manifest manifest;
  manifest.set_step({.name = "capture", .status = "failed", .error = "line 3: \"\xff\xfe\""});
  manifest.save(dir / "manifest.json");  // threw json type_error 316 before
  BOOST_TEST(harness::Manifest::load(dir / "manifest.json").step("capture")->error == "line 3: \"\\xFF\\xFE\"");
}

BOOST_AUTO_TEST_CASE(invalid_utf8_jsonl_dataset_fails_the_step_and_resume_works) {
  fs::path dir = testing::fresh_dir("reliability_utf8_run");
  fs::path dataset = write_bytes(dir / "data.jsonl", "{\"text\": \"fine\"}\n{\"text\": \"caf\xe9 \xff\"}\n");
  write_bytes(dir / "exp.toml", fmt::format(R"([experiment]
name = "utf8"
seed = 1
[dataset]
spec = "jsonl:{}"
[[models]]
name = "m"
checkpoint = "nowhere"
layers = [1]
)", dataset.string()));
  // A capture that reads the dataset, as the real one does; its error quotes the bad bytes.
  harness::StepRegistry registry;
  registry.add({.name = "capture",
                .description = "reads the dataset",
                .run = [](harness::StepContext& ctx) {
                  auto docs = text::load_dataset(ctx.config(&harness::Experiment::dataset).resolved_spec);
                  ctx.write_text_artifact("activations/docs.txt", fmt::format("{}\n", docs.size()));
                },
                .config_keys = {"dataset"}});
  harness::RunSummary first = harness::run_experiment({.experiment_file = dir / "exp.toml", .out_dir = dir / "run"}, registry);
  BOOST_TEST(first.failed_step == "capture");
  BOOST_TEST(first.error.find("data.jsonl:2: invalid JSON") != std::string::npos, first.error);
  harness::Manifest manifest = harness::Manifest::load(dir / "run" / "manifest.json");
  BOOST_TEST(manifest.step("capture")->status == "failed");  // was left "running"
  BOOST_TEST(manifest.step("capture")->error.find("data.jsonl:2") != std::string::npos);
  BOOST_TEST(manifest.step("capture")->error.find("\\xE9") != std::string::npos, manifest.step("capture")->error);

  // Fix the data and resume: the step runs again and completes.
  write_bytes(dataset, "{\"text\": \"fine\"}\n{\"text\": \"caf\xc3\xa9\"}\n");
  harness::RunSummary resumed = harness::run_experiment({.resume_dir = dir / "run"}, registry);
  BOOST_TEST(resumed.ok(), resumed.error);
  BOOST_TEST(read_text_file(dir / "run" / "activations" / "docs.txt") == "2\n");
  BOOST_TEST(harness::verify_run(dir / "run").ok());
}

BOOST_AUTO_TEST_CASE(empty_dataset_file_is_named_instead_of_blaming_the_mask) {
  fs::path dir = testing::fresh_dir("reliability_empty_dataset");
  write_bytes(dir / "empty.jsonl", "");
  write_bytes(dir / "blank.txt", "\n\n  \n");
  expect_error([&] { text::load_dataset("jsonl:" + (dir / "empty.jsonl").string()); },
               {"empty.jsonl", "no documents", "0 bytes"});
  expect_error([&] { text::load_dataset("text:" + (dir / "blank.txt").string()); },
               {"blank.txt", "no documents", "only blank lines"});
}

// ------------------------------------------------------------------ verify is strict

namespace {

// A run directory with one complete step ("capture") and its two artifacts.
fs::path complete_run(const std::string& test) {
  fs::path dir = testing::fresh_dir(test) / "run";
  auto run = harness::RunDir::create(dir);
  run->write_artifact("activations/a.bin", "capture", [](const fs::path& tmp) { std::ofstream(tmp) << "a"; });
  run->write_artifact("activations/b.bin", "capture", [](const fs::path& tmp) { std::ofstream(tmp) << "b"; });
  run->manifest().set_step({.name = "capture", .status = "complete"});
  run->save_manifest();
  return dir;
}

void edit_manifest(const fs::path& run, const std::function<void(json&)>& edit) {
  json j = json::parse(read_text_file(run / "manifest.json"));
  edit(j);
  atomic_write_text(run / "manifest.json", j.dump(2));
}

}  // namespace

BOOST_AUTO_TEST_CASE(verify_refuses_an_emptied_artifact_table) {
  fs::path run = complete_run("reliability_verify_emptied");
  BOOST_TEST(harness::verify_run(run).ok());
  edit_manifest(run, [](json& j) { j["artifacts"] = json::object(); });
  harness::VerifyResult result = harness::verify_run(run);
  BOOST_TEST(!result.ok());  // was OK: nothing checked, every step complete
  BOOST_TEST_REQUIRE(result.inconsistent.size() == 1u);
  BOOST_TEST(result.inconsistent[0].path == "capture");
  BOOST_TEST(result.unrecorded.size() == 2u);

  std::string out;
  BOOST_TEST(testing::run_command(fmt::format("'{}' verify '{}'", testing::strata_binary().string(), run.string()), &out) == 1);
  BOOST_TEST(out.find("INCONSISTENT step capture") != std::string::npos, out);
  BOOST_TEST(out.find("1 inconsistent: FAILED") != std::string::npos, out);
}

BOOST_AUTO_TEST_CASE(verify_never_follows_a_recorded_path_out_of_the_run) {
  for (const std::string bad : {"../../../etc/passwd", "/etc/passwd", "activations/../../x", "./a", "a//b", "."}) {
    fs::path run = complete_run("reliability_verify_escape");
    edit_manifest(run, [&](json& j) { j["artifacts"][bad] = j["artifacts"]["activations/a.bin"]; });
    expect_error([&] { harness::verify_run(run); }, {"manifest.json", "artifact path", "not a plain path inside the run"});
    expect_error([&] { harness::RunDir::open(run); }, {"not a plain path inside the run"});  // nor resume
  }
  BOOST_TEST(harness::is_run_relative_path("saes/gpt2_layer1/cfg.json"));
  BOOST_TEST(harness::is_run_relative_path("..hidden/x"));
  BOOST_TEST(!harness::is_run_relative_path("a/\x01"));
}

// ------------------------------------------------------------------ outputs

BOOST_AUTO_TEST_CASE(out_into_a_non_empty_non_run_directory_is_refused) {
  fs::path dir = testing::fresh_dir("reliability_out_dir");
  write_bytes(dir / "thesis" / "chapter1.tex", "text");
  expect_error([&] { harness::RunDir::create(dir / "thesis"); },
               {(dir / "thesis").string(), "is not empty and holds no run", "chapter1.tex"});
  BOOST_TEST(!fs::exists(dir / "thesis" / "manifest.json"));
  BOOST_TEST(!fs::exists(dir / "thesis" / "logs"));
  write_bytes(dir / "a_file", "x");
  expect_error([&] { harness::RunDir::create(dir / "a_file"); }, {"a_file", "is not a directory"});
  // An empty directory (e.g. made by mkdir beforehand) is fine.
  fs::create_directories(dir / "empty");
  BOOST_CHECK_NO_THROW(harness::RunDir::create(dir / "empty"));
}

BOOST_AUTO_TEST_CASE(output_root_pointing_at_a_file_names_the_key) {
  fs::path dir = testing::fresh_dir("reliability_output_root");
  write_bytes(dir / "runs", "not a directory");
  write_bytes(dir / "exp.toml", fmt::format(R"([experiment]
name = "x"
output_root = "{}"
[[models]]
name = "m"
checkpoint = "nowhere"
layers = [1]
)", (dir / "runs" / "sub").string()));
  harness::StepRegistry registry;
  expect_error([&] { harness::run_experiment({.experiment_file = dir / "exp.toml"}, registry); },
               {"exp.toml", "[experiment] output_root", (dir / "runs").string(), "is a file, not a directory"});
}

BOOST_AUTO_TEST_CASE(config_check_fails_on_a_missing_checkpoint) {
  fs::path dir = testing::fresh_dir("reliability_config_check");
  fs::create_directories(dir / "ckpt-here");
  write_bytes(dir / "exp.toml", R"([experiment]
name = "x"
[[models]]
name = "here"
checkpoint = "ckpt-here"
layers = [1]
[[models]]
name = "typo"
checkpoint = "ckpt-tpyo"
layers = [1]
)");
  std::string out;
  BOOST_TEST(testing::run_command(fmt::format("'{}' config check '{}'", testing::strata_binary().string(),
                                              (dir / "exp.toml").string()), &out) == 1, out);  // was 0 with a note
  BOOST_TEST(out.find("model 'typo': checkpoint directory") != std::string::npos, out);
  BOOST_TEST(out.find("ckpt-tpyo does not exist") != std::string::npos, out);
  BOOST_TEST(out.find("model 'here'") == std::string::npos, out);
}

BOOST_AUTO_TEST_CASE(names_that_are_paths_are_refused) {
  auto config = [](const std::string& experiment_name, const std::string& model_name) {
    return fmt::format("[experiment]\nname = {}\n[[models]]\nname = {}\ncheckpoint = \"c\"\nlayers = [1]\n",
                       json(experiment_name).dump(), json(model_name).dump());
  };
  for (const std::string& bad : std::vector<std::string>{"..", ".", "a/b", "../up", std::string("nul\0x", 5),
                                                         "tab\there", "new\nline"}) {
    expect_error([&] { harness::parse_experiment(config(bad, "m"), "exp.toml", "."); }, {"exp.toml", "experiment.name"});
    expect_error([&] { harness::parse_experiment(config("e", bad), "exp.toml", "."); }, {"exp.toml", "name"});
  }
  BOOST_TEST(harness::parse_experiment(config("e.v2", "gpt2-small_1"), "exp.toml", ".").models.at(0).name == "gpt2-small_1");
}

// ------------------------------------------------------------------ disk full and unwritable outputs

BOOST_AUTO_TEST_CASE(injected_write_failure_names_the_path_errno_and_space_and_leaves_nothing) {
  fs::path dir = testing::fresh_dir("reliability_enospc");
  {
    ScopedEnv fail("STRATA_FAIL_WRITE", "2");
    atomic_write_text(dir / "first.txt", "first");
    expect_error([&] { atomic_write_text(dir / "second.txt", std::string(1000, 'x')); },
                 {(dir / "second.txt").string(), "No space left on device (ENOSPC)", "needs at least 1000 bytes",
                  "bytes free on the file system holding", "--resume"});
    atomic_write_text(dir / "third.txt", "third");  // space is back
  }
  {
    ScopedEnv fail("STRATA_FAIL_WRITE", "1:EACCES");
    expect_error([&] { atomic_write_text(dir / "denied.txt", "x"); },
                 {"denied.txt", "Permission denied (EACCES)", "Make the directory writable"});
  }
  std::vector<std::string> left;
  for (const auto& e : fs::directory_iterator(dir)) left.push_back(e.path().filename().string());
  std::sort(left.begin(), left.end());
  BOOST_TEST((left == std::vector<std::string>{"first.txt", "third.txt"}));  // no temporary, no second.txt
}

// ------------------------------------------------------------------ fuzzer findings

BOOST_AUTO_TEST_CASE(fuzz_experiment_toml_a_path_longer_than_name_max_is_not_an_exception) {
  // fuzz_experiment_toml found: a checkpoint or dataset name over 255 bytes made fs::exists throw
  // filesystem_error (ENAMETOOLONG) out of the parser instead of a strata::Error or a kept path.
  const std::string long_name(300, 'a');
  const auto exp = harness::parse_experiment(
      fmt::format("[experiment]\nname = \"x\"\n[[models]]\nname = \"m\"\ncheckpoint = \"{}\"\nlayers = [1]\n", long_name),
      "exp.toml", testing::fresh_dir("reliability_long_name"));
  BOOST_TEST(exp.models.at(0).checkpoint_path.filename().string() == long_name);
  expect_error([&] {
    harness::parse_experiment(fmt::format("[dataset]\nspec = \"text:{}\"\n[[models]]\nname = \"m\"\ncheckpoint = \"c\"\n"
                                          "layers = [1]\n", long_name),
                              "exp.toml", ".");
  }, {"exp.toml", "names a file that does not exist"});
}

BOOST_AUTO_TEST_CASE(fuzz_tokenizer_load_invalid_utf8_in_a_message_is_an_error_not_an_abort) {
  // fuzz_tokenizer_load found: a merge naming a token with invalid UTF-8 reached fmt's "{:?}" escaper, which
  // asserts on invalid UTF-8 and aborts the process. Untrusted strings are now quoted by strata::shown_text().
  const fs::path dir = testing::fresh_dir("reliability_merge_utf8");
  {
    std::ofstream(dir / "vocab.json") << R"({"a": 0, "b": 1, "ab": 2})";
    std::ofstream(dir / "merges.txt") << "#version: 0.2\na b\n\xe2\x82 b\n";
  }
  expect_error([&] { text::Tokenizer::load(dir); }, {"merges.txt", "merge #2", "absent from the vocabulary", "\"\ufffd"});
  {
    std::ofstream(dir / "merges.txt") << "#version: 0.2\na\xff\n";
  }
  expect_error([&] { text::Tokenizer::load(dir); }, {"merges.txt:2", "expected two tokens"});
  // Every other place that quotes an untrusted name goes through the same helper.
  const std::string shown_bad = shown_text(std::string("ok\xe2\x82"));
  BOOST_TEST(shown_bad.rfind("\"ok\ufffd", 0) == 0, shown_bad);  // quoted, the bad bytes replaced by U+FFFD
  BOOST_TEST(shown_bad.back() == '"');
  expect_error([&] { text::parse_packing_policy("pa\xff" "ck"); }, {"packing policy", "is not understood"});
}

// ------------------------------------------------------------------ torch-free parsers (fuzz/: fuzz_safetensors_header,
// fuzz_safetensors_index, fuzz_store_meta, fuzz_sae_cfg). Probes of issue 17 item 1 found while splitting
// the readers; each names the file, the field and the value.

namespace {
std::string safetensors_prefix(const std::string& header) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(uint64_t(header.size()) >> (8 * i));
  return out + header;
}
}  // namespace

BOOST_AUTO_TEST_CASE(safetensors_header_is_parsed_from_its_bytes_alone) {
  // The header without the data: the file size says how much data follows.
  const std::string prefix = safetensors_prefix(
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F16","shape":[2,3],"data_offsets":[4,16]},)"
      R"("a":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})");
  const auto header = io::parse_safetensors_header(prefix, prefix.size() + 16, "h.safetensors");
  BOOST_TEST_REQUIRE(header.tensors.size() == 2u);
  BOOST_TEST(header.tensors[0].name == "a");
  BOOST_TEST((header.tensors[1].info.shape == std::vector<int64_t>{2, 3}));
  BOOST_TEST(header.data_bytes == 16u);
  BOOST_TEST(header.metadata.at("format") == "pt");
  expect_error([&] { io::parse_safetensors_header(prefix, prefix.size() + 15, "h.safetensors"); },
               {"h.safetensors", "'b'", "data [4, 16)", "past the end"});
  // A name given twice: JSON parsers keep the last silently, so two readers could see different tensors.
  const std::string twice = safetensors_prefix(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                               R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})");
  expect_error([&] { io::parse_safetensors_header(twice, twice.size() + 8, "t.safetensors"); },
               {"t.safetensors", "'a'", "appears twice"});
  // Rank and size are bounded; the value is named.
  const std::string deep = safetensors_prefix(R"({"x":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],)"
                                              R"("data_offsets":[0,1]}})");
  expect_error([&] { io::parse_safetensors_header(deep, deep.size() + 1, "d.safetensors"); },
               {"d.safetensors", "'x'", "17 dimensions", "limit is 16"});
  const std::string huge = safetensors_prefix(R"({"x":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,1]}})");
  expect_error([&] { io::parse_safetensors_header(huge, huge.size() + 1, "u.safetensors"); },
               {"u.safetensors", "'x'", "18446744073709551615", "implausibly large"});
  const std::string negative = safetensors_prefix(R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})");
  expect_error([&] { io::parse_safetensors_header(negative, negative.size() + 1, "n.safetensors"); },
               {"n.safetensors", "'x'", "[-1,0]", "non-negative"});
}

BOOST_AUTO_TEST_CASE(safetensors_index_names_plain_unique_shards) {
  const auto index = io::parse_safetensors_index(
      R"({"metadata":{"total_size":8},"weight_map":{"b":"model-2.safetensors","a":"model-1.safetensors","c":"model-1.safetensors"}})",
      "i.json");
  BOOST_TEST((index.files == std::vector<std::string>{"model-1.safetensors", "model-2.safetensors"}));
  BOOST_TEST(index.weight_map.size() == 3u);
  expect_error([] { io::parse_safetensors_index(R"({"weight_map":{"a":"x.safetensors","a":"y.safetensors"}})", "i.json"); },
               {"i.json", "'a'", "appears twice"});
  expect_error([] { io::parse_safetensors_index(R"({"weight_map":{"a":"x\nsafetensors"}})", "i.json"); },
               {"i.json", "weight_map['a']", "not a plain file name"});
  expect_error([] { io::parse_safetensors_index(R"({"weight_map":{"a":"."}})", "i.json"); }, {"not a plain file name"});
  expect_error([] { io::parse_safetensors_index(R"({"weight_map":{}})", "i.json"); }, {"i.json", "empty"});
  expect_error([] { io::parse_safetensors_index("{\"weight_map\":", "i.json"); }, {"i.json", "not valid JSON"});
}

BOOST_AUTO_TEST_CASE(store_meta_fields_are_typed_and_bounded) {
  const std::string path = "m_layer1_activations.meta.json";
  auto meta_with = [](json patch) {
    json meta = {{"shards", {"a.safetensors", "b.safetensors"}}, {"rows", 6}, {"dim", 2}, {"shard_rows", {4, 2}},
                 {"model", "m"}, {"layer", 1}, {"n_layers", 4}, {"store_dtype", "f32"}, {"mean", {0.0, 1.0}}};
    meta.update(patch);
    return meta.dump();
  };
  const auto meta = io::parse_store_meta(meta_with(json::object()), path);
  BOOST_TEST(*meta.layer == 1);
  BOOST_TEST((*meta.shard_rows == std::vector<int64_t>{4, 2}));
  io::check_store_meta_counts(meta, path, {4, 2}, 6, 2);
  // 2^64-1 once compared as -1 after get<int64_t>(); now no count that does not fit is read.
  expect_error([&] { io::parse_store_meta(meta_with({{"shard_rows", {4, UINT64_MAX}}}), path); },
               {path, "shard_rows[1] = 18446744073709551615", "64-bit integer"});
  // `strata transfer` read "layer" with get<int>() and "model" with get<std::string>(): a JSON type error
  // instead of a message. The types are checked here, once.
  expect_error([&] { io::parse_store_meta(meta_with({{"layer", "one"}}), path); }, {path, "\"layer\" = \"one\""});
  expect_error([&] { io::parse_store_meta(meta_with({{"layer", 1ll << 40}}), path); }, {path, "\"layer\"", "out of range"});
  expect_error([&] { io::parse_store_meta(meta_with({{"model", 7}}), path); }, {path, "\"model\" = 7", "not a string"});
  expect_error([&] { io::parse_store_meta(meta_with({{"n_layers", 2.5}}), path); }, {path, "\"n_layers\" = 2.5"});
  expect_error([&] { io::parse_store_meta(meta_with({{"store_dtype", "f8"}}), path); }, {path, "\"store_dtype\"", "f8"});
  expect_error([&] { io::parse_store_meta(meta_with({{"mean", {0.0}}}), path); }, {path, "\"mean\"", "dim = 2"});
  expect_error([&] { io::parse_store_meta(meta_with({{"shard_rows", {6}}}), path); }, {path, "one row count per shard"});
  expect_error([&] { io::parse_store_meta(meta_with({{"shards", {"a.safetensors", "x\ty"}}}), path); },
               {path, "shards[1]", "not a plain file name"});
}

BOOST_AUTO_TEST_CASE(sae_cfg_parsers_bound_every_encoding_field) {
  const auto strata_cfg = sae::parse_saelens_cfg(
      R"({"architecture":"topk","d_in":8,"d_sae":32,"k":4,"hook_name":"blocks.1.hook_resid_post","metrics":{}})", "s/cfg.json");
  BOOST_TEST(strata_cfg.architecture == "topk");
  BOOST_TEST(*strata_cfg.k == 4);
  BOOST_TEST(*strata_cfg.hook_name == "blocks.1.hook_resid_post");
  const auto legacy = sae::parse_saelens_cfg(
      R"({"activation_fn_str":"topk","activation_fn_kwargs":{"k":6},"normalize_activations":true,"hook_point":"h.2"})", "l/cfg.json");
  BOOST_TEST(legacy.architecture == "topk");
  BOOST_TEST(*legacy.k == 6);
  BOOST_TEST(legacy.normalize_activations == "expected_average_only_in");
  const auto sparsify = sae::parse_sparsify_cfg(R"({"d_in":12,"expansion_factor":2,"num_latents":0,"k":4})", "p/cfg.json");
  BOOST_TEST(*sparsify.d_sae == 24);
  expect_error([] { sae::parse_saelens_cfg(R"({"architecture":"topk","d_sae":32,"k":33})", "s/cfg.json"); },
               {"s/cfg.json", "'k' = 33", "[1, 32]"});
  expect_error([] { sae::parse_saelens_cfg(R"({"d_in":1e300})", "s/cfg.json"); }, {"s/cfg.json", "'d_in'", "out of range"});
  expect_error([] { sae::parse_saelens_cfg(R"({"d_sae":18446744073709551615})", "s/cfg.json"); },
               {"'d_sae' = 18446744073709551615", "out of range"});
  expect_error([] { sae::parse_sparsify_cfg(R"({"d_in":131072,"expansion_factor":16777216,"k":1})", "p/cfg.json"); },
               {"p/cfg.json", "d_sae = 2199023255552", "out of range"});
  expect_error([] { sae::parse_sparsify_cfg(R"({"d_in":4096,"num_latents":2097152,"k":1})", "p/cfg.json"); },
               {"p/cfg.json", "4096 x 2097152", "exceeds"});
  expect_error([] { sae::parse_saelens_cfg("[1]", "s/cfg.json"); }, {"s/cfg.json", "not a JSON object"});
  // A hook name's block number went through std::stoll: 20 digits threw std::out_of_range past
  // check_hook_layer (which catches strata::Error). A long name is refused before std::regex recurses over it.
  expect_error([] { sae::layer_of_hook("blocks.99999999999999999999.hook_resid_post"); },
               {"blocks.99999999999999999999.hook_resid_post", "out of range"});
  expect_error([] { sae::layer_of_hook("layers.123456789"); }, {"layers.123456789", "out of range"});
  BOOST_TEST(*sae::layer_of_hook("blocks.999999.hook_resid_post") == 1000000);
  expect_error([] { sae::layer_of_hook("layers." + std::string(100000, '1')); }, {"100007 bytes", "at most 256"});
  expect_error([] { sae::parse_saelens_cfg(json({{"hook_name", std::string(300, 'h')}}).dump(), "s/cfg.json"); },
               {"s/cfg.json", "'hook_name'", "300 bytes"});
}
