#define BOOST_TEST_MODULE validation_run
#include <boost/test/unit_test.hpp>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "harness/run_dir.hpp"
#include "harness/runner.hpp"
#include "harness/verify.hpp"
#include "pipeline/pipeline.hpp"
#include "test_helpers.hpp"
#include "test_report_fixture.hpp"
#include "validation/gates.hpp"

// The report and the gates inside a real run directory (harness runner, manifest, lock): the report is
// recorded, does not depend on the gates, and `strata report RUN_DIR` keeps the run verifiable.

namespace fs = std::filesystem;
using nlohmann::json;
using namespace strata;

namespace {

// The fixture's stores, SAEs and transfer matrix, made once; the fake transfer step copies them into a run.
const testing::Fixture& fixture() {
  static const testing::Fixture fx = testing::make_run_fixture(testing::fresh_dir("validation_run_fixture"));
  return fx;
}

// The pipeline's figures, report and gates steps (with the CLI's gate hooks); capture, train and transfer
// replaced by one step that copies the fixture in and records it, as those steps would.
harness::StepRegistry registry() {
  harness::StepRegistry r;
  pipeline::GateHooks hooks;
  hooks.evaluate = [](const fs::path& run_dir, const json& section, const json& cells) {
    std::vector<validation::ExpectedCell> expected;
    for (const auto& c : cells) expected.push_back({c.at("model").get<std::string>(), c.at("layer").get<int>(), c.at("hidden_size").get<int64_t>()});
    return validation::evaluate_gates(run_dir, validation::GateThresholds::from_json(section), expected);
  };
  hooks.write = [](const fs::path& run_dir, const json& gates) { validation::write_gates(run_dir, gates); };
  pipeline::register_steps(r, hooks);
  harness::StepDefinition transfer = *r.find("transfer");
  transfer.run = [](harness::StepContext& ctx) {
    json cells = json::array();
    for (const char* dir : {"activations", "saes", "transfer"}) {
      fs::copy(fixture().dir / dir, ctx.path(dir), fs::copy_options::recursive | fs::copy_options::overwrite_existing);
      ctx.record_directory(dir);
    }
    for (const auto& model : fixture().options.models)
      for (int layer : fixture().options.layers)
        cells.push_back({{"name", model + "_layer" + std::to_string(layer)}, {"model", model}, {"layer", layer},
                         {"n_layers", 5}, {"relative_depth", layer / 5.0}, {"hidden_size", fixture().options.dim}});
    std::lock_guard lock(ctx.run.mutex());
    ctx.run.manifest().section("cells") = cells;
    ctx.run.save_manifest();
  };
  r.add(transfer);
  return r;
}

// Non-default bootstrap, CI level and seed, so agreement between report and gates is not by default.
std::string experiment_toml() {
  std::string toml = "[experiment]\nname = \"runfixture\"\nseed = 11\nthreads = 1\n\n[transfer]\nbootstrap = 300\nci_level = 0.9\n";
  for (const auto& model : fixture().options.models)
    toml += fmt::format("\n[[models]]\nname = \"{}\"\ncheckpoint = \"nowhere/{}\"\nlayers = [1, 2, 3, 4, 5]\n", model, model);
  return toml;
}

json read_json_file(const fs::path& file) { return json::parse(read_text_file(file)); }

std::map<std::string, std::string> file_bytes(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    if (entry.is_regular_file()) out[fs::relative(entry.path(), dir).string()] = read_text_file(entry.path());
  return out;
}

}  // namespace

