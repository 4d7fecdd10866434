// `strata run EXP`: the whole pipeline (capture, train, transfer, figures, report, gates) in one
// reproducible run directory, with resume; with --executor local|slurm, as units of work in separate
// processes or Slurm job arrays (harness/executor.hpp). `strata run-unit`: one such unit.
// Exit status: 0 = done (and GO when the gates ran), 1 = error or a failed step, 2 = NO-GO (a must-pass
// gate failed; everything was still written); with --executor slurm, 0 = submitted.
#include <algorithm>

#include "command.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/log.hpp"
#include "harness/executor_slurm.hpp"
#include "harness/runner.hpp"
#include "pipeline_steps.hpp"

namespace {

namespace h = strata::harness;

struct RunArgs {
  std::string experiment, steps, resume, out;
  int threads = -1;
  // Executors (harness/executor.hpp): unset values (-1, "") fall back to the experiment's [executor] table.
  std::string executor;
  int jobs = -1, max_retries = -1, gpus_per_task = -1, cpus_per_task = -1, array_parallelism = -1;
  bool dry_run = false;
  h::SlurmOptions slurm;
};

// Prints where the run is and returns its exit status: 0 done (GO when the gates ran now or are up to
// date), 1 a failed step, 2 NO-GO. Shared by `strata run` and the reduce of an executor.
int finish(const h::RunSummary& summary) {
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
}

bool executor_requested(const RunArgs& a) {
  return !a.executor.empty() || a.jobs >= 0 || a.max_retries >= 0 || a.dry_run || a.gpus_per_task >= 0 ||
         a.cpus_per_task >= 0 || a.array_parallelism >= 0 || !a.slurm.partition.empty() || !a.slurm.account.empty() ||
         !a.slurm.qos.empty() || !a.slurm.time.empty() || !a.slurm.mem.empty() || !a.slurm.constraint.empty() ||
         !a.slurm.extra.empty() || !a.slurm.setup.empty();
}

// `strata run` through an executor: prepare the run, then run its pending units locally or submit them.
int run_with_executor(const RunArgs& a, const h::Experiment& exp, const std::string& command_line) {
  const h::ExecutorTable table = h::parse_executor_table(exp.executor, exp.source_file.string());
  const std::string kind = !a.executor.empty() ? a.executor : !table.kind.empty() ? table.kind : "local";
  if (kind != "local" && kind != "slurm") strata::fail("--executor {}: must be local or slurm", kind);
  if (!a.steps.empty()) strata::fail("--steps cannot be combined with an executor: its units cover every step");
  if (kind == "local" && a.dry_run) strata::fail("--dry-run prints Slurm scripts: use it with --executor slurm");
  h::ExecutorOptions options;
  options.kind = kind;
  options.jobs = a.jobs >= 1 ? a.jobs : table.jobs.value_or(1);
  options.max_retries = a.max_retries >= 0 ? a.max_retries : table.max_retries.value_or(0);
  if (a.threads >= 0) options.threads = a.threads;
  h::SlurmConfig slurm = table.slurm;
  slurm.command_line = a.slurm;
  if (a.gpus_per_task >= 0) slurm.command_line.gpus_per_task = a.gpus_per_task;
  if (a.cpus_per_task >= 0) slurm.command_line.cpus_per_task = a.cpus_per_task;
  if (a.array_parallelism >= 0) slurm.array_parallelism = a.array_parallelism;

  if (a.dry_run) {
    std::filesystem::path dir = std::filesystem::absolute(!a.resume.empty() ? a.resume : !a.out.empty() ? a.out : h::default_run_dir(exp).string());
    std::map<std::string, std::vector<int>> pending;
    if (!a.resume.empty()) pending = h::pending_units(dir, exp);
    else
      for (const auto& stage : {"capture", "train", "transfer", "reduce"})
        for (const auto& unit : h::plan_units(exp, stage)) pending[stage].push_back(unit.index);
    h::submit_slurm(dir, exp, pending, slurm, options, true);
    fmt::print("# dry run: nothing written, nothing submitted\n");
    return 0;
  }
  if (!a.resume.empty() && kind == "slurm") {
    std::vector<std::string> busy;
    for (const auto& u : h::run_status(a.resume))
      if ((u.state == "pending" || u.state == "running") && !u.job.empty()) busy.push_back(fmt::format("{}:{} ({})", u.stage, u.index, u.state));
    if (!busy.empty())
      strata::fail("units of {} are still queued or running: {}; wait for them (strata status {}) or cancel them (scancel)",
                   a.resume, fmt::join(busy, ", "), a.resume);
  }
  h::RunOptions prepare;
  prepare.experiment_file = a.experiment;
  prepare.resume_dir = a.resume;
  prepare.out_dir = a.out;
  if (a.threads >= 0) prepare.threads = a.threads;
  prepare.command_line = command_line;
  prepare.prepare_only = true;
  const std::filesystem::path run_dir = h::run_experiment(prepare).run_dir;
  const h::Experiment run_exp = h::load_run_experiment(run_dir);
  const auto pending = h::pending_units(run_dir, run_exp);
  fmt::print("Run directory: {}\n", run_dir.string());
  if (kind == "local") return h::run_local(run_dir, run_exp, options);

  size_t units = 0;
  for (const auto& [stage, indexes] : pending) units += indexes.size();
  if (units == 0) {
    fmt::print("Nothing to submit: every unit and the reduce are done (strata status {})\n", run_dir.string());
    return 0;
  }
  const nlohmann::json submission = h::submit_slurm(run_dir, run_exp, pending, slurm, options, false);
  for (const auto& stage : submission["stages"])
    fmt::print("Submitted {}: job {} (units {})\n", stage["stage"].get<std::string>(), stage["job_id"].get<std::string>(),
               h::array_spec(stage["indexes"].get<std::vector<int>>()));
  fmt::print("Watch it with: strata status {}\n", run_dir.string());
  return 0;
}

void setup(strata::cli::Commands& commands) {
  auto args = std::make_shared<RunArgs>();
  auto* run = commands.root().add_subcommand(
      "run", "Run an experiment end to end (capture, train, transfer, figures, report, gates) in a run directory");
  run->add_option("experiment", args->experiment, "Experiment TOML file (optional with --resume: the run's own config)");
  run->add_option("--steps", args->steps, "Comma-separated subset of steps (they still run in pipeline order)");
  run->add_option("--resume", args->resume, "Continue this run directory; steps whose config and inputs are unchanged are skipped");
  run->add_option("--out", args->out, "New run directory (default: <output_root>/<name>-<UTC time>)");
  run->add_option("--threads", args->threads, "Compute threads, overriding the experiment's [experiment] threads (0 = all cores)");
  auto* ex = "Executor (units of work in separate processes; default: [executor] of the experiment)";
  run->add_option("--executor", args->executor, "local (child processes, --jobs at a time) or slurm (job arrays)")->group(ex);
  run->add_option("--jobs", args->jobs, "Local executor: units run at the same time (implies --executor local)")->group(ex);
  run->add_option("--max-retries", args->max_retries, "Run a failing unit again up to N times before it counts as failed")->group(ex);
  run->add_flag("--dry-run", args->dry_run, "Slurm: print the sbatch scripts and commands; write and submit nothing")->group(ex);
  run->add_option("--slurm-partition", args->slurm.partition, "sbatch --partition")->group(ex);
  run->add_option("--slurm-account", args->slurm.account, "sbatch --account")->group(ex);
  run->add_option("--slurm-qos", args->slurm.qos, "sbatch --qos")->group(ex);
  run->add_option("--slurm-time", args->slurm.time, "sbatch --time (per task, e.g. 02:00:00)")->group(ex);
  run->add_option("--slurm-gpus-per-task", args->gpus_per_task, "sbatch --gpus-per-task")->group(ex);
  run->add_option("--slurm-cpus-per-task", args->cpus_per_task, "sbatch --cpus-per-task")->group(ex);
  run->add_option("--slurm-mem", args->slurm.mem, "sbatch --mem (per node, e.g. 16G)")->group(ex);
  run->add_option("--slurm-constraint", args->slurm.constraint, "sbatch --constraint")->group(ex);
  run->add_option("--slurm-array-parallelism", args->array_parallelism, "At most N tasks of an array at once (--array=...%N)")->group(ex);
  run->add_option("--slurm-extra", args->slurm.extra, "A raw #SBATCH line for every stage (repeatable)")
      ->expected(1)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)->group(ex);
  run->add_option("--slurm-setup", args->slurm.setup, "A shell line run before strata in every job, e.g. 'module load cuda' (repeatable)")
      ->expected(1)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll)->group(ex);
  commands.bind(run, [args]() {
    strata::cli::register_pipeline_steps();
    if (args->experiment.empty() && args->resume.empty()) strata::fail("strata run needs an experiment file (or --resume RUN_DIR)");
    const std::string command_line = "strata run" + (args->experiment.empty() ? "" : " " + args->experiment) +
                   (args->steps.empty() ? "" : " --steps " + args->steps) +
                   (args->resume.empty() ? "" : " --resume " + args->resume) +
                   (args->out.empty() ? "" : " --out " + args->out) +
                   (args->executor.empty() ? "" : " --executor " + args->executor);
    // The experiment decides too: its [executor] table may name an executor.
    const auto load = [&] {
      return !args->experiment.empty() ? h::load_experiment(args->experiment) : h::load_run_experiment(args->resume);
    };
    if (executor_requested(*args)) return run_with_executor(*args, load(), command_line);
    std::optional<h::Experiment> exp;
    try {
      exp = load();
    } catch (const strata::Error&) {
      // The in-process run below reports a bad config or run directory in its own words.
    }
    if (exp && exp->executor.is_object()) return run_with_executor(*args, *exp, command_line);

    h::RunOptions options;
    options.experiment_file = args->experiment;
    options.resume_dir = args->resume;
    options.out_dir = args->out;
    if (!args->steps.empty()) options.steps = h::parse_step_list(args->steps);
    if (args->threads >= 0) options.threads = args->threads;
    options.command_line = command_line;
    return finish(h::run_experiment(options));
  });

  // The entry point of one unit of work (what an executor runs; see harness/executor.hpp).
  struct UnitArgs {
    std::string run_dir, step;
    int index = -1, threads = -1;
    bool reduce = false;
  };
  auto unit_args = std::make_shared<UnitArgs>();
  auto* unit = commands.root().add_subcommand(
      "run-unit", "Run one unit of work of a run (--step S --index I), or its reduce (--reduce); executors call this");
  unit->add_option("run_dir", unit_args->run_dir, "Run directory (made by strata run --executor ...)")->required();
  unit->add_option("--step", unit_args->step, "Stage of the unit: capture, train or transfer");
  unit->add_option("--index", unit_args->index, "Index of the unit in its stage (the array task id)");
  unit->add_flag("--reduce", unit_args->reduce, "Merge every unit's record into the manifest, then figures, report, gates");
  unit->add_option("--threads", unit_args->threads, "Compute threads (default: the experiment's)");
  commands.bind(unit, [unit_args]() {
    strata::cli::register_pipeline_steps();
    std::optional<int> threads;
    if (unit_args->threads >= 0) threads = unit_args->threads;
    if (unit_args->reduce) {
      if (!unit_args->step.empty() || unit_args->index >= 0) strata::fail("--reduce takes neither --step nor --index");
      return finish(h::reduce_run(unit_args->run_dir, h::global_steps(), threads,
                                  "strata run-unit " + unit_args->run_dir + " --reduce"));
    }
    if (unit_args->step.empty() || unit_args->index < 0) strata::fail("run-unit needs --step STAGE --index I, or --reduce");
    return h::run_unit(unit_args->run_dir, unit_args->step, unit_args->index, h::global_steps(), threads);
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
