// `strata run EXP`: the whole pipeline (capture, train, transfer, figures, report, gates) in one
// reproducible run directory, with resume. Exit status: 0 = done (and GO when the gates ran), 1 = error
// or a failed step, 2 = NO-GO (a must-pass gate failed; everything was still written).
#include <algorithm>

#include "command.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/log.hpp"
#include "harness/runner.hpp"
#include "pipeline_steps.hpp"

namespace {

struct RunArgs {
  std::string experiment, steps, resume, out;
  int threads = -1;
};

void setup(strata::cli::Commands& commands) {
  auto args = std::make_shared<RunArgs>();
  auto* run = commands.root().add_subcommand(
      "run", "Run an experiment end to end (capture, train, transfer, figures, report, gates) in a run directory");
  run->add_option("experiment", args->experiment, "Experiment TOML file (optional with --resume: the run's own config)");
  run->add_option("--steps", args->steps, "Comma-separated subset of steps (they still run in pipeline order)");
  run->add_option("--resume", args->resume, "Continue this run directory; steps whose config and inputs are unchanged are skipped");
  run->add_option("--out", args->out, "New run directory (default: <output_root>/<name>-<UTC time>)");
  run->add_option("--threads", args->threads, "Compute threads, overriding the experiment's [experiment] threads (0 = all cores)");
  commands.bind(run, [args]() {
    namespace h = strata::harness;
    strata::cli::register_pipeline_steps();
    h::RunOptions options;
    options.experiment_file = args->experiment;
    options.resume_dir = args->resume;
    options.out_dir = args->out;
    if (!args->steps.empty()) options.steps = h::parse_step_list(args->steps);
    if (args->threads >= 0) options.threads = args->threads;
    options.command_line = "strata run" + (args->experiment.empty() ? "" : " " + args->experiment) +
                           (args->steps.empty() ? "" : " --steps " + args->steps) +
                           (args->resume.empty() ? "" : " --resume " + args->resume) +
                           (args->out.empty() ? "" : " --out " + args->out);
    if (args->experiment.empty() && args->resume.empty()) strata::fail("strata run needs an experiment file (or --resume RUN_DIR)");

    h::RunSummary summary = h::run_experiment(options);
    std::filesystem::path report = summary.run_dir / "report" / "report.md";
    std::filesystem::path gates = summary.run_dir / "gates" / "gates.json";
    fmt::print("Run directory: {}\n", summary.run_dir.string());
    fmt::print("Steps run: {}; up to date: {}; not available yet: {}\n",
               summary.completed.empty() ? "none" : fmt::format("{}", fmt::join(summary.completed, ", ")),
               summary.skipped.empty() ? "none" : fmt::format("{}", fmt::join(summary.skipped, ", ")),
               summary.unavailable.empty() ? "none" : fmt::format("{}", fmt::join(summary.unavailable, ", ")));
    if (std::filesystem::exists(report)) fmt::print("Report: {}\n", report.string());
    else fmt::print("Report: not produced (the report step has not run)\n");
    if (!summary.ok()) {
      std::fprintf(stderr, "strata: error: step %s failed: %s\n(resume with: strata run --resume %s)\n",
                   summary.failed_step.c_str(), summary.error.c_str(), summary.run_dir.c_str());
      return 1;
    }
    // Only a verdict this invocation stands behind: the gates ran now or are up to date with the run.
    const auto& done = summary.completed;
    const auto& current = summary.skipped;
    const bool gates_current = std::find(done.begin(), done.end(), "gates") != done.end() ||
                               std::find(current.begin(), current.end(), "gates") != current.end();
    if (!gates_current || !std::filesystem::exists(gates)) return 0;
    // The exit code carries the verdict, as `strata gate` does, so a script can gate on `strata run`.
    const nlohmann::json verdict = nlohmann::json::parse(strata::read_text_file(gates));
    const bool go = verdict.value("must_pass_ok", false);
    fmt::print("Gates: {}\nVerdict: {}\n", gates.string(), go ? "GO" : "NO-GO (a must-pass gate failed; see the gates table)");
    return go ? 0 : 2;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
