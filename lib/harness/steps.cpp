#include "harness/steps.hpp"

#include <algorithm>
#include <fstream>

#include "core/error.hpp"
#include "core/hash.hpp"
#include "harness/seeds.hpp"

namespace strata::harness {
namespace fs = std::filesystem;
using nlohmann::json;

StepContext::StepContext(const Experiment& experiment, RunDir& run_dir, const StepDefinition& definition, torch::Device dev)
    : run(run_dir), step(definition.name), device(dev), exp_(experiment), config_keys_(definition.config_keys) {}

void StepContext::require_declared(const std::string& section, const std::string& key) const {
  if (section.empty()) fail("internal: step '{}' reads a config member that is not a section of the experiment", step);
  for (const auto& declared : config_keys_)
    if (declared == section || (!key.empty() && declared == section + "." + key)) return;
  fail("internal: step '{}' reads config '{}' but its row in the step table does not declare it (it declares: {}); "
       "declare it, or --resume would call the step up to date after that part changed",
       step, key.empty() ? section : section + "." + key, fmt::join(config_keys_, ", "));
}

uint64_t StepContext::seed_for(std::string_view model, int64_t layer) {
  uint64_t seed = derive_seed(exp_.experiment.seed, step, model, layer);
  std::lock_guard lock(run.mutex());
  run.manifest().record_seed(seed_key(step, model, layer), seed);
  run.save_manifest();
  return seed;
}

uint64_t StepContext::shared_seed(std::string_view purpose) {
  uint64_t seed = derive_seed(exp_.experiment.seed, purpose);
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

void StepRegistry::add(StepDefinition step) {
  if (step.name.empty()) fail("internal: a step table row without a name");
  auto existing = std::find_if(steps_.begin(), steps_.end(), [&](const StepDefinition& s) { return s.name == step.name; });
  for (const auto& input : step.inputs_from) {
    auto producer = std::find_if(steps_.begin(), existing, [&](const StepDefinition& s) { return s.name == input; });
    if (producer == existing)
      fail("internal: step '{}' reads the artifacts of '{}', which is not an earlier step of the table", step.name, input);
  }
  if (existing != steps_.end()) *existing = std::move(step);
  else steps_.push_back(std::move(step));
}

const StepDefinition* StepRegistry::find(const std::string& name) const {
  for (const auto& s : steps_)
    if (s.name == name) return &s;
  return nullptr;
}

std::vector<std::string> StepRegistry::declared() const {
  std::vector<std::string> out;
  for (const auto& s : steps_) out.push_back(s.name);
  return out;
}

std::vector<std::string> StepRegistry::names() const {
  std::vector<std::string> out;
  for (const auto& s : steps_)
    if (s.run) out.push_back(s.name);
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
