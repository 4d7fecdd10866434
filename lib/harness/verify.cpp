#include "harness/verify.hpp"

#include <set>

#include "core/error.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"

namespace strata::harness {
namespace fs = std::filesystem;
using nlohmann::json;

VerifyResult verify_run(const fs::path& run_dir) {
  VerifyResult result;
  result.run_dir = fs::absolute(run_dir).lexically_normal();
  if (!fs::exists(result.run_dir / "manifest.json"))
    fail("{} is not a run directory (no manifest.json)", result.run_dir.string());
  Manifest manifest = Manifest::load(result.run_dir / "manifest.json");
  for (const auto& [path, record] : manifest.artifacts()) {
    ++result.checked;
    fs::path file = result.run_dir / path;
    if (!fs::is_regular_file(file)) {
      result.missing.push_back(path);
      continue;
    }
    uint64_t size = fs::file_size(file);
    if (size != record.size) {
      result.mismatched.push_back({path, fmt::format("size {} bytes, recorded {}", size, record.size)});
      continue;
    }
    std::string sha = sha256_file(file);
    if (sha != record.sha256) result.mismatched.push_back({path, fmt::format("sha256 {}, recorded {}", sha, record.sha256)});
  }
  static const std::set<std::string> harness_files = {"manifest.json", "run.lock"};
  for (const auto& entry : fs::recursive_directory_iterator(result.run_dir)) {
    if (!entry.is_regular_file()) continue;
    std::string rel = fs::relative(entry.path(), result.run_dir).generic_string();
    if (harness_files.count(rel) || rel.rfind("logs/", 0) == 0) continue;
    if (!manifest.artifact(rel)) result.unrecorded.push_back(rel);
  }
  std::sort(result.unrecorded.begin(), result.unrecorded.end());
  for (const auto& [name, step] : manifest.steps()) {
    if (step.status != "complete") result.incomplete_steps.push_back(name + " (" + step.status + ")");
    // Every step writes at least one artifact, so a complete step that lists none means the manifest's
    // artifact table was emptied or cut: nothing would be checked, and verify must not call that clean.
    else if (manifest.artifacts_of(name).empty())
      result.inconsistent.push_back({name, "step is complete but the manifest records none of its artifacts"});
  }
  return result;
}

std::vector<ArtifactComparison> compare_artifacts(const Manifest& original, const Manifest& reproduced) {
  std::vector<ArtifactComparison> out;
  for (const auto& [path, record] : original.artifacts()) {
    const ArtifactRecord* other = reproduced.artifact(path);
    if (!other) out.push_back({path, "missing", record.sha256, ""});
    else out.push_back({path, other->sha256 == record.sha256 ? "identical" : "different", record.sha256, other->sha256});
  }
  for (const auto& [path, record] : reproduced.artifacts())
    if (!original.artifact(path)) out.push_back({path, "extra", "", record.sha256});
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.path < b.path; });
  return out;
}

bool ReproduceResult::identical() const {
  if (!run.ok() || !seed_differences.empty()) return false;
  return std::all_of(artifacts.begin(), artifacts.end(), [](const auto& a) { return a.status == "identical"; });
}

ReproduceResult reproduce_run(const fs::path& original_run, const fs::path& out, const StepRegistry& registry,
                              const std::string& command_line) {
  fs::path original_dir = fs::absolute(original_run).lexically_normal();
  if (!fs::exists(original_dir / "manifest.json"))
    fail("{} is not a run directory (no manifest.json)", original_dir.string());
  Manifest original = Manifest::load(original_dir / "manifest.json");
  const json& config = original.section("config");
  if (!config.is_object() || !fs::exists(original_dir / "config.toml"))
    fail("{} records no config (config.toml missing); it cannot be reproduced", original_dir.string());

  RunOptions options;
  options.experiment_file = original_dir / "config.toml";
  if (config.contains("base_dir")) options.base_dir = fs::path(config["base_dir"].get<std::string>());
  options.out_dir = out;
  options.command_line = command_line;
  const json& environment = original.section("environment");
  if (environment.is_object() && environment.contains("threads")) options.threads = environment["threads"].get<int>();
  for (const auto& name : registry.declared())
    if (const StepRecord* step = original.step(name); step && step->status == "complete") options.steps.push_back(name);
  if (options.steps.empty()) fail("{} has no completed step to reproduce", original_dir.string());
  log::info("Reproducing {} ({} threads; steps {})", original_dir.string(), options.threads.value_or(0),
            fmt::join(options.steps, ","));

  ReproduceResult result;
  result.run = run_experiment(options, registry);
  Manifest reproduced = Manifest::load(result.run.run_dir / "manifest.json");
  result.artifacts = compare_artifacts(original, reproduced);
  for (const auto& [key, seed] : original.seeds()) {
    auto it = reproduced.seeds().find(key);
    if (it == reproduced.seeds().end()) result.seed_differences.push_back(fmt::format("{}: original {}, not derived", key, seed));
    else if (it->second != seed) result.seed_differences.push_back(fmt::format("{}: original {}, reproduced {}", key, seed, it->second));
  }
  return result;
}

}  // namespace strata::harness
