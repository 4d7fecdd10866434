// The step plug-in API. A pipeline step is a function of a StepContext; it reads the experiment and the
// artifacts of earlier steps, writes its own artifacts through the context (atomically, recorded with
// provenance), and takes every random seed from seed_for(). The runner (runner.hpp) decides which steps
// run, skips up-to-date ones on resume, and records each step's status in the manifest.
#pragma once
#include <torch/types.h>

#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>
#include <utility>

#include "harness/config.hpp"
#include "harness/run_dir.hpp"

namespace strata::harness {

struct StepDefinition;

// The part of a step one unit of work does (harness/executor.hpp plans the units). A step without a
// selector does all of its work; a step that splits into units skips what its context does not select.
struct UnitSelector {
  std::string model;        // only this model ("" = every model)
  std::optional<int> slot;  // train: only the model's slot-th cell (0-based, in its layer order)
  bool ceiling = false;     // train: only the model's ceiling SAE (and none of its cells)
  // transfer: only the pairs whose source is one of these cells, as (model, slot) like `slot` above.
  std::vector<std::pair<std::string, int>> sources;
  // A run-relative file the unit writes for the reduce instead of the step's artifacts (transfer: its
  // partial result, merged by the step's merge_units). Not an artifact of the run.
  std::string scratch;
};

class StepContext {
 public:
  StepContext(const Experiment& experiment, RunDir& run, const StepDefinition& definition, torch::Device device);

  RunDir& run;
  const std::string step;
  const torch::Device device;
  std::optional<UnitSelector> unit;  // unset: the whole step

  bool selects_model(std::string_view model) const { return !unit || unit->model.empty() || unit->model == model; }
  bool selects_cell(std::string_view model, int slot) const {
    return !unit || (!unit->ceiling && selects_model(model) && (!unit->slot || *unit->slot == slot));
  }
  bool selects_ceiling(std::string_view model) const { return !unit || (unit->ceiling && selects_model(model)); }
  bool selects_source(std::string_view model, int slot) const {
    if (!unit || unit->sources.empty()) return true;
    for (const auto& [m, s] : unit->sources)
      if (m == model && s == slot) return true;
    return false;
  }

  // A config section the step reads, e.g. ctx.config(&Experiment::figures). Reading a section the step
  // does not declare in the step table is an error (naming both), so that every config part a step's
  // output depends on is in its config hash and --resume re-runs it when that part changes.
  template <class T>
  const T& config(T Experiment::*section) const {
    require_declared(Experiment::section_name(section), "");
    return exp_.*section;
  }
  // One key of a section, for a step that reads only that key (declared "transfer.ceiling").
  template <class S, class T, class Owner>
  const T& config(S Experiment::*section, T Owner::*key) const {
    std::string name;
    options::for_each_field(exp_.*section, [&](const auto& f, const auto&) {
      if constexpr (std::is_same_v<std::decay_t<decltype(f.member)>, T Owner::*>)
        if (f.member == key) name = std::string(f.key);
    });
    require_declared(Experiment::section_name(section), name);
    return (exp_.*section).*key;
  }

  // One section of the resolved config (Experiment::section: every default filled in), for a layer that
  // takes its settings as JSON (the gates, report::analysis_options). Declared like config().
  nlohmann::json config_json(const std::string& section) const {
    require_declared(section, "");
    return exp_.section(section);
  }

  // The seed of (this step, model, layer), derived from the master seed (seeds.hpp) and recorded in
  // the manifest. Use model "" / layer -1 for step-wide randomness.
  uint64_t seed_for(std::string_view model = "", int64_t layer = -1);
  // A seed shared by several steps that must draw the same numbers (e.g. the bootstrap behind both the
  // figures and the report): derived from (master, purpose) alone, recorded as "<purpose>/-/-".
  uint64_t shared_seed(std::string_view purpose);

  // Absolute path of a run-relative path (directories are not created).
  std::filesystem::path path(const std::string& relative) const { return run.path(relative); }

