// The step plug-in API. A pipeline step is a function of a StepContext; it reads the experiment and the
// artifacts of earlier steps, writes its own artifacts through the context (atomically, recorded with
// provenance), and takes every random seed from seed_for(). The runner (runner.hpp) decides which steps
// run, skips up-to-date ones on resume, and records each step's status in the manifest.
#pragma once
#include <torch/types.h>

#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "harness/config.hpp"
#include "harness/run_dir.hpp"

namespace strata::harness {

// Canonical order; `strata run --steps` selects a subset and it still runs in this order.
inline const std::vector<std::string> kStepOrder = {"capture", "train", "transfer", "figures", "report", "gates"};

class StepContext {
 public:
  StepContext(const Experiment& experiment, RunDir& run, std::string step, torch::Device device);

  const Experiment& exp;
  RunDir& run;
  const std::string step;
  const torch::Device device;

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
};

using StepFunction = std::function<void(StepContext&)>;

struct StepDefinition {
  std::string name;         // one of kStepOrder
  std::string description;
  StepFunction run;
  // Parts of the resolved config the step depends on, as top-level sections ("sae") or dotted keys
  // ("transfer.ceiling"); the master seed always counts. Empty = the step's default (default_step()).
  std::vector<std::string> config_keys;
  // Earlier steps whose artifacts are this step's inputs (their hashes decide whether it is up to date).
  std::vector<std::string> inputs_from;
};

// The default config keys and inputs of each canonical step.
StepDefinition default_step(const std::string& name);

class StepRegistry {
 public:
  // Registers (or replaces) a step; unset config_keys / inputs_from take default_step()'s.
  void add(StepDefinition step);
  // Convenience: a canonical step with its default config keys and inputs.
  void add(const std::string& name, StepFunction run, std::string description = "");
  const StepDefinition* find(const std::string& name) const;
  std::vector<std::string> names() const;  // registered, in canonical order

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
