// manifest.json: what a run directory holds and how it came to be.
//
//   format, strata_version, created_at, updated_at
//   git          {commit, dirty, source_dir, build_commit}       (of the source tree, read at run time)
//   environment  runtime::environment_json() + device + determinism settings
//   config       {file, source_path, base_dir, file_sha256, sha256, resolved}
//   seeds        {master, derived: {"<step>/<model>/<layer>": seed}}
//   steps        {name: {status, config_sha256, inputs_sha256, started_at, finished_at, seconds, error,
//                        failures[], summary{}}}
//   artifacts    {relative path: {size, sha256, step, inputs: {path: sha256}, recorded_at}}
//   invocations  [{started_at, command, steps, resumed, git_commit, threads}]
//
// The manifest is rewritten atomically (core/fs.hpp atomic_write) after every artifact and every step
// transition, so the file on disk never lists an artifact that is not complete under its final name.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace strata::harness {

inline constexpr const char* kManifestFormat = "strata-run-manifest/1";

struct ArtifactRecord {
  std::string path;  // relative to the run directory, '/'-separated
  uint64_t size = 0;
  std::string sha256;
  std::string step;
  std::map<std::string, std::string> inputs;  // input path (run-relative, or absolute outside the run) -> sha256
  std::string recorded_at;

  nlohmann::json to_json() const;
  static ArtifactRecord from_json(const std::string& path, const nlohmann::json& j);
};

struct StepRecord {
  std::string name;
  std::string status;  // "running" | "complete" | "failed"
  std::string config_sha256, inputs_sha256;
  std::string build;  // runtime::build_id() of the binary that ran the step
  std::string started_at, finished_at;
  double seconds = 0;
  std::string error;
  nlohmann::json failures = nlohmann::json::array();  // [{unit, message}]: parts that failed, others went on
  nlohmann::json summary = nlohmann::json::object();  // step-specific figures (tokens, pairs, wall time...)

  nlohmann::json to_json() const;
  static StepRecord from_json(const std::string& name, const nlohmann::json& j);
};

class Manifest {
 public:
  Manifest();

  static Manifest load(const std::filesystem::path& file);
  // Atomic: temp file + fsync + rename. Also stamps updated_at.
  void save(const std::filesystem::path& file);
  nlohmann::json to_json() const;
  static Manifest from_json(const nlohmann::json& j, const std::string& source_for_errors = "manifest");

  // Free-form header sections: "git", "environment", "config", plus anything a later version adds.
  nlohmann::json& section(const std::string& name) { return header_[name]; }
  const nlohmann::json& section(const std::string& name) const;
  bool has_section(const std::string& name) const { return header_.contains(name); }

  uint64_t master_seed() const { return master_seed_; }
  void set_master_seed(uint64_t seed) { master_seed_ = seed; }
  void record_seed(const std::string& key, uint64_t seed) { seeds_[key] = seed; }
  const std::map<std::string, uint64_t>& seeds() const { return seeds_; }

  void record_artifact(ArtifactRecord record);
  const ArtifactRecord* artifact(const std::string& path) const;
  const std::map<std::string, ArtifactRecord>& artifacts() const { return artifacts_; }
  std::vector<ArtifactRecord> artifacts_of(const std::string& step) const;  // sorted by path
  void remove_artifacts_of(const std::string& step);

  const StepRecord* step(const std::string& name) const;
  void set_step(StepRecord record);
  const std::map<std::string, StepRecord>& steps() const { return steps_; }

  void add_invocation(nlohmann::json invocation) { invocations_.push_back(std::move(invocation)); }
  const nlohmann::json& invocations() const { return invocations_; }

 private:
  nlohmann::json header_ = nlohmann::json::object();  // format, strata_version, created_at, git, environment, config...
  uint64_t master_seed_ = 0;
  std::map<std::string, uint64_t> seeds_;
  std::map<std::string, StepRecord> steps_;
  std::map<std::string, ArtifactRecord> artifacts_;
  nlohmann::json invocations_ = nlohmann::json::array();
};

// `text` with every byte that is not part of well-formed UTF-8 written as the four characters \xNN, so
// that error messages quoting arbitrary input can be stored in JSON.
std::string valid_utf8(std::string_view text);

// Whether `path` is a '/'-separated relative path that stays inside the directory it is joined to: no
// leading '/', no empty, "." or ".." part, no backslash or control character.
bool is_run_relative_path(std::string_view path);

// UTC, ISO 8601 with seconds: "2026-02-18T13:00:00Z".
std::string now_iso8601();

// The git state of the source tree strata was built from, read now: {commit, dirty, source_dir,
// build_commit}. commit is "unknown" when the tree is not a git checkout (e.g. a tarball).
nlohmann::json git_state();

}  // namespace strata::harness
