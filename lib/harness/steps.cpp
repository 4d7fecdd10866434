#include "harness/steps.hpp"

#include <fstream>

#include "core/error.hpp"
#include "core/hash.hpp"
#include "harness/seeds.hpp"

namespace strata::harness {
namespace fs = std::filesystem;
using nlohmann::json;

StepContext::StepContext(const Experiment& experiment, RunDir& run_dir, std::string step_name, torch::Device dev)
    : exp(experiment), run(run_dir), step(std::move(step_name)), device(dev) {}

uint64_t StepContext::seed_for(std::string_view model, int64_t layer) {
  uint64_t seed = derive_seed(exp.experiment.seed, step, model, layer);
  std::lock_guard lock(run.mutex());
  run.manifest().record_seed(seed_key(step, model, layer), seed);
  run.save_manifest();
  return seed;
}

uint64_t StepContext::shared_seed(std::string_view purpose) {
  uint64_t seed = derive_seed(exp.experiment.seed, purpose);
  std::lock_guard lock(run.mutex());
  run.manifest().record_seed(seed_key(purpose), seed);
  run.save_manifest();
  return seed;
}

ArtifactRecord StepContext::write_artifact(const std::string& relative, const std::function<void(const fs::path&)>& write,
                                           const std::vector<std::string>& inputs) {
  return run.write_artifact(relative, step, write, inputs);
}

ArtifactRecord StepContext::write_text_artifact(const std::string& relative, std::string_view text,
                                                const std::vector<std::string>& inputs) {
  return write_artifact(
      relative,
      [&](const fs::path& tmp) {
        std::ofstream out(tmp, std::ios::binary);
        out.write(text.data(), static_cast<std::streamsize>(text.size()));
        out.flush();
        if (!out) fail("cannot write {}", tmp.string());
      },
      inputs);
}

ArtifactRecord StepContext::write_json_artifact(const std::string& relative, const json& value,
                                                const std::vector<std::string>& inputs) {
  return write_text_artifact(relative, value.dump(2) + "\n", inputs);
}

ArtifactRecord StepContext::record_artifact(const std::string& relative, const std::vector<std::string>& inputs) {
  return run.record_artifact(relative, step, inputs);
}

std::vector<ArtifactRecord> StepContext::record_directory(const std::string& relative, const std::vector<std::string>& inputs) {
  fs::path dir = run.path(relative);
  if (!fs::is_directory(dir)) fail("internal: step {} recorded directory {} which does not exist", step, dir.string());
  std::vector<fs::path> files;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    if (entry.is_regular_file() && entry.path().filename().string().rfind('.', 0) != 0) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  std::vector<ArtifactRecord> out;
  for (const auto& file : files) out.push_back(run.record_artifact(run.relative(file), step, inputs));
  return out;
}

void StepContext::record_failure(const std::string& unit, const std::string& message) {
  std::lock_guard lock(run.mutex());
  const StepRecord* current = run.manifest().step(step);
  StepRecord record = current ? *current : StepRecord{.name = step, .status = "running"};
  record.failures.push_back({{"unit", unit}, {"message", message}});
  run.manifest().set_step(std::move(record));
  run.save_manifest();
}

void StepContext::set_summary(const std::string& key, json value) {
  std::lock_guard lock(run.mutex());
  const StepRecord* current = run.manifest().step(step);
  StepRecord record = current ? *current : StepRecord{.name = step, .status = "running"};
  record.summary[key] = std::move(value);
  run.manifest().set_step(std::move(record));
  run.save_manifest();
}

std::vector<ArtifactRecord> StepContext::artifacts_of(const std::string& step_name) const {
  std::lock_guard lock(run.mutex());
  return run.manifest().artifacts_of(step_name);
}

StepDefinition default_step(const std::string& name) {
  // config_keys: what, if changed, makes the step's earlier output stale.
  if (name == "capture") return {name, "residual-stream capture per (model, layer)", nullptr, {"dataset", "capture", "models"}, {}};
  if (name == "train") return {name, "one SAE per (model, layer)", nullptr, {"sae", "transfer.ceiling"}, {"capture"}};
  if (name == "transfer")
    return {name, "layer x model transfer matrix", nullptr, {"transfer"}, {"capture", "train"}};
  if (name == "figures") return {name, "publication figures", nullptr, {"transfer", "models"}, {"train", "transfer"}};
  if (name == "report")
    return {name, "markdown report with tables", nullptr, {"transfer", "gates", "models"}, {"capture", "train", "transfer", "figures"}};
  if (name == "gates")
    return {name, "go/no-go gates", nullptr, {"gates"}, {"capture", "train", "transfer", "figures", "report"}};
  std::string known;
  for (const auto& s : kStepOrder) known += (known.empty() ? "" : ", ") + s;
  fail("unknown step '{}' (steps: {})", name, known);
}

void StepRegistry::add(StepDefinition step) {
  StepDefinition defaults = default_step(step.name);
  if (step.config_keys.empty()) step.config_keys = defaults.config_keys;
  if (step.inputs_from.empty()) step.inputs_from = defaults.inputs_from;
  if (step.description.empty()) step.description = defaults.description;
  if (!step.run) fail("internal: step '{}' registered without a function", step.name);
  std::erase_if(steps_, [&](const StepDefinition& s) { return s.name == step.name; });
  steps_.push_back(std::move(step));
}

void StepRegistry::add(const std::string& name, StepFunction run, std::string description) {
  add(StepDefinition{name, std::move(description), std::move(run), {}, {}});
}

const StepDefinition* StepRegistry::find(const std::string& name) const {
  for (const auto& s : steps_)
    if (s.name == name) return &s;
  return nullptr;
}

std::vector<std::string> StepRegistry::names() const {
  std::vector<std::string> out;
  for (const auto& name : kStepOrder)
    if (find(name)) out.push_back(name);
  return out;
}

StepRegistry& global_steps() {
  static StepRegistry registry;
  return registry;
}

std::string step_config_sha256(const Experiment& exp, const StepDefinition& step) {
  json resolved = exp.to_json();
  json parts = json::object();
  parts["experiment.seed"] = exp.experiment.seed;
  for (const auto& key : step.config_keys) {
    std::string pointer = "/" + key;
    std::replace(pointer.begin(), pointer.end(), '.', '/');
    json::json_pointer ptr(pointer);
    if (!resolved.contains(ptr)) fail("internal: step '{}' depends on unknown config key '{}'", step.name, key);
    parts[key] = resolved.at(ptr);
  }
  return sha256_hex(parts.dump());
}

std::string step_inputs_sha256(const Manifest& manifest, const StepDefinition& step) {
  std::string listing;
  for (const auto& [path, record] : manifest.artifacts())
    if (std::find(step.inputs_from.begin(), step.inputs_from.end(), record.step) != step.inputs_from.end())
      listing += path + "  " + record.sha256 + "\n";
  return sha256_hex(listing);
}

}  // namespace strata::harness
