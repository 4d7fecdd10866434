// The Slurm executor: each stage of units (executor.hpp) as one job array, the reduce as one job, chained
// with --dependency=afterok:<previous stage> and --kill-on-invalid-dep=yes (a failed unit cancels every
// later stage instead of leaving it pending forever). Only sbatch, squeue and sacct are used; every call
// runs under a timeout (sacct can hang for minutes when slurmdbd is unreachable).
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "harness/executor.hpp"

namespace strata::harness {

// sbatch options of one stage. Unset fields leave Slurm's (or the site's) defaults.
struct SlurmOptions {
  std::string partition, account, qos, time, mem, constraint;
  std::optional<int> gpus_per_task, cpus_per_task;
  std::vector<std::string> extra;  // raw "#SBATCH ..." lines (the "#SBATCH" may be left out)
  std::vector<std::string> setup;  // shell lines run before strata (module load ..., source venv ...)

  // `over`'s set fields replace these; its extra and setup lines are appended.
  void overlay(const SlurmOptions& over);
};

struct SlurmConfig {
  SlurmOptions common;
  std::map<std::string, SlurmOptions> stages;  // "capture" | "train" | "transfer" | "reduce"
  SlurmOptions command_line;                   // --slurm-* options: override the table, for every stage
  int array_parallelism = 0;                   // %N: at most N tasks of an array at once (0 = no limit)

  SlurmOptions for_stage(const std::string& stage) const;  // common, then the stage's table, then the CLI
};

// The [executor] table of an experiment (Experiment::executor, raw):
//   [executor]            kind = "local" | "slurm", jobs, max_retries
//   [executor.slurm]      partition, account, qos, time, mem, constraint, gpus_per_task, cpus_per_task,
//                         array_parallelism, extra = [...], setup = [...]
//   [executor.slurm.capture] / .train / .transfer / .reduce: the same keys for one stage
// Unknown keys and wrong types are errors naming the file and the dotted key.
struct ExecutorTable {
  std::string kind;
  std::optional<int> jobs, max_retries;
  SlurmConfig slurm;
};
ExecutorTable parse_executor_table(const nlohmann::json& table, const std::string& file_for_errors);

// The sbatch script of one stage: #SBATCH lines (job name, array and %throttle, log files, options), the
// setup lines, and the strata command with a retry loop of `max_retries`.
std::string slurm_script(const std::filesystem::path& run_dir, const std::string& experiment_name, const std::string& stage,
                         const std::vector<int>& indexes, const SlurmConfig& config, const ExecutorOptions& options);
// "0-3,7,9-10": Slurm's --array list of the indexes.
std::string array_spec(std::vector<int> indexes);

// Writes the scripts of the pending stages into RUN_DIR/executor/slurm/, submits them with
// `sbatch --parsable`, chained, and records the submission in RUN_DIR/executor/submissions.json and the
// manifest's executor section. dry_run: prints the scripts and the sbatch commands, writes and submits
// nothing. Returns the submission ({stages: [{stage, job_id, indexes, script}], ...}).
nlohmann::json submit_slurm(const std::filesystem::path& run_dir, const Experiment& exp,
                            const std::map<std::string, std::vector<int>>& pending, const SlurmConfig& config,
                            const ExecutorOptions& options, bool dry_run);

// What `strata status` prints, per stage and unit.
struct UnitState {
  std::string stage;
  int index = 0;
  std::string name;
  std::string state;   // "pending" | "running" | "done" | "failed"
  std::string job;     // Slurm job (array task) id, or "pid N on HOST" for a local unit; empty if none
  std::string detail;  // why (the record's error, Slurm's state and reason, ...)
};
// From the unit records first; units without a final record from squeue, then sacct (both under a
// timeout); a unit whose job has left the queue without a record is failed.
std::vector<UnitState> run_status(const std::filesystem::path& run_dir, const StepRegistry& registry = global_steps());

}  // namespace strata::harness
