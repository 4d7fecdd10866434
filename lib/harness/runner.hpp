// `strata run`: executes the selected steps of an experiment in a run directory, in canonical order,
// recording everything in the manifest; on resume, a step whose recorded config and input hashes still
// match (and whose artifacts are intact) is skipped.
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "harness/steps.hpp"

namespace strata::harness {

struct RunOptions {
  std::filesystem::path experiment_file;  // may be empty with resume_dir: the run's own config.toml
  std::vector<std::string> steps;         // empty = every step; always run in the step table's order
  std::filesystem::path resume_dir;       // continue this run
  std::filesystem::path out_dir;          // new run here (default <output_root>/<name>-<UTC time>)
  std::optional<int> threads;             // overrides [experiment] threads (reproduce: the recorded count)
  std::string command_line;               // recorded in the manifest's invocations
  // Reproduce: load the experiment from this config file, resolving relative paths against base_dir.
  std::optional<std::filesystem::path> base_dir;
  // Executors (executor.hpp): create or open the run, record config, environment and the invocation, and run
  // no step; the units and the reduce run in other processes.
  bool prepare_only = false;
};

struct RunSummary {
  std::filesystem::path run_dir;
  std::vector<std::string> completed, skipped, unavailable;
  std::string failed_step, error;
  bool ok() const { return failed_step.empty(); }
};

// Never throws for a failing step (it is recorded and reported in the summary); throws strata::Error
// for a bad config, a locked or invalid run directory, or an unknown step name.
RunSummary run_experiment(const RunOptions& options, const StepRegistry& registry = global_steps());

// <output_root>/<name>-<UTC time> (with -2, -3... when taken): where a new run goes without --out.
std::filesystem::path default_run_dir(const Experiment& exp);

// "capture,train" -> {"capture", "train"}; a name the step table does not declare is an error listing them.
std::vector<std::string> parse_step_list(const std::string& csv, const StepRegistry& registry = global_steps());

}  // namespace strata::harness
