#include "harness/runner.hpp"

#include <chrono>
#include <ctime>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"
#include "core/runtime.hpp"

namespace strata::harness {
namespace fs = std::filesystem;
using nlohmann::json;

std::vector<std::string> parse_step_list(const std::string& csv, const StepRegistry& registry) {
  std::vector<std::string> out;
  std::stringstream in(csv);
  std::string name;
  while (std::getline(in, name, ',')) {
    name.erase(0, name.find_first_not_of(" \t"));
    name.erase(name.find_last_not_of(" \t") + 1);
    if (name.empty()) continue;
    if (!registry.find(name)) fail("unknown step '{}' (steps: {})", name, fmt::join(registry.declared(), ", "));
    if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
  }
  if (out.empty()) fail("--steps names no step");
  return out;
}

namespace {

// Detaches the run's log file however the run ends.
struct LogFileGuard {
  explicit LogFileGuard(const fs::path& file) { log::attach_file(file); }
  ~LogFileGuard() { log::detach_file(); }
};

}  // namespace

// Declared in runner.hpp: the executors (harness/executor.hpp) name a run directory before preparing it.
fs::path default_run_dir(const Experiment& exp) {
  std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char stamp[32];
  std::strftime(stamp, sizeof stamp, "%Y%m%d-%H%M%S", &utc);
  const fs::path root(exp.experiment.output_root);
  // The nearest existing ancestor must be a directory, or creating the run gives a bare filesystem error.
  fs::path existing = fs::absolute(root).lexically_normal();
  std::error_code ec;
  while (!fs::exists(existing, ec) && existing.has_relative_path()) existing = existing.parent_path();
  if (!fs::is_directory(existing, ec))
    fail("{}: [experiment] output_root = '{}': {} is a file, not a directory; point output_root at a directory "
         "(it is created if missing)",
         exp.source_file.string(), exp.experiment.output_root, existing.string());
  fs::path base = root / (exp.experiment.name + "-" + stamp);
  fs::path dir = base;
  for (int i = 2; fs::exists(dir); ++i) dir = base.string() + "-" + std::to_string(i);
  return dir;
}

namespace {

// Every artifact of the step still on disk with its recorded size and hash.
// The step's artifacts are on disk as recorded, and the inputs they were made from outside the run (a
// checkpoint, a tokenizer) still hash as recorded: a retrained checkpoint must not pass for up to date.
bool artifacts_intact(RunDir& run, const std::string& step) {
  for (const auto& record : run.manifest().artifacts_of(step)) {
    fs::path file = run.path(record.path);
    if (!fs::is_regular_file(file) || fs::file_size(file) != record.size) return false;
    if (sha256_file(file) != record.sha256) return false;
    for (const auto& [input, sha] : record.inputs) {
      if (!fs::path(input).is_absolute()) continue;  // run artifacts: covered by the step's inputs hash
      if (!fs::exists(input)) {
        log::info("Step {}: input {} no longer exists", step, input);
        return false;
      }
      if (run.input_sha256(input) != sha) {  // cached per file: a checkpoint is read once
        log::info("Step {}: input {} changed since the step ran", step, input);
        return false;
      }
    }
  }
  return true;
}

void write_file(const fs::path& file, std::string_view text) {
  std::ofstream out(file, std::ios::binary);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  out.flush();
  if (!out) fail("cannot write {}", file.string());
}

// Copies the experiment file and writes the resolved config into the run, recorded as step "config".
void record_config(RunDir& run, const Experiment& exp) {
  std::string text = read_text_file(exp.source_file);
  run.write_artifact("config.toml", "config", [&](const fs::path& tmp) { write_file(tmp, text); });
  json resolved = exp.to_json();
  run.write_artifact("config.resolved.json", "config", [&](const fs::path& tmp) { write_file(tmp, resolved.dump(2) + "\n"); });
  std::lock_guard lock(run.mutex());
  Manifest& m = run.manifest();
  std::string previous = m.section("config").is_object() ? m.section("config").value("sha256", "") : "";
  if (!previous.empty() && previous != exp.sha256())
    log::info("The experiment config changed since this run was last written; steps that depend on the changed parts re-run");
  m.section("config") = {{"file", "config.toml"},
                         {"source_path", exp.source_file.string()},
                         {"base_dir", exp.base_dir.string()},
                         {"file_sha256", sha256_hex(text)},
                         {"sha256", exp.sha256()},
                         {"resolved", resolved}};
  m.set_master_seed(exp.experiment.seed);
  run.save_manifest();
}

}  // namespace

RunSummary run_experiment(const RunOptions& options, const StepRegistry& registry) {
  const bool resuming = !options.resume_dir.empty();
  if (resuming && !options.out_dir.empty()) fail("--resume and --out are alternatives: a resumed run stays in its directory");

  std::unique_ptr<RunDir> run;
  Experiment exp;
  if (resuming) {
    run = RunDir::open(options.resume_dir);
    if (options.experiment_file.empty()) {
      const json& config = run->manifest().section("config");
      std::optional<fs::path> base;
      if (config.is_object() && config.contains("base_dir")) base = config["base_dir"].get<std::string>();
      exp = load_experiment(run->path("config.toml"), base);
    } else {
      exp = load_experiment(options.experiment_file, options.base_dir);
    }
  } else {
    if (options.experiment_file.empty()) fail("no experiment file given");
    exp = load_experiment(options.experiment_file, options.base_dir);
    run = RunDir::create(options.out_dir.empty() ? default_run_dir(exp) : options.out_dir);
  }
  LogFileGuard log_guard(run->log_path());

  if (options.threads) runtime::set_threads(*options.threads);
  else if (exp.experiment.threads > 0) runtime::set_threads(exp.experiment.threads);
  runtime::apply_determinism();
  torch::Device device = runtime::parse_device(exp.experiment.device);

  for (const auto& name : options.steps)
    if (!registry.find(name)) fail("unknown step '{}' (steps: {})", name, fmt::join(registry.declared(), ", "));
  std::vector<std::string> selected = options.steps.empty() ? registry.declared() : options.steps;
  const std::string build = runtime::build_id();
  json git = git_state();
  {
    std::lock_guard lock(run->mutex());
    Manifest& m = run->manifest();
    m.section("git") = git;
    json environment = runtime::environment_json();
    environment["device"] = device.str();
    environment["determinism"] = runtime::determinism_json();
    environment["determinism"]["threads"] = runtime::threads();
    environment["kernels"] = runtime::to_string(runtime::kernel_path(device));
    m.section("environment") = environment;
  }
  record_config(*run, exp);
  log::info("{} run {} of experiment '{}' ({} threads, device {}, commit {}{})", resuming ? "Resuming" : "Starting",
            run->root().string(), exp.experiment.name, runtime::threads(), device.str(),
            git.value("commit", "unknown").substr(0, 12), git.value("dirty", false) == true ? ", dirty" : "");

  json invocation = {{"started_at", now_iso8601()}, {"command", options.command_line}, {"steps", selected},
                     {"resumed", resuming}, {"git_commit", git.value("commit", "unknown")}, {"git_dirty", git["dirty"]},
                     {"threads", runtime::threads()}, {"device", device.str()}};
  if (options.prepare_only) invocation["prepare_only"] = true;  // an executor runs the steps as units

  RunSummary summary;
  summary.run_dir = run->root();
  for (const StepDefinition& row : registry.steps()) {
    const std::string& name = row.name;
    if (options.prepare_only) break;
    if (std::find(selected.begin(), selected.end(), name) == selected.end()) continue;
    const StepDefinition* step = &row;
    if (!step->run) {
      log::info("Step {}: not available yet in this build, skipped", name);
      summary.unavailable.push_back(name);
      continue;
    }
    std::string config_sha = step_config_sha256(exp, *step);
    std::string inputs_sha;
    {
      std::lock_guard lock(run->mutex());
      inputs_sha = step_inputs_sha256(run->manifest(), *step);
      const StepRecord* previous = run->manifest().step(name);
      // A step made by another build re-runs: every artifact of a run comes from one version of the code.
      const bool same_build = previous && previous->build == build;
      if (resuming && previous && previous->status == "complete" && !same_build)
        log::info("Step {}: made by build {}, this is build {}: running it again", name,
                  previous->build.empty() ? "unknown" : previous->build, build);
      if (resuming && previous && previous->status == "complete" && same_build &&
          previous->config_sha256 == config_sha && previous->inputs_sha256 == inputs_sha &&
          artifacts_intact(*run, name)) {
        log::info("Step {}: up to date (build, config and inputs unchanged), skipped", name);
        summary.skipped.push_back(name);
        continue;
      }
      run->manifest().remove_artifacts_of(name);
      run->manifest().set_step(StepRecord{.name = name, .status = "running", .config_sha256 = config_sha,
                                          .inputs_sha256 = inputs_sha, .build = build, .started_at = now_iso8601()});
      run->save_manifest();
    }
    log::info("Step {}: {}", name, step->description);
    auto start = std::chrono::steady_clock::now();
    std::string error;
    try {
      StepContext context(exp, *run, *step, device);
      step->run(context);
    } catch (const c10::Error& e) {
      error = std::string("LibTorch error: ") + e.what_without_backtrace();
    } catch (const std::exception& e) {
      error = e.what();
    }
    double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    {
      std::lock_guard lock(run->mutex());
      StepRecord record = *run->manifest().step(name);
      record.status = error.empty() ? "complete" : "failed";
      record.finished_at = now_iso8601();
      record.seconds = seconds;
      record.error = error;
      run->manifest().set_step(std::move(record));
      run->save_manifest();
    }
    if (!error.empty()) {
      log::warn("Step {} failed after {:.1f} s: {}", name, seconds, error);
      summary.failed_step = name;
      summary.error = error;
      break;
    }
    log::info("Step {}: done in {:.1f} s", name, seconds);
    summary.completed.push_back(name);
  }

  invocation["finished_at"] = now_iso8601();
  invocation["outcome"] = summary.ok() ? "ok" : "failed at step " + summary.failed_step;
  std::lock_guard lock(run->mutex());
  run->manifest().add_invocation(std::move(invocation));
  run->save_manifest();
  return summary;
}

}  // namespace strata::harness
