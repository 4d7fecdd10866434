#define BOOST_TEST_MODULE harness
#include <boost/test/unit_test.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <regex>
#include <thread>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/runtime.hpp"
#include "core/hash.hpp"
#include "core/options.hpp"
#include "harness/config.hpp"
#include "harness/manifest.hpp"
#include "harness/run_dir.hpp"
#include "harness/runner.hpp"
#include "harness/seeds.hpp"
#include "harness/steps.hpp"
#include "harness/verify.hpp"
#include "test_helpers.hpp"

namespace fs = std::filesystem;
using namespace strata;
using namespace strata::harness;
using nlohmann::json;

namespace {

fs::path write_file(const fs::path& file, const std::string& text) {
  fs::create_directories(file.parent_path());
  std::ofstream(file, std::ios::binary) << text;
  return file;
}

// The message of the strata::Error `fn` throws (fails the test if it does not throw).
template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  BOOST_FAIL("expected a strata::Error");
  return "";
}

bool contains(const std::string& haystack, const std::string& needle) { return haystack.find(needle) != std::string::npos; }

const char* kMinimalModels = R"(
[[models]]
name = "a"
checkpoint = "does/not/exist/a"
layers = [1, 2]

[[models]]
name = "b"
checkpoint = "hf://org/b@main"
depths = [0.5, 1.0]
)";

}  // namespace

// ---------------------------------------------------------------- config

BOOST_AUTO_TEST_CASE(config_typo_key_names_file_line_and_key) {
  fs::path dir = testing::fresh_dir("harness_config_typo");
  fs::path file = write_file(dir / "typo.toml", std::string("[experiment]\nseed = 1\n\n[sae]\nexpansion = 8\nl11 = 1e-4\n") + kMinimalModels);
  std::string message = error_of([&] { load_experiment(file); });
  BOOST_TEST_MESSAGE(message);
  BOOST_TEST(contains(message, file.string() + ":6:1:"));
  BOOST_TEST(contains(message, "unknown key 'sae.l11'"));
  BOOST_TEST(contains(message, "did you mean 'l1'"));
}

BOOST_AUTO_TEST_CASE(config_wrong_type_names_file_line_and_key) {
  fs::path dir = testing::fresh_dir("harness_config_type");
  fs::path file = write_file(dir / "type.toml", std::string("[sae]\nlr = \"fast\"\n") + kMinimalModels);
  std::string message = error_of([&] { load_experiment(file); });
  BOOST_TEST_MESSAGE(message);
  BOOST_TEST(contains(message, file.string() + ":2:6:"));
  BOOST_TEST(contains(message, "'sae.lr' must be a number, got a string"));

  file = write_file(dir / "type2.toml", std::string("[dataset]\nseq_len = 12.5\n") + kMinimalModels);
  message = error_of([&] { load_experiment(file); });
  BOOST_TEST(contains(message, ":2:11:"));
  BOOST_TEST(contains(message, "'dataset.seq_len' must be an integer, got a float"));

  // A typo'd key inside an array of tables names its own line.
  file = write_file(dir / "type3.toml", std::string(kMinimalModels) + "layer = [3]\n");
  message = error_of([&] { load_experiment(file); });
  BOOST_TEST(contains(message, ":11:1:"));
  BOOST_TEST(contains(message, "unknown key 'models.layer' (did you mean 'layers'?)"));
}

BOOST_AUTO_TEST_CASE(config_impossible_values_are_errors) {
  fs::path dir = testing::fresh_dir("harness_config_values");
  auto message_for = [&](const std::string& body) {
    fs::path file = write_file(dir / "v.toml", body);
    return error_of([&] { load_experiment(file); });
  };
  BOOST_TEST(contains(message_for(std::string("[sae]\nexpansion = 0\n") + kMinimalModels), "v.toml:2:13: 'sae.expansion' must be between 1 and 1024"));
  BOOST_TEST(contains(message_for(std::string("[transfer]\nfit_fraction = 1.5\n") + kMinimalModels), "'transfer.fit_fraction' must lie in (0, 1)"));
  BOOST_TEST(contains(message_for(std::string("[sae]\narchitecture = \"gated\"\n") + kMinimalModels), "'sae.architecture' must be one of"));
  BOOST_TEST(contains(message_for(std::string("[dataset]\nnum_batches = 5\ntokens = 100\n") + kMinimalModels), "alternatives"));
  BOOST_TEST(contains(message_for(std::string("[figures]\ndpi = 10\n") + kMinimalModels), "'figures.dpi' must lie in [50, 2400]"));
  BOOST_TEST(contains(message_for("[experiment]\nseed = 1\n"), "needs at least one model"));
  BOOST_TEST(contains(message_for("[[models]]\nname = \"x\"\ncheckpoint = \"c\"\nlayers = [1]\ndepths = [0.5]\n"),
                      "exactly one of 'layers'"));
  BOOST_TEST(contains(message_for("[[models]]\nname = \"x\"\ncheckpoint = \"c\"\nlayers = [2, 2]\n"), "lists a layer twice"));
  BOOST_TEST(contains(message_for("[[models]]\nname = \"x\"\ncheckpoint = \"hf://nope\"\nlayers = [2]\n"), "hf://org/name"));
  BOOST_TEST(contains(message_for(std::string(kMinimalModels) + "[[models]]\nname = \"a\"\ncheckpoint = \"c\"\nlayers = [1]\n"),
                      "is used by two models"));
  BOOST_TEST(contains(message_for(std::string("[experiment]\nseed = 1\nseed = 2\n") + kMinimalModels), "TOML syntax error"));
  BOOST_TEST(contains(message_for(std::string("[dataset]\nspec = \"jsonl:missing.jsonl:text\"\n") + kMinimalModels), "does not exist"));
  BOOST_TEST(contains(message_for(std::string("[[sae.overrides]]\nmin_depth = 0.8\nmax_depth = 0.2\nl1 = 1\n") + kMinimalModels),
                      "'sae.overrides.max_depth' must be >= min_depth"));
}

