// `strata report RUN_DIR`: the run's report step, as `strata run --resume RUN_DIR --steps report` runs
// it: under run.lock, with the run's own config, and recorded in the manifest (so `strata verify` still
// holds afterwards). Up to date when nothing it reads changed. The gates are their own step (`strata
// gate RUN_DIR`); the report does not depend on them.
#include "command.hpp"
#include "core/error.hpp"
#include "harness/runner.hpp"
#include "pipeline_steps.hpp"

namespace {

void setup(strata::cli::Commands& commands) {
  auto* cmd = commands.root().add_subcommand("report", "Write the markdown report (+ CSV/LaTeX tables) of a run");
  auto run_dir = std::make_shared<std::string>();
  cmd->add_option("RUN_DIR", *run_dir, "run directory")->required()->check(CLI::ExistingDirectory);
  commands.bind(cmd, [run_dir]() {
    namespace fs = std::filesystem;
    if (!fs::exists(fs::path(*run_dir) / "manifest.json"))
      strata::fail("{} is not a strata run (no manifest.json): the report is written into a run and recorded in its "
                   "manifest; make one with `strata run EXP`",
                   *run_dir);
    strata::cli::register_pipeline_steps();
    strata::harness::RunOptions options;
    options.resume_dir = *run_dir;
    options.steps = {"report"};
    options.command_line = "strata report " + *run_dir;
    const auto summary = strata::harness::run_experiment(options);
    if (!summary.ok()) strata::fail("the report step failed: {}", summary.error);
    fmt::print("report: {} ({})\n", (summary.run_dir / "report" / "report.md").string(),
               summary.skipped.empty() ? "written and recorded in the manifest" : "up to date");
    return 0;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
