#define BOOST_TEST_MODULE pipeline
#include <boost/test/unit_test.hpp>

#include <fstream>

#include "core/fs.hpp"
#include "harness/runner.hpp"
#include "harness/verify.hpp"
#include "pipeline/pipeline.hpp"
#include "test_capture_fixture.hpp"
#include "test_helpers.hpp"
#include "test_tiny_experiment.hpp"
#include "text/dataset.hpp"
#include "text/tokenizer.hpp"

namespace fs = std::filesystem;
using namespace strata;
using nlohmann::json;

BOOST_AUTO_TEST_CASE(tiny_pipeline_runs_resumes_verifies_and_reproduces_bit_for_bit) {
  fs::path dir = testing::fresh_dir("pipeline_tiny");
  testing::tiny_checkpoint(dir / "ckpt-gpt2", "gpt2-tiny", 200);
  testing::tiny_checkpoint(dir / "ckpt-neox", "gpt-neox-tiny", 120);
  {
    std::ofstream(dir / "tiny.toml") << testing::kTinyExperiment;
  }
  harness::StepRegistry registry;
  pipeline::register_steps(registry);  // no gate hooks: the gates step is not registered here
  BOOST_TEST((registry.names() == std::vector<std::string>{"capture", "train", "transfer", "figures", "report"}));

  harness::RunSummary summary = harness::run_experiment({.experiment_file = dir / "tiny.toml", .out_dir = dir / "run"}, registry);
  BOOST_TEST_REQUIRE(summary.ok(), summary.failed_step << ": " << summary.error);
  BOOST_TEST((summary.completed == std::vector<std::string>{"capture", "train", "transfer", "figures", "report"}));
  BOOST_TEST((summary.unavailable == std::vector<std::string>{"gates"}));

  harness::Manifest manifest = harness::Manifest::load(dir / "run" / "manifest.json");
  const json& cells = manifest.section("cells");
  BOOST_TEST_REQUIRE(cells.size() == 6u);
  std::vector<std::string> names;
  for (const auto& c : cells) names.push_back(c["name"]);
  BOOST_TEST((names == std::vector<std::string>{"gpt2_layer1", "gpt2_layer2", "gpt2_layer4", "neox_layer1", "neox_layer2",
                                                "neox_layer4"}));
  // Seeds: one per cell for train, plus the two ceiling SAEs, all recorded and all distinct.
  std::set<uint64_t> train_seeds;
  for (const auto& [key, seed] : manifest.seeds())
    if (key.rfind("train/", 0) == 0) train_seeds.insert(seed);
  BOOST_TEST(train_seeds.size() == 8u);
  BOOST_TEST(fs::exists(dir / "run" / "saes_ceiling" / "gpt2_layer2" / "sae_weights.safetensors"));
  // The depth override reached the trainer: early cells trained with l1 1.5e-4, the others with 1e-4.
  json early = json::parse(read_text_file(dir / "run" / "saes" / "gpt2_layer1" / "cfg.json"));
  json late = json::parse(read_text_file(dir / "run" / "saes" / "gpt2_layer4" / "cfg.json"));
  BOOST_TEST(early["training"]["l1_coefficient"].get<double>() == 1.5e-4);
  BOOST_TEST(late["training"]["l1_coefficient"].get<double>() == 1e-4);
  // Every artifact has provenance back to its inputs.
  const harness::ArtifactRecord* matrix = manifest.artifact("transfer/transfer_matrix.json");
  BOOST_TEST_REQUIRE(matrix);
  BOOST_TEST(matrix->inputs.count("saes/neox_layer4/sae_weights.safetensors") == 1u);
  BOOST_TEST(json::parse(read_text_file(dir / "run" / "transfer" / "transfer_matrix.json"))["transfer_matrix"].size() == 36u);
  BOOST_TEST(fs::exists(dir / "run" / "report" / "report.md"));
  BOOST_TEST(harness::verify_run(dir / "run").ok());

  // Resume with nothing changed: every step is up to date.
  harness::RunSummary resumed = harness::run_experiment({.resume_dir = dir / "run"}, registry);
  BOOST_TEST((resumed.skipped == std::vector<std::string>{"capture", "train", "transfer", "figures", "report"}));

  // Reproduce: the same config, seeds and thread count give the same bytes, artifact for artifact.
  harness::ReproduceResult again = harness::reproduce_run(dir / "run", dir / "again", registry);
  for (const auto& a : again.artifacts) BOOST_TEST(a.status == "identical", a.path << " is " << a.status);
  BOOST_TEST(again.seed_differences.empty());
  BOOST_TEST(again.identical());

  // Each step declares exactly the config it reads (StepContext::config refuses anything else), so a change
  // there re-runs it on resume: [figures] dpi re-renders the figures (and the report, whose inputs they
  // are); a [gates] threshold re-runs figures and report, which draw the analysis with it.
  {
    std::ofstream(dir / "tiny.toml") << testing::kTinyExperiment << "\n[figures]\ndpi = 150\n";
  }
  harness::RunSummary new_dpi = harness::run_experiment({.experiment_file = dir / "tiny.toml", .resume_dir = dir / "run"}, registry);
  BOOST_TEST((new_dpi.skipped == std::vector<std::string>{"capture", "train", "transfer"}));
  BOOST_TEST((new_dpi.completed == std::vector<std::string>{"figures", "report"}));
  {
    std::ofstream(dir / "tiny.toml") << testing::kTinyExperiment << "\n[figures]\ndpi = 150\n[gates]\nearly_transfer = 0.7\n";
  }
  harness::RunSummary new_gates = harness::run_experiment({.experiment_file = dir / "tiny.toml", .resume_dir = dir / "run"}, registry);
  BOOST_TEST((new_gates.skipped == std::vector<std::string>{"capture", "train", "transfer"}));
  BOOST_TEST((new_gates.completed == std::vector<std::string>{"figures", "report"}));
  // Every row of the table declares config that exists, and reads only earlier steps' artifacts.
  const json resolved = harness::load_experiment(dir / "tiny.toml").to_json();
  std::vector<std::string> earlier;
  for (const auto& step : pipeline::step_table()) {
    for (const auto& key : step.config_keys) {
      std::string pointer = "/" + key;
      std::replace(pointer.begin(), pointer.end(), '.', '/');
      BOOST_TEST(resolved.contains(json::json_pointer(pointer)), step.name << " declares " << key);
    }
    for (const auto& input : step.inputs_from)
      BOOST_TEST((std::find(earlier.begin(), earlier.end(), input) != earlier.end()), step.name << " reads " << input);
    BOOST_TEST(!step.outputs.empty(), step.name);
    earlier.push_back(step.name);
  }
  BOOST_TEST((earlier == std::vector<std::string>{"capture", "train", "transfer", "figures", "report", "gates"}));

  // The CLI adds the gates step; its exit status carries the verdict (0 GO, 2 NO-GO), like `strata gate`.
  std::string output;
  const int code = testing::run_command(
      fmt::format("'{}' run --resume '{}' --steps gates", testing::strata_binary().string(), (dir / "run").string()),
      &output);
  BOOST_TEST_MESSAGE(output);
  const json gates = json::parse(read_text_file(dir / "run" / "gates" / "gates.json"));
  const bool go = gates.at("must_pass_ok").get<bool>();
  BOOST_TEST(code == (go ? 0 : 2), output);
  BOOST_TEST(output.find(go ? "Verdict: GO" : "Verdict: NO-GO") != std::string::npos, output);
}