BOOST_AUTO_TEST_CASE(config_defaults_overrides_and_paths) {
  fs::path dir = testing::fresh_dir("harness_config_defaults");
  write_file(dir / "data" / "docs.jsonl", "{\"text\": \"hello\"}\n");
  fs::path file = write_file(dir / "exp.toml", std::string(R"(
[dataset]
spec = "jsonl:data/docs.jsonl:text"

[sae]
l1 = 1e-4

[[sae.overrides]]
max_depth = 0.34
l1 = 1.5e-4

[[sae.overrides]]
min_depth = 0.66
l1 = 0.5e-4
architecture = "topk"
)") + kMinimalModels);
  Experiment exp = load_experiment(file);
  BOOST_TEST(exp.experiment.name == "exp");
  BOOST_TEST(exp.experiment.seed == 0u);
  BOOST_TEST(exp.dataset.resolved_spec == "jsonl:" + (dir / "data" / "docs.jsonl").string() + ":text");
  BOOST_TEST(exp.sae.for_depth(0.2).l1 == 1.5e-4);
  BOOST_TEST(exp.sae.for_depth(0.5).l1 == 1e-4);
  BOOST_TEST(exp.sae.for_depth(0.8).l1 == 0.5e-4);
  BOOST_TEST(exp.sae.for_depth(0.8).architecture == "topk");
  BOOST_TEST(exp.sae.for_depth(0.5).architecture == "relu");
  BOOST_TEST(exp.models.size() == 2u);
  BOOST_TEST(exp.models[0].checkpoint_path == (dir / "does/not/exist/a").lexically_normal());
  BOOST_TEST(exp.models[1].is_hf());
  BOOST_TEST(exp.models[1].checkpoint_spec() == "hf://org/b@main");

  json resolved = exp.to_json();
  BOOST_TEST(resolved["sae"]["expansion"] == 8);
  BOOST_TEST(resolved["gates"]["max_fvu"] == 0.5);
  BOOST_TEST(resolved["sae"]["overrides"].size() == 2u);
  // The TOML rendering of the resolved config is valid TOML.
  std::string toml_text = to_toml(resolved);
  BOOST_TEST(contains(toml_text, "[[models]]"));
  // Hash is stable across loads and changes with the config.
  BOOST_TEST(load_experiment(file).sha256() == exp.sha256());
  Experiment other = exp;
  other.sae.options.l1 = 2e-4;
  BOOST_TEST(other.sha256() != exp.sha256());
}

BOOST_AUTO_TEST_CASE(config_layers_resolve_against_real_depth) {
  Experiment exp = load_experiment(repo_root() / "experiments" / "phase5_4.toml");
  BOOST_TEST(exp.models.size() == 4u);
  const ModelConfig& gemma = exp.model("gemma-2b");
  BOOST_TEST(gemma.checkpoint == "hf://google/gemma-2b");
  BOOST_TEST((gemma.layers == std::vector<int64_t>{3, 6, 9, 12, 15}));
  // Every model's five layers sit at about the same relative depths of its real depth (gemma-2b: 18).
  for (const auto& [name, n_layers] : std::vector<std::pair<std::string, int64_t>>{
           {"gemma-2b", 18}, {"gpt2-medium", 24}, {"phi-2", 32}, {"pythia-1.4b", 24}}) {
    const auto& layers = exp.model(name).layers;
    BOOST_TEST_REQUIRE(layers.size() == 5u);
    for (size_t i = 0; i < 5; ++i)
      BOOST_TEST(std::abs(double(layers[i]) / n_layers - (i + 1) / 6.0) < 0.03, name << " layer " << layers[i]);
  }
  // The seed's L1 schedule.
  BOOST_TEST(exp.sae.for_depth(3.0 / 18).l1 == 1.5e-4);
  BOOST_TEST(exp.sae.for_depth(9.0 / 18).l1 == 1e-4);
  BOOST_TEST(exp.sae.for_depth(15.0 / 18).l1 == 0.5e-4);

  Experiment def = load_experiment(repo_root() / "experiments" / "default.toml");
  BOOST_TEST(def.models.size() == 5u);  // four families and the positive control
  BOOST_TEST(def.models[4].control_of == "zoo-gpt2");
  if (fs::exists(repo_root() / "zoo" / "zoo-gpt2"))
    BOOST_TEST(def.models[0].checkpoint_path == (repo_root() / "zoo" / "zoo-gpt2").lexically_normal());
}

BOOST_AUTO_TEST_CASE(config_relative_paths_fall_back_to_the_repository) {
  // A path missing beside the TOML file but present in the repository resolves there (a run's copied
  // config.toml still finds zoo/ checkpoints); one found beside the TOML file wins.
  fs::path dir = testing::fresh_dir("harness_config_paths");
  fs::path file = write_file(dir / "exp.toml", "[[models]]\nname = \"x\"\ncheckpoint = \"experiments\"\nlayers = [1]\n");
  BOOST_TEST(load_experiment(file).models[0].checkpoint_path == (repo_root() / "experiments").lexically_normal());
  fs::create_directories(dir / "experiments");
  BOOST_TEST(load_experiment(file).models[0].checkpoint_path == (dir / "experiments").lexically_normal());
}

// The resolved config (what `strata config check` prints, what the manifest records and hashes) is the one
// the code before the option tables wrote: tests/data/config_check/*.resolved.json are the output of
// `strata config check --format json` built at b448e14, main before this change (repository path replaced
// by <repo>). Same keys, same values, same JSON types, so recorded config hashes
// and --resume keep working. minimal.toml sets nothing but a model: its golden lists every default.
BOOST_AUTO_TEST_CASE(resolved_config_is_unchanged_by_the_option_tables) {
  const fs::path golden_dir = fs::path(STRATA_TEST_DATA) / "config_check";
  for (const fs::path& file : {repo_root() / "experiments" / "default.toml", repo_root() / "experiments" / "phase5_4.toml",
                               golden_dir / "minimal.toml"}) {
    std::string resolved = load_experiment(file).to_json().dump(2) + "\n";
    for (size_t at; (at = resolved.find(repo_root().string())) != std::string::npos;)
      resolved.replace(at, repo_root().string().size(), "<repo>");
    const std::string golden = read_text_file(golden_dir / (file.stem().string() + ".resolved.json"));
    BOOST_TEST(resolved == golden, file.filename().string() << " resolves differently:\n" << resolved);
  }
}

// Every key of every section's options table is printed with its default by `config check` (TOML and JSON).
BOOST_AUTO_TEST_CASE(config_check_prints_every_key_of_every_table) {
  const Experiment exp = load_experiment(fs::path(STRATA_TEST_DATA) / "config_check" / "minimal.toml");
  const json resolved = exp.to_json();
  const std::string toml_text = to_toml(resolved);
  size_t checked = 0;
  auto expect_defaults = [&](const std::string& section, const auto& defaults) {
    const json expected = options::to_json(defaults);
    for (const auto& key : options::keys<std::decay_t<decltype(defaults)>>()) {
      BOOST_TEST(resolved.at(section).contains(key), section << "." << key << " is not printed");
      BOOST_TEST(resolved.at(section).value(key, json()) == expected.at(key), section << "." << key);
      BOOST_TEST(std::regex_search(toml_text, std::regex("(^|\\n)[ \\t]*" + key + " = ")), section << "." << key << " is not in the TOML");
      ++checked;
    }
  };
  expect_defaults("dataset", DatasetConfig{});
  expect_defaults("capture", CaptureConfig{});
  expect_defaults("sae", sae::TrainOptions{});
  expect_defaults("transfer", TransferConfig{});
  expect_defaults("figures", report::FigureOptions{});
  expect_defaults("gates", validation::GateThresholds{});
  BOOST_TEST(checked == 8u + 4u + 24u + 15u + 3u + 12u);
}

// One rule per option, wherever the options come from: a [transfer] value run_transfer would refuse is
// refused when the experiment is loaded, naming file:line and the key, with the message of the rule
// that run_transfer applies (before, the config accepted max_eval_tokens = 2 and the transfer step failed).
BOOST_AUTO_TEST_CASE(config_and_layer_apply_the_same_rules) {
  fs::path dir = testing::fresh_dir("harness_config_rules");
  fs::path file = write_file(dir / "v.toml", std::string("[transfer]\nmax_eval_tokens = 2\n") + kMinimalModels);
  const std::string from_config = error_of([&] { load_experiment(file); });
  BOOST_TEST(contains(from_config, "v.toml:2:19: 'transfer.max_eval_tokens' must be >= 4"), from_config);
  transfer::TransferOptions direct;
  direct.max_eval_tokens = 2;
  const std::string from_layer = error_of([&] { options::validate(direct, "transfer"); });
  BOOST_TEST(from_layer == "transfer: 'max_eval_tokens' must be >= 4");

  // A rule relating two fields of the trainer's options, in an override.
  file = write_file(dir / "w.toml", std::string("[sae]\nepochs = 3\n[[sae.overrides]]\nmin_depth = 0.5\nmin_epochs = 4\n") + kMinimalModels);
  BOOST_TEST(contains(error_of([&] { load_experiment(file); }), "w.toml:5:14: 'sae.overrides.min_epochs' must lie in [1, epochs]"));

  // Overrides and records read back through the same table: unknown keys and wrong types are errors.
  sae::TrainOptions o;
  BOOST_TEST(contains(error_of([&] { options::apply_json(o, {{"l11", 1.0}}, "[[sae.overrides]]"); }), "unknown key 'l11'"));
  BOOST_TEST(contains(error_of([&] { options::apply_json(o, {{"epochs", 2.5}}, "[[sae.overrides]]"); }), "'epochs' has the wrong type"));
  options::apply_json(o, {{"epochs", 7}, {"architecture", "topk"}}, "[[sae.overrides]]");
  BOOST_TEST(o.epochs == 7);
  BOOST_TEST(o.architecture == "topk");
}

// ---------------------------------------------------------------- seeds

BOOST_AUTO_TEST_CASE(derived_seeds_are_stable) {
  // Fixed values (cross-checked with Python hashlib): any change to derive_seed breaks reproducibility.
  BOOST_TEST(derive_seed(42, "train", "zoo-gpt2", 3) == 5495400445279424978ULL);
  BOOST_TEST(derive_seed(42, "capture") == 3883316607850173733ULL);
  BOOST_TEST(derive_seed(0, "transfer", "gemma-2b", 15) == 730296659208250079ULL);
  BOOST_TEST(derive_seed(43, "train", "zoo-gpt2", 3) == 1830434094043137680ULL);
  BOOST_TEST(derive_seed(42, "train", "zoo-gpt2", 4) != derive_seed(42, "train", "zoo-gpt2", 3));
  BOOST_TEST(seed_key("train", "zoo-gpt2", 3) == "train/zoo-gpt2/3");
  BOOST_TEST(seed_key("capture") == "capture/-/-");
}

// ---------------------------------------------------------------- manifest

BOOST_AUTO_TEST_CASE(manifest_round_trip) {
  fs::path dir = testing::fresh_dir("harness_manifest");
  Manifest m;
  m.section("git") = git_state();
  m.section("environment") = {{"threads", 2}, {"device", "cpu"}};
  m.section("config") = {{"sha256", std::string(64, 'a')}, {"resolved", {{"sae", {{"l1", 1e-4}}}}}};
  m.set_master_seed(42);
  m.record_seed(seed_key("train", "m", 3), derive_seed(42, "train", "m", 3));
  m.record_artifact({.path = "saes/m_layer3/cfg.json", .size = 123, .sha256 = std::string(64, 'b'), .step = "train",
                     .inputs = {{"activations/m_layer3_activations.safetensors", std::string(64, 'c')}},
                     .recorded_at = now_iso8601()});
  m.set_step({.name = "train", .status = "complete", .config_sha256 = "x", .inputs_sha256 = "y", .started_at = "s",
              .finished_at = "f", .seconds = 1.5, .failures = json::array({{{"unit", "m_layer4"}, {"message", "diverged"}}}),
              .summary = {{"saes", 1}}});
  m.add_invocation({{"command", "strata run x.toml"}});
  m.save(dir / "manifest.json");

  Manifest loaded = Manifest::load(dir / "manifest.json");
  BOOST_TEST(loaded.to_json() == m.to_json());
  BOOST_TEST(loaded.master_seed() == 42u);
  BOOST_TEST(loaded.seeds().at("train/m/3") == derive_seed(42, "train", "m", 3));
  BOOST_TEST(loaded.artifact("saes/m_layer3/cfg.json")->inputs.size() == 1u);
  BOOST_TEST(loaded.step("train")->seconds == 1.5);
  BOOST_TEST(loaded.step("train")->failures.size() == 1u);
  BOOST_TEST(loaded.section("git").contains("commit"));
  BOOST_TEST(loaded.section("git").contains("dirty"));
  BOOST_TEST(loaded.section("environment")["threads"] == 2);

  write_file(dir / "bad.json", "{\"format\": \"something-else\"}");
  BOOST_TEST(contains(error_of([&] { Manifest::load(dir / "bad.json"); }), "not a strata run manifest"));
  write_file(dir / "broken.json", "{");
  BOOST_TEST(contains(error_of([&] { Manifest::load(dir / "broken.json"); }), "invalid JSON"));
}

// ---------------------------------------------------------------- atomic artifacts

BOOST_AUTO_TEST_CASE(artifact_writer_that_throws_records_nothing) {
  fs::path dir = testing::fresh_dir("harness_atomic_throw");
  auto run = RunDir::create(dir / "run");
  BOOST_CHECK_THROW(run->write_artifact("capture/out.bin", "capture",
                                        [](const fs::path& tmp) {
                                          std::ofstream(tmp) << "half of it";
                                          throw std::runtime_error("simulated crash");
                                        }),
                    std::runtime_error);
  BOOST_TEST(!fs::exists(dir / "run" / "capture" / "out.bin"));
  BOOST_TEST(Manifest::load(dir / "run" / "manifest.json").artifacts().empty());
  BOOST_TEST(run->manifest().artifacts().empty());
  for (const auto& entry : fs::directory_iterator(dir / "run" / "capture")) BOOST_FAIL("left behind: " << entry.path());

  // The same write completing is recorded with its real size and hash.
  auto record = run->write_artifact("capture/out.bin", "capture", [](const fs::path& tmp) { std::ofstream(tmp) << "all of it"; });
  BOOST_TEST(record.size == 9u);
  BOOST_TEST(record.sha256 == sha256_hex("all of it"));
  BOOST_TEST(Manifest::load(dir / "run" / "manifest.json").artifact("capture/out.bin")->sha256 == record.sha256);
}

BOOST_AUTO_TEST_CASE(artifact_write_killed_midway_records_nothing) {
  fs::path dir = testing::fresh_dir("harness_atomic_kill");
  RunDir::create(dir / "run");  // created, then unlocked again
  int pipe_fds[2];
  BOOST_TEST_REQUIRE(pipe(pipe_fds) == 0);
  pid_t child = fork();
  BOOST_TEST_REQUIRE(child >= 0);
  if (child == 0) {
    close(pipe_fds[0]);
    auto run = RunDir::open(dir / "run");
    run->write_artifact("activations/big.bin", "capture", [&](const fs::path& tmp) {
      std::ofstream out(tmp, std::ios::binary);
      std::string block(1 << 20, 'x');
      out.write(block.data(), static_cast<std::streamsize>(block.size()));
      out.flush();
      char ready = 1;
      [[maybe_unused]] auto n = write(pipe_fds[1], &ready, 1);  // half written: kill me now
      for (;;) pause();
    });
    _exit(0);
  }
  close(pipe_fds[1]);
  char ready = 0;
  BOOST_TEST_REQUIRE(read(pipe_fds[0], &ready, 1) == 1);
  kill(child, SIGKILL);
  int status = 0;
  waitpid(child, &status, 0);
  close(pipe_fds[0]);
  BOOST_TEST(WIFSIGNALED(status));

  BOOST_TEST(!fs::exists(dir / "run" / "activations" / "big.bin"));
  Manifest manifest = Manifest::load(dir / "run" / "manifest.json");
  BOOST_TEST(manifest.artifacts().empty());
  // The killed writer's temporary is visible to verify as an unrecorded file, never as an artifact.
  VerifyResult verified = verify_run(dir / "run");
  BOOST_TEST(verified.ok());
  BOOST_TEST(verified.unrecorded.size() == 1u);
  // The kernel released the dead process's lock: the run can be opened again.
  BOOST_CHECK_NO_THROW(RunDir::open(dir / "run"));
}

// ---------------------------------------------------------------- verify

BOOST_AUTO_TEST_CASE(verify_catches_flipped_byte_and_missing_file) {
  fs::path dir = testing::fresh_dir("harness_verify");
  {
    auto run = RunDir::create(dir / "run");
    run->write_artifact("a/one.bin", "capture", [](const fs::path& tmp) { std::ofstream(tmp) << "first artifact"; });
    run->write_artifact("a/two.bin", "capture", [](const fs::path& tmp) { std::ofstream(tmp) << "second artifact"; });
    run->write_artifact("three.txt", "train", [](const fs::path& tmp) { std::ofstream(tmp) << "third"; }, {"a/one.bin"});
    BOOST_TEST(run->manifest().artifact("three.txt")->inputs.at("a/one.bin") == sha256_hex("first artifact"));
  }
  BOOST_TEST(verify_run(dir / "run").ok());
  BOOST_TEST(verify_run(dir / "run").checked == 3u);

  {  // flip one byte, same size
    std::fstream f(dir / "run" / "a" / "one.bin", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(3);
    f.put('X');
  }
  fs::remove(dir / "run" / "a" / "two.bin");
  VerifyResult result = verify_run(dir / "run");
  BOOST_TEST(!result.ok());
  BOOST_TEST_REQUIRE(result.mismatched.size() == 1u);
  BOOST_TEST(result.mismatched[0].path == "a/one.bin");
  BOOST_TEST(contains(result.mismatched[0].problem, "sha256"));
  BOOST_TEST_REQUIRE(result.missing.size() == 1u);
  BOOST_TEST(result.missing[0] == "a/two.bin");
}

// ---------------------------------------------------------------- lock

BOOST_AUTO_TEST_CASE(lock_contention_between_processes) {
  fs::path dir = testing::fresh_dir("harness_lock");
  auto run = RunDir::create(dir / "run");  // this process holds the lock

  int pipe_fds[2];
  BOOST_TEST_REQUIRE(pipe(pipe_fds) == 0);
  pid_t child = fork();
  BOOST_TEST_REQUIRE(child >= 0);
  if (child == 0) {
    close(pipe_fds[0]);
    std::string message = "opened without error";
    try {
      RunDir::open(dir / "run");
    } catch (const Error& e) {
      message = e.what();
    }
    [[maybe_unused]] auto n = write(pipe_fds[1], message.data(), message.size());
    _exit(0);
  }
  close(pipe_fds[1]);
  std::string message;
  char buffer[1024];
  while (ssize_t n = read(pipe_fds[0], buffer, sizeof buffer)) {
    if (n < 0) break;
    message.append(buffer, n);
  }
  close(pipe_fds[0]);
  waitpid(child, nullptr, 0);
  BOOST_TEST_MESSAGE(message);
  BOOST_TEST(contains(message, "in use by another strata process (pid " + std::to_string(getpid()) + ")"));

  // Released when the holder goes away; and a second holder in the other direction names the child.
  run.reset();
  BOOST_TEST_REQUIRE(pipe(pipe_fds) == 0);
  child = fork();
  if (child == 0) {
    close(pipe_fds[0]);
    auto held = RunDir::open(dir / "run");
    char ready = 1;
    [[maybe_unused]] auto n = write(pipe_fds[1], &ready, 1);
    for (;;) pause();
  }
  close(pipe_fds[1]);
  char ready = 0;
  BOOST_TEST_REQUIRE(read(pipe_fds[0], &ready, 1) == 1);
  close(pipe_fds[0]);
  std::string parent_message = error_of([&] { RunDir::open(dir / "run"); });
  BOOST_TEST(contains(parent_message, "(pid " + std::to_string(child) + ")"));
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  BOOST_CHECK_NO_THROW(RunDir::open(dir / "run"));
}

// ---------------------------------------------------------------- runner, resume, reproduce

namespace {

// Deterministic fake steps: capture writes one file per cell from its seed; train hashes capture's output.
int g_capture_calls = 0, g_train_calls = 0;
bool g_train_nondeterministic = false;
fs::path g_checkpoint;  // when set: an input of capture outside the run, like a model checkpoint

StepRegistry fake_registry() {
  StepRegistry registry;
  registry.add({.name = "capture", .description = "fake capture", .run = [](StepContext& ctx) {
    ++g_capture_calls;
    for (const auto& model : ctx.config(&Experiment::models))
      for (int64_t layer : model.layers) {
        std::string rel = fmt::format("activations/{}_layer{}.txt", model.name, layer);
        std::vector<std::string> inputs;
        if (!g_checkpoint.empty()) inputs.push_back(g_checkpoint.string());
        ctx.write_text_artifact(rel, fmt::format("{} {} {}\n", model.name, layer, ctx.seed_for(model.name, layer)),
                                inputs);
      }
  }, .config_keys = {"models"}, .inputs_from = {}, .outputs = {"activations/{cell}.txt"}, .units = StepUnits::per_model});
  registry.add({.name = "train", .description = "fake train", .run = [](StepContext& ctx) {
    ++g_train_calls;
    for (const auto& input : ctx.artifacts_of("capture")) {
      std::string rel = "saes/" + fs::path(input.path).stem().string() + "/cfg.json";
      json cfg = {{"input", input.sha256}, {"l1", ctx.config(&Experiment::sae).options.l1}, {"seed", ctx.seed_for(input.path)}};
      if (g_train_nondeterministic) cfg["noise"] = g_train_calls;
      ctx.write_json_artifact(rel, cfg, {input.path});
    }
    ctx.set_summary("saes", ctx.artifacts_of("train").size());
  }, .config_keys = {"sae"}, .inputs_from = {"capture"}, .outputs = {"saes/{cell}/cfg.json"}, .units = StepUnits::per_cell});
  // Declared, not built: reported as unavailable.
  registry.add({.name = "transfer", .description = "not in this build", .run = nullptr, .config_keys = {"transfer"},
                .inputs_from = {"capture", "train"}});
  return registry;
}

const char* kRunConfig = R"(
[experiment]
name = "fake"
seed = 7
threads = 1

[sae]
l1 = 1e-4

[[models]]
name = "m1"
checkpoint = "nowhere/m1"
layers = [1, 2]

[[models]]
name = "m2"
checkpoint = "nowhere/m2"
layers = [3]
)";

}  // namespace

BOOST_AUTO_TEST_CASE(run_resume_skips_up_to_date_steps) {
  fs::path dir = testing::fresh_dir("harness_run");
  fs::path exp_file = write_file(dir / "exp.toml", kRunConfig);
  StepRegistry registry = fake_registry();
  g_capture_calls = g_train_calls = 0;

  RunOptions options{.experiment_file = exp_file, .out_dir = dir / "run"};
  RunSummary first = run_experiment(options, registry);
  BOOST_TEST(first.ok());
  BOOST_TEST((first.completed == std::vector<std::string>{"capture", "train"}));
  BOOST_TEST((first.unavailable == std::vector<std::string>{"transfer"}));
  BOOST_TEST(g_capture_calls == 1);

  Manifest m = Manifest::load(dir / "run" / "manifest.json");
  BOOST_TEST(m.artifacts_of("capture").size() == 3u);
  BOOST_TEST(m.artifacts_of("train").size() == 3u);
  BOOST_TEST(m.artifacts_of("config").size() == 2u);  // config.toml + config.resolved.json
  BOOST_TEST(m.step("train")->status == "complete");
  BOOST_TEST(m.step("train")->summary["saes"] == 3);
  BOOST_TEST(m.master_seed() == 7u);
  BOOST_TEST(m.seeds().at("capture/m1/2") == derive_seed(7, "capture", "m1", 2));
  BOOST_TEST(m.section("environment")["threads"] == 1);
  BOOST_TEST(m.section("config")["sha256"] == load_experiment(exp_file).sha256());
  BOOST_TEST(m.artifact("saes/m1_layer1/cfg.json")->inputs.count("activations/m1_layer1.txt") == 1u);
  BOOST_TEST(fs::exists(dir / "run" / "logs" / "strata.log"));
  BOOST_TEST(contains(read_text_file(dir / "run" / "logs" / "strata.log"), "Step train"));
  BOOST_TEST(verify_run(dir / "run").ok());

  // Resume: nothing changed, nothing runs.
  RunSummary second = run_experiment({.resume_dir = dir / "run"}, registry);
  BOOST_TEST((second.skipped == std::vector<std::string>{"capture", "train"}));
  BOOST_TEST(g_capture_calls == 1);
  BOOST_TEST(g_train_calls == 1);

  // A changed [sae] re-runs train only.
  write_file(exp_file, std::string(kRunConfig).replace(std::string(kRunConfig).find("l1 = 1e-4"), 9, "l1 = 2e-4"));
  RunSummary third = run_experiment({.experiment_file = exp_file, .resume_dir = dir / "run"}, registry);
  BOOST_TEST((third.skipped == std::vector<std::string>{"capture"}));
  BOOST_TEST((third.completed == std::vector<std::string>{"train"}));
  BOOST_TEST(json::parse(read_text_file(dir / "run" / "saes" / "m1_layer1" / "cfg.json"))["l1"] == 2e-4);

  // A damaged capture artifact makes capture run again; it re-creates the same bytes, so train, whose
  // inputs are unchanged, stays up to date.
  write_file(dir / "run" / "activations" / "m2_layer3.txt", "tampered\n");
  RunSummary fourth = run_experiment({.resume_dir = dir / "run"}, registry);
  BOOST_TEST((fourth.completed == std::vector<std::string>{"capture"}));
  BOOST_TEST((fourth.skipped == std::vector<std::string>{"train"}));
  BOOST_TEST(verify_run(dir / "run").ok());
  BOOST_TEST(Manifest::load(dir / "run" / "manifest.json").invocations().size() == 4u);

  // A new run cannot be started over an existing one.
  BOOST_TEST(contains(error_of([&] { run_experiment(options, registry); }), "already holds a run"));
  BOOST_TEST(contains(error_of([&] { parse_step_list("capture,trian", registry); }), "unknown step 'trian' (steps: capture, train, transfer)"));
}

// An input outside the run (a checkpoint directory) that changed after the step ran makes the step run
// again on resume, even though its own artifacts are intact.
BOOST_AUTO_TEST_CASE(resume_reruns_a_step_whose_external_input_changed) {
  fs::path dir = testing::fresh_dir("harness_run_external");
  fs::path exp_file = write_file(dir / "exp.toml", kRunConfig);
  g_checkpoint = dir / "checkpoint";
  write_file(g_checkpoint / "model.safetensors", "weights v1");
  StepRegistry registry = fake_registry();
  g_capture_calls = g_train_calls = 0;
  BOOST_TEST(run_experiment({.experiment_file = exp_file, .out_dir = dir / "run"}, registry).ok());
  RunSummary unchanged = run_experiment({.resume_dir = dir / "run"}, registry);
  BOOST_TEST((unchanged.skipped == std::vector<std::string>{"capture", "train"}));

  write_file(g_checkpoint / "model.safetensors", "weights v2");
  RunSummary retrained = run_experiment({.resume_dir = dir / "run"}, registry);
  BOOST_TEST((retrained.completed == std::vector<std::string>{"capture"}));
  BOOST_TEST(g_capture_calls == 2);
  BOOST_TEST(verify_run(dir / "run").ok());
  g_checkpoint.clear();
}

// A step completed by another build of strata runs again on resume, so that every artifact of a run
// comes from one version of the code; its identical output leaves the next step up to date.
BOOST_AUTO_TEST_CASE(resume_reruns_a_step_made_by_another_build) {
  fs::path dir = testing::fresh_dir("harness_run_build");
  fs::path exp_file = write_file(dir / "exp.toml", kRunConfig);
  StepRegistry registry = fake_registry();
  g_capture_calls = g_train_calls = 0;
  BOOST_TEST(run_experiment({.experiment_file = exp_file, .out_dir = dir / "run"}, registry).ok());
  const fs::path manifest_file = dir / "run" / "manifest.json";
  json manifest = json::parse(read_text_file(manifest_file));
  BOOST_TEST(manifest["steps"]["capture"]["build"] == runtime::build_id());
  manifest["steps"]["capture"]["build"] = "0000000000000000000000000000000000000000";
  atomic_write_text(manifest_file, manifest.dump(2));
  RunSummary resumed = run_experiment({.resume_dir = dir / "run"}, registry);
  BOOST_TEST((resumed.completed == std::vector<std::string>{"capture"}));
  BOOST_TEST((resumed.skipped == std::vector<std::string>{"train"}));
  BOOST_TEST(json::parse(read_text_file(manifest_file))["steps"]["capture"]["build"] == runtime::build_id());
  BOOST_TEST(contains(read_text_file(dir / "run" / "logs" / "strata.log"), "made by build 0000000000"));
}

BOOST_AUTO_TEST_CASE(failing_step_is_recorded_and_stops_the_run) {
  fs::path dir = testing::fresh_dir("harness_run_fail");
  fs::path exp_file = write_file(dir / "exp.toml", kRunConfig);
  StepRegistry registry = fake_registry();
  StepDefinition train = *registry.find("train");
  train.run = [](StepContext& ctx) {
    ctx.write_text_artifact("saes/partial.txt", "one done\n");
    throw Error("SAE m1_layer2 diverged (NaN loss at step 12)");
  };
  registry.add(train);
  StepDefinition transfer = *registry.find("transfer");
  transfer.run = [](StepContext&) { BOOST_FAIL("transfer must not run after a failed train"); };
  registry.add(transfer);
  RunSummary summary = run_experiment({.experiment_file = exp_file, .out_dir = dir / "run"}, registry);
  BOOST_TEST(!summary.ok());
  BOOST_TEST(summary.failed_step == "train");
  BOOST_TEST(contains(summary.error, "diverged"));
  Manifest m = Manifest::load(dir / "run" / "manifest.json");
  BOOST_TEST(m.step("train")->status == "failed");
  BOOST_TEST(contains(m.step("train")->error, "NaN"));
  BOOST_TEST(m.step("capture")->status == "complete");

  // Resuming with a fixed step re-runs only the failed one, and drops its stale partial record.
  RunSummary resumed = run_experiment({.steps = {"capture", "train"}, .resume_dir = dir / "run"}, fake_registry());
  BOOST_TEST(resumed.ok());
  BOOST_TEST((resumed.skipped == std::vector<std::string>{"capture"}));
  BOOST_TEST(Manifest::load(dir / "run" / "manifest.json").artifact("saes/partial.txt") == nullptr);
}

BOOST_AUTO_TEST_CASE(reproduce_lists_identical_and_different_artifacts) {
  fs::path dir = testing::fresh_dir("harness_reproduce");
  fs::path exp_file = write_file(dir / "exp.toml", kRunConfig);
  g_train_nondeterministic = false;
  StepRegistry registry = fake_registry();
  BOOST_TEST_REQUIRE(run_experiment({.experiment_file = exp_file, .out_dir = dir / "original"}, registry).ok());

  ReproduceResult same = reproduce_run(dir / "original", dir / "again", registry);
  BOOST_TEST(same.identical());
  BOOST_TEST(same.artifacts.size() == 8u);  // 2 config + 3 capture + 3 train
  for (const auto& a : same.artifacts) BOOST_TEST(a.status == "identical", a.path);
  BOOST_TEST(Manifest::load(dir / "again" / "manifest.json").section("environment")["threads"] == 1);

  g_train_nondeterministic = true;
  ReproduceResult different = reproduce_run(dir / "original", dir / "different", registry);
  g_train_nondeterministic = false;
  BOOST_TEST(!different.identical());
  size_t n_different = 0;
  for (const auto& a : different.artifacts)
    if (a.status == "different") {
      ++n_different;
      BOOST_TEST(a.path.rfind("saes/", 0) == 0u);
    }
  BOOST_TEST(n_different == 3u);
}

// A step reads the config only through ctx.config(), which refuses a section (or key) the step's row does
// not declare: the declared config is exactly what the step reads, so --resume cannot miss a change.
BOOST_AUTO_TEST_CASE(a_step_cannot_read_config_it_does_not_declare) {
  fs::path dir = testing::fresh_dir("harness_step_declares");
  fs::path exp_file = write_file(dir / "exp.toml", kRunConfig);
  StepRegistry registry = fake_registry();
  int64_t dpi_seen = 0;
  registry.add({.name = "figures", .description = "reads [figures] without declaring it", .run = [&](StepContext& ctx) {
    dpi_seen = ctx.config(&Experiment::figures).dpi;
  }, .config_keys = {"transfer"}, .inputs_from = {"train"}});
  RunSummary summary = run_experiment({.experiment_file = exp_file, .out_dir = dir / "run"}, registry);
  BOOST_TEST(summary.failed_step == "figures");
  BOOST_TEST(contains(summary.error, "step 'figures' reads config 'figures' but its row in the step table does not declare it"),
             summary.error);
  BOOST_TEST(dpi_seen == 0);

  // Declared as a dotted key, that key alone may be read; the rest of its section may not.
  StepDefinition keyed = *registry.find("figures");
  keyed.config_keys = {"transfer.ceiling"};
  bool ceiling = false;
  keyed.run = [&](StepContext& ctx) {
    ceiling = ctx.config(&Experiment::transfer, &TransferConfig::ceiling);
    ctx.config(&Experiment::transfer, &TransferConfig::diverging_threshold);
  };
  registry.add(keyed);
  summary = run_experiment({.resume_dir = dir / "run"}, registry);
  BOOST_TEST(ceiling);
  BOOST_TEST(contains(summary.error, "reads config 'transfer.diverging_threshold'"), summary.error);

  // With the section declared, a change to it makes the step run again on resume.
  StepDefinition declared = *registry.find("figures");
  declared.config_keys = {"figures"};
  int figures_calls = 0;
  declared.run = [&](StepContext& ctx) {
    ++figures_calls;
    ctx.write_json_artifact("figures/figures.json", {{"dpi", ctx.config(&Experiment::figures).dpi}});
  };
  registry.add(declared);
  BOOST_TEST(run_experiment({.resume_dir = dir / "run"}, registry).ok());
  BOOST_TEST(run_experiment({.resume_dir = dir / "run"}, registry).skipped.size() == 3u);
  write_file(exp_file, std::string(kRunConfig) + "\n[figures]\ndpi = 150\n");
  RunSummary changed = run_experiment({.experiment_file = exp_file, .resume_dir = dir / "run"}, registry);
  BOOST_TEST((changed.completed == std::vector<std::string>{"figures"}));
  BOOST_TEST(figures_calls == 2);
  BOOST_TEST(json::parse(read_text_file(dir / "run" / "figures" / "figures.json"))["dpi"] == 150);
}

// The step table is checked when rows are added: a step may only read artifacts of earlier steps.
BOOST_AUTO_TEST_CASE(step_table_rows_read_only_earlier_steps) {
  StepRegistry registry;
  registry.add({.name = "a", .run = [](StepContext&) {}, .config_keys = {}, .inputs_from = {}});
  BOOST_TEST(contains(error_of([&] { registry.add({.name = "b", .run = [](StepContext&) {}, .inputs_from = {"c"}}); }),
                      "step 'b' reads the artifacts of 'c', which is not an earlier step"));
  registry.add({.name = "b", .run = [](StepContext&) {}, .inputs_from = {"a"}});
  BOOST_TEST((registry.declared() == std::vector<std::string>{"a", "b"}));
  // Replacing a row keeps its place.
  registry.add({.name = "a", .description = "again", .run = nullptr});
  BOOST_TEST((registry.declared() == std::vector<std::string>{"a", "b"}));
  BOOST_TEST((registry.names() == std::vector<std::string>{"b"}));
}
