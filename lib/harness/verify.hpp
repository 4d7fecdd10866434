// `strata verify` and `strata reproduce`: is a run directory still what its manifest says, and does
// re-executing its config with its seeds give the same bytes.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "harness/manifest.hpp"
#include "harness/runner.hpp"

namespace strata::harness {

struct VerifyProblem {
  std::string path;
  std::string problem;  // "missing" | "size X, recorded Y" | "sha256 X, recorded Y"
};

struct VerifyResult {
  std::filesystem::path run_dir;
  size_t checked = 0;                       // artifacts in the manifest
  std::vector<VerifyProblem> mismatched;    // present but different
  std::vector<std::string> missing;         // recorded but absent
  std::vector<std::string> unrecorded;      // files in the run the manifest does not list (information only)
  std::vector<std::string> incomplete_steps;  // steps whose last status is not "complete" (information only)
  std::vector<VerifyProblem> inconsistent;  // the manifest contradicts itself (path = the step)
  bool ok() const { return mismatched.empty() && missing.empty() && inconsistent.empty(); }
};

// Re-hashes every artifact recorded in RUN_DIR/manifest.json. Read-only; takes no lock. A manifest that
// records a path outside the run directory is refused (strata::Error naming the path), never followed.
VerifyResult verify_run(const std::filesystem::path& run_dir);

struct ArtifactComparison {
  std::string path;
  std::string status;  // "identical" | "different" | "missing" (not reproduced) | "extra" (only in the new run)
  std::string original_sha256, reproduced_sha256;
};

// Compares the recorded hashes of two manifests, artifact by artifact (sorted by path).
std::vector<ArtifactComparison> compare_artifacts(const Manifest& original, const Manifest& reproduced);

struct ReproduceResult {
  RunSummary run;
  std::vector<ArtifactComparison> artifacts;
  std::vector<std::string> seed_differences;  // "<key>: original X, reproduced Y" (or absent)
  bool identical() const;
};

// Re-executes the original run's config (its copied config.toml, paths resolved as when it ran), with
// the same master seed and therefore the same derived seeds, the recorded thread count, and the steps
// that completed there, into a new run directory `out`; then compares every artifact.
ReproduceResult reproduce_run(const std::filesystem::path& original_run, const std::filesystem::path& out,
                              const StepRegistry& registry = global_steps(), const std::string& command_line = "");

}  // namespace strata::harness