  // Atomic write + record (size, SHA-256, this step, inputs' hashes); the manifest is saved before
  // returning. Inputs: run-relative paths of earlier artifacts, or absolute paths outside the run
  // (e.g. a checkpoint directory).
  ArtifactRecord write_artifact(const std::string& relative, const std::function<void(const std::filesystem::path& tmp)>& write,
                                const std::vector<std::string>& inputs = {});
  ArtifactRecord write_text_artifact(const std::string& relative, std::string_view text,
                                     const std::vector<std::string>& inputs = {});
  ArtifactRecord write_json_artifact(const std::string& relative, const nlohmann::json& value,
                                     const std::vector<std::string>& inputs = {});
  // For files another layer wrote atomically itself (safetensors, activation stores, SAE dirs).
  ArtifactRecord record_artifact(const std::string& relative, const std::vector<std::string>& inputs = {});
  // Records every regular file under a run-relative directory (sorted), e.g. saes/<cell>/.
  std::vector<ArtifactRecord> record_directory(const std::string& relative, const std::vector<std::string>& inputs = {});

  // A part of the step that failed while the rest went on (e.g. one SAE diverged): recorded in the
  // manifest's step entry; the step still completes, and later steps/gates see the failure.
  void record_failure(const std::string& unit, const std::string& message);
  // Step-specific figures for the manifest (tokens captured, pairs evaluated, ...).
  void set_summary(const std::string& key, nlohmann::json value);

  // Artifacts recorded so far by a step (sorted by path).
  std::vector<ArtifactRecord> artifacts_of(const std::string& step_name) const;

 private:
  void require_declared(const std::string& section, const std::string& key) const;
  const Experiment& exp_;
  std::vector<std::string> config_keys_;
};

using StepFunction = std::function<void(StepContext&)>;

// How a scheduler may split a step into units of work that run apart and write disjoint artifacts.
enum class StepUnits {
  whole_run,     // one unit (figures, report, gates: the reduce)
  per_model,     // one unit per [[models]] entry (capture)
  per_cell,      // one unit per (model, layer) SAE, ceiling SAEs included (train)
  source_cells,  // blocks of source cells, every target each (transfer)
};

// One row of the pipeline's step table (lib/pipeline/pipeline.cpp step_table(), the single source of
// truth): what runs, in which order, what it reads and what it writes. The runner, resume, reproduce
// and schedulers read it from here.
struct StepDefinition {
  std::string name;
  std::string description;
  StepFunction run;  // empty: declared but not available in this build (reported, skipped)
  // The config it reads, as top-level sections ("sae") or dotted keys ("transfer.ceiling"); the master
  // seed always counts. StepContext::config() refuses anything else, so this is exactly what it reads.
  std::vector<std::string> config_keys;
  // Earlier steps whose artifacts are this step's inputs (their hashes decide whether it is up to date).
  std::vector<std::string> inputs_from;
  // Run-relative artifacts it writes; {model} and {cell} (<model>_layer<L>) stand for each model / cell.
  std::vector<std::string> outputs;
  StepUnits units = StepUnits::whole_run;
  // For a step whose units write scratch files rather than artifacts (source_cells: partial transfer
  // results): run by the reduce on the whole run, given every unit's scratch file (run-relative, in unit
  // order), it writes and records the step's artifacts.
  std::function<void(StepContext&, const std::vector<std::string>& scratch)> merge_units;
};

// The step table as registered: rows in pipeline order.
class StepRegistry {
 public:
  // Appends a row, or replaces the row of that name in place. Every name in inputs_from must be an
  // earlier row.
  void add(StepDefinition step);
  const StepDefinition* find(const std::string& name) const;
  // Every row, in order (available or not).
  const std::vector<StepDefinition>& steps() const { return steps_; }
  std::vector<std::string> declared() const;  // every row's name, in order
  std::vector<std::string> names() const;     // the rows with a function, in order

 private:
  std::vector<StepDefinition> steps_;
};

// The steps `strata run` knows: filled by pipeline::register_steps (lib/pipeline).
StepRegistry& global_steps();

// SHA-256 of the config parts a step depends on (plus the master seed).
std::string step_config_sha256(const Experiment& exp, const StepDefinition& step);
// SHA-256 over "<path>  <sha256>\n" of every artifact recorded by the steps in inputs_from, by path.
std::string step_inputs_sha256(const Manifest& manifest, const StepDefinition& step);

}  // namespace strata::harness