BOOST_AUTO_TEST_CASE(report_is_recorded_independent_of_the_gates_and_judged_by_them) {
  const fs::path dir = testing::fresh_dir("validation_run");
  atomic_write_text(dir / "exp.toml", experiment_toml());
  harness::RunOptions options{.experiment_file = dir / "exp.toml", .steps = {"transfer", "figures", "report", "gates"},
                              .out_dir = dir / "run"};
  const harness::RunSummary first = harness::run_experiment(options, registry());
  BOOST_REQUIRE_MESSAGE(first.ok(), first.error);
  const fs::path run = dir / "run";
  BOOST_TEST(harness::verify_run(run).ok());
  const harness::Manifest manifest = harness::Manifest::load(run / "manifest.json");
  std::vector<std::string> report_files;
  for (const auto& record : manifest.artifacts_of("report")) report_files.push_back(record.path);
  BOOST_TEST((std::find(report_files.begin(), report_files.end(), "report/analysis.json") != report_files.end()));
  BOOST_TEST((std::find(report_files.begin(), report_files.end(), "report/report.md") != report_files.end()));

  // One analysis: the gates quote the report's interval at the run's settings (300 resamples, 90%).
  const json analysis = read_json_file(run / "report" / "analysis.json");
  const json gates = read_json_file(run / "gates" / "gates.json");
  BOOST_TEST(analysis["options"]["bootstrap_resamples"] == 300);
  BOOST_TEST(analysis["options"]["bootstrap_seed"].get<uint64_t>() == manifest.seeds().at("analysis/-/-"));
  json early;
  for (const auto& check : gates["should_pass"])
    if (check["name"] == "early_layer_transfer") early = check;
  BOOST_TEST(early["ci"] == analysis["early"]["ci"]);
  const std::string interval = fmt::format("90% CI [{:.3f}, {:.3f}]", analysis["early"]["ci"][0].get<double>(),
                                           analysis["early"]["ci"][1].get<double>());
  BOOST_TEST(early["summary"].get<std::string>().find(interval) != std::string::npos, early["summary"]);
  const auto report_before = file_bytes(run / "report");
  BOOST_TEST(report_before.at("report.md").find(interval) != std::string::npos);

  // The report again, now that gates.json exists (a resumed run): the same bytes, still verifiable.
  fs::remove(run / "report" / "report.md");
  harness::RunOptions resume{.steps = {"report"}, .resume_dir = run};
  const harness::RunSummary again = harness::run_experiment(resume, registry());
  BOOST_REQUIRE_MESSAGE(again.ok(), again.error);
  BOOST_TEST((again.completed == std::vector<std::string>{"report"}));
  BOOST_TEST((file_bytes(run / "report") == report_before));
  BOOST_TEST(harness::verify_run(run).ok());
}

// `strata report RUN_DIR` runs the report step of the run: under its lock, recorded in its manifest.
BOOST_AUTO_TEST_CASE(strata_report_records_what_it_writes_and_respects_the_lock) {
  const fs::path dir = testing::fresh_dir("validation_run_cli");
  atomic_write_text(dir / "exp.toml", experiment_toml());
  harness::RunOptions options{.experiment_file = dir / "exp.toml", .steps = {"transfer", "figures", "report", "gates"},
                              .out_dir = dir / "run"};
  BOOST_REQUIRE(harness::run_experiment(options, registry()).ok());
  const fs::path run = dir / "run";
  const auto recorded = file_bytes(run / "report");
  // A report that no longer matches its record (edited by hand): `strata report` rewrites and re-records it.
  atomic_write_text(run / "report" / "report.md", "edited\n");
  BOOST_TEST(!harness::verify_run(run).ok());
  std::string output;
  const std::string command = testing::strata_binary().string() + " report " + run.string();
  BOOST_TEST(testing::run_command(command, &output) == 0, output);
  BOOST_TEST(output.find("written and recorded in the manifest") != std::string::npos, output);
  BOOST_TEST((file_bytes(run / "report") == recorded));
  const auto verified = harness::verify_run(run);
  BOOST_TEST(verified.ok());
  // Nothing changed since: up to date.
  BOOST_TEST(testing::run_command(command, &output) == 0, output);
  BOOST_TEST(output.find("up to date") != std::string::npos, output);
  // While another process holds the run, it refuses and says why.
  {
    harness::RunLock lock(run / "run.lock");
    BOOST_TEST(testing::run_command(command, &output) != 0);
    BOOST_TEST(output.find("is in use by another strata process") != std::string::npos, output);
  }
  // A directory that is not a run is refused, with the way to make one.
  const fs::path loose = testing::copy_run(fixture().dir, dir / "loose");
  fs::remove(loose / "manifest.json");
  BOOST_TEST(testing::run_command(testing::strata_binary().string() + " report " + loose.string(), &output) != 0);
  BOOST_TEST(output.find("is not a strata run (no manifest.json)") != std::string::npos, output);
  BOOST_TEST(!fs::exists(loose / "report"));
}
