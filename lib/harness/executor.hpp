// Executors: one run as units of work that separate processes execute on the shared run directory.
//
// capture splits into one unit per model, train into one per cell (a model's slot-th layer) plus one per
// ceiling SAE, transfer into blocks of source cells, each writing a partial result that the reduce merges
// (StepDefinition::merge_units); the reduce (figures, report, gates) follows. A unit is `strata run-unit RUN_DIR --step S --index I`: it works on a
// view of the run (manifest.json plus the records of the earlier stages' units), writes only its own
// artifacts, and ends by writing its record units/<step>/<index>.json (status, exit status, host, pid,
// timings, build, config hash, Slurm ids, and the artifacts, seeds, cells, failures and summary it
// recorded). Units never write manifest.json; the reduce (`strata run-unit RUN_DIR --reduce`) merges every
// record into it under the run lock, then runs figures, report and gates as `strata run --resume` would.
// The local executor runs the units as `--jobs N` child processes; the Slurm executor (executor_slurm.cpp)
// submits each stage as a job array. The artifacts are the same bytes as an in-process `strata run`.
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "harness/runner.hpp"
#include "harness/steps.hpp"

namespace strata::harness {

// The stages that split into units, in order; the reduce runs the remaining steps.
inline const std::vector<std::string> kUnitStages = {"capture", "train", "transfer"};
inline const std::vector<std::string> kReduceSteps = {"figures", "report", "gates"};
// The pseudo-stage name of the reduce in records, scripts and `strata status`.
inline constexpr const char* kReduceStage = "reduce";

struct Unit {
  std::string step;
  int index = 0;     // 0-based: the array task id
  std::string name;  // "gpt2", "gpt2:layer4", "neox:depth0.25", "gpt2:ceiling", "all"
  UnitSelector select;
};

// The units of one stage, in a fixed order that does not depend on what has run, split as the step table
// declares (StepDefinition::units); transfer blocks hold `[executor] transfer_block` source cells (default:
// one model's cells per block).
std::vector<Unit> plan_units(const Experiment& exp, const std::string& stage, const StepRegistry& registry = global_steps());

std::filesystem::path unit_record_path(const std::filesystem::path& run_dir, const std::string& stage, int index);
// The record, or nullopt when the unit has not started (or its record is unreadable: it re-runs).
std::optional<nlohmann::json> read_unit_record(const std::filesystem::path& run_dir, const std::string& stage, int index);
// A record of a unit that completed with this build and the stage's current config.
bool record_is_done(const nlohmann::json& record, const Experiment& exp, const StepRegistry& registry);

// The experiment a run directory was made with (its config.toml, paths resolved as when it was made).
Experiment load_run_experiment(const std::filesystem::path& run_dir);

// Runs one unit (stage kUnitStages[...], index) and writes its record. Returns 0 when it completed, 1 when
// it failed (the record and stderr say why). Test hook: STRATA_FAIL_UNIT="train:1,capture:0" makes those
// units fail before they start.
int run_unit(const std::filesystem::path& run_dir, const std::string& stage, int index,
             const StepRegistry& registry = global_steps(), std::optional<int> threads = std::nullopt);

// Merges every unit record into manifest.json (under the run lock; every unit must be done) and runs
// figures, report and gates. Throws when a unit is not done, naming it and how to resume.
RunSummary reduce_run(const std::filesystem::path& run_dir, const StepRegistry& registry = global_steps(),
                      std::optional<int> threads = std::nullopt, const std::string& command_line = "");

// Per stage, the indexes of the units that still have to run: no record, a failed one, or one made by
// another build or config. Once a stage has pending units, every unit of the later stages is pending too
// (their inputs will be made again).
std::map<std::string, std::vector<int>> pending_units(const std::filesystem::path& run_dir, const Experiment& exp,
                                                      const StepRegistry& registry = global_steps());

// Options common to every executor, from the command line and the experiment's [executor] table.
struct ExecutorOptions {
  std::string kind;           // "local" | "slurm"
  int jobs = 1;               // local: units run at the same time
  int max_retries = 0;        // a failing unit is run again up to this many times before it counts as failed
  std::optional<int> threads;  // passed to every unit and the reduce (else the experiment's threads)
  std::filesystem::path strata_binary;  // the executable units run (default: this one)
};

// The local executor: every pending unit as a child process, `jobs` at a time, stage after stage, then
// the reduce. Returns the reduce's exit status (0 GO, 2 NO-GO), or 1 when a unit failed.
int run_local(const std::filesystem::path& run_dir, const Experiment& exp, const ExecutorOptions& options,
              const StepRegistry& registry = global_steps());

// The absolute path of the running executable.
std::filesystem::path self_executable();

}  // namespace strata::harness
