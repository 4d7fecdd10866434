#include "harness/executor.hpp"

#include <spawn.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdlib>
#include <sstream>
#include <thread>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/log.hpp"
#include "core/runtime.hpp"

extern char** environ;

namespace strata::harness {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kRecordFormat = "strata-unit-record/1";

std::string host_name() {
  char buffer[256] = {};
  if (::gethostname(buffer, sizeof buffer - 1) != 0) return "unknown";
  return buffer;
}

const StepDefinition& stage_step(const StepRegistry& registry, const std::string& stage) {
  const StepDefinition* step = registry.find(stage);
  if (!step) fail("internal: step '{}' is not registered in this build", stage);
  return *step;
}

bool is_stage(const std::string& stage) {
  return std::find(kUnitStages.begin(), kUnitStages.end(), stage) != kUnitStages.end();
}

// Every step a unit or the reduce records: a unit's view holds none of them from manifest.json (the unit
// records are the source of truth).
std::vector<std::string> unit_and_reduce_steps() {
  std::vector<std::string> out(kUnitStages.begin(), kUnitStages.end());
  out.insert(out.end(), kReduceSteps.begin(), kReduceSteps.end());
  return out;
}

// The step a derived seed was drawn for: "train/gpt2/1" -> "train".
std::string seed_step(const std::string& key) { return key.substr(0, key.find('/')); }

// Removes what the given steps recorded (artifacts, seeds, step records; capture's cells) from a manifest.
void drop_steps(json& m, const std::vector<std::string>& steps) {
  const auto in = [&](const std::string& s) { return std::find(steps.begin(), steps.end(), s) != steps.end(); };
  for (auto it = m["artifacts"].begin(); it != m["artifacts"].end();) it = in(it.value().value("step", "")) ? m["artifacts"].erase(it) : std::next(it);
  json& derived = m["seeds"]["derived"];
  for (auto it = derived.begin(); it != derived.end();) it = in(seed_step(it.key())) ? derived.erase(it) : std::next(it);
  for (const auto& s : steps) m["steps"].erase(s);
  if (in("capture")) m.erase("cells");
}

// Adds what one unit recorded to a manifest (as JSON).
void merge_record(json& m, const json& record) {
  // Named copies: iterating items() of a temporary would outlive it.
  const json artifacts = record.value("artifacts", json::object()), seeds = record.value("seeds", json::object());
  for (const auto& [path, artifact] : artifacts.items()) m["artifacts"][path] = artifact;
  for (const auto& [key, seed] : seeds.items()) m["seeds"]["derived"][key] = seed;
  if (record.contains("cells"))
    for (const auto& cell : record["cells"]) m["cells"].push_back(cell);
  // What a train unit added to the captured cells' entries (the SAE's source and format).
  if (record.contains("cell_sae") && m.contains("cells")) {
    const json& sae = record.at("cell_sae");
    for (auto& cell : m["cells"])
      if (auto it = sae.find(cell.value("name", "")); it != sae.end()) cell["sae"] = *it;
  }
}

// Every unit record of a stage, which must all be done: the inputs of the next stage or of the reduce.
std::vector<json> done_records(const fs::path& run_dir, const Experiment& exp, const std::string& stage,
                               const StepRegistry& registry) {
  std::vector<json> out;
  for (const auto& unit : plan_units(exp, stage, registry)) {
    auto record = read_unit_record(run_dir, stage, unit.index);
    if (!record || !record_is_done(*record, exp, registry) || record->value("name", "") != unit.name)
      fail("unit {}:{} ({}) of run {} is not done ({}); continue the run with: strata run --resume {} --executor ...",
           stage, unit.index, unit.name, run_dir.string(),
           !record                                    ? "no record"
           : record->value("name", "") != unit.name      ? "its record is of unit " + record->value("name", "?")
           : record->value("status", "?") == "complete" ? "made by another build or config"
                                                        : "status " + record->value("status", "?"),
           run_dir.string());
    out.push_back(std::move(*record));
  }
  return out;
}

// The manifest a unit of `stage` works on: manifest.json without what the steps recorded, plus the records
// of every earlier stage's units.
Manifest unit_view_manifest(const fs::path& run_dir, const Experiment& exp, const std::string& stage,
                            const StepRegistry& registry) {
  json m = Manifest::load(run_dir / "manifest.json").to_json();
  drop_steps(m, unit_and_reduce_steps());
  for (const auto& earlier : kUnitStages) {
    if (earlier == stage) break;
    for (const auto& record : done_records(run_dir, exp, earlier, registry)) merge_record(m, record);
  }
  return Manifest::from_json(m, (run_dir / "manifest.json").string());
}

void write_record(const fs::path& run_dir, const std::string& stage, int index, const json& record) {
  fs::path file = unit_record_path(run_dir, stage, index);
  fs::create_directories(file.parent_path());
  atomic_write_text(file, record.dump(2) + "\n");
}

json slurm_ids() {
  json out = json::object();
  for (const char* name : {"SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST", "SLURM_RESTART_COUNT"})
    if (const char* value = std::getenv(name)) out[name] = value;
  return out;
}

json record_start(const std::string& stage, int index, const std::string& name, const std::string& config_sha256) {
  return {{"format", kRecordFormat}, {"stage", stage}, {"index", index}, {"name", name}, {"status", "running"},
          {"host", host_name()}, {"pid", static_cast<int64_t>(::getpid())}, {"started_at", now_iso8601()},
          {"build", runtime::build_id()}, {"config_sha256", config_sha256}, {"slurm", slurm_ids()}};
}

// STRATA_FAIL_UNIT="train:1,capture:0": the units a test makes fail.
bool injected_failure(const std::string& stage, int index) {
  const char* spec = std::getenv("STRATA_FAIL_UNIT");
  if (!spec) return false;
  std::stringstream in(spec);
  std::string item;
  while (std::getline(in, item, ','))
    if (item == stage + ":" + std::to_string(index)) return true;
  return false;
}

void apply_threads(const Experiment& exp, std::optional<int> threads) {
  if (threads) runtime::set_threads(*threads);
  else if (exp.experiment.threads > 0) runtime::set_threads(exp.experiment.threads);
  runtime::apply_determinism();
}

// The run lock, waiting while another process (e.g. the submitter recording job ids) holds it briefly.
std::unique_ptr<RunDir> open_run_waiting(const fs::path& run_dir) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (true) {
    try {
      return RunDir::open(run_dir);
    } catch (const Error&) {
      if (std::chrono::steady_clock::now() > deadline) throw;
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
  }
}

// Sums numbers, merges objects and keeps the last of anything else: the step summary of several units.
void merge_summary(json& into, const json& part) {
  for (const auto& [key, value] : part.items()) {
    if (!into.contains(key)) into[key] = value;
    else if (value.is_number_integer() && into[key].is_number_integer()) into[key] = into[key].get<int64_t>() + value.get<int64_t>();
    else if (value.is_number() && into[key].is_number()) into[key] = into[key].get<double>() + value.get<double>();
    else if (value.is_object() && into[key].is_object()) into[key].update(value);
    else into[key] = value;
  }
}

}  // namespace

int transfer_block(const Experiment& exp) {
  // Validated by parse_executor_table (executor_slurm.cpp) when the run starts.
  if (!exp.executor.is_object() || !exp.executor.contains("transfer_block")) return 0;
  const json& value = exp.executor["transfer_block"];
  if (!value.is_number_integer() || value.get<int64_t>() < 0)
    fail("{}: 'executor.transfer_block' must be an integer >= 0, got {}", exp.source_file.string(), value.dump());
  return value.get<int>();
}

std::vector<Unit> plan_units(const Experiment& exp, const std::string& stage, const StepRegistry& registry) {
  std::vector<Unit> units;
  const auto add = [&](std::string name, UnitSelector select) {
    units.push_back({stage, static_cast<int>(units.size()), std::move(name), std::move(select)});
  };
  const auto slots_of = [](const ModelConfig& model) { return model.layers.empty() ? model.depths.size() : model.layers.size(); };
  const auto cell_label = [](const ModelConfig& model, size_t slot) {
    return model.layers.empty() ? fmt::format("{}:depth{}", model.name, model.depths[slot])
                                : fmt::format("{}:layer{}", model.name, model.layers[slot]);
  };
  if (stage == kReduceStage) {
    add("figures,report,gates", {});
    return units;
  }
  if (!is_stage(stage)) fail("'{}' is not a stage of units (stages: capture, train, transfer, reduce)", stage);
  // How the step splits is declared in the step table (StepDefinition::units).
  switch (stage_step(registry, stage).units) {
    case StepUnits::per_model:
      for (const auto& model : exp.models) add(model.name, {.model = model.name});
      break;
    case StepUnits::per_cell:
      for (const auto& model : exp.models)
        for (size_t slot = 0; slot < slots_of(model); ++slot)
          add(cell_label(model, slot), {.model = model.name, .slot = static_cast<int>(slot)});
      if (exp.transfer.ceiling)
        for (const auto& model : exp.models) add(model.name + ":ceiling", {.model = model.name, .ceiling = true});
      break;
    case StepUnits::source_cells: {
      // Blocks of `transfer_block` source cells in experiment order; by default one block per model, which
      // shares each model pair's per-cell work (encodings, Grams) within one unit.
      const int block = transfer_block(exp);
      std::vector<std::pair<std::string, int>> current;
      std::vector<std::string> labels;
      const auto flush = [&] {
        if (current.empty()) return;
        UnitSelector select{.sources = current};
        select.scratch = fmt::format("units/{}/{}.partial.json", stage, units.size());
        add(labels.size() == 1 ? labels[0] : labels.front() + ".." + labels.back(), std::move(select));
        current.clear();
        labels.clear();
      };
      for (const auto& model : exp.models) {
        for (size_t slot = 0; slot < slots_of(model); ++slot) {
          current.emplace_back(model.name, static_cast<int>(slot));
          labels.push_back(cell_label(model, slot));
          if (block > 0 && static_cast<int>(current.size()) == block) flush();
        }
        if (block == 0) flush();
      }
      flush();
      break;
    }
    case StepUnits::whole_run:
      add("all", {});
      break;
  }
  return units;
}

fs::path unit_record_path(const fs::path& run_dir, const std::string& stage, int index) {
  return run_dir / "units" / stage / (std::to_string(index) + ".json");
}

std::optional<json> read_unit_record(const fs::path& run_dir, const std::string& stage, int index) {
  fs::path file = unit_record_path(run_dir, stage, index);
  if (!fs::exists(file)) return std::nullopt;
  try {
    json record = json::parse(read_text_file(file));
    if (record.value("format", "") == kRecordFormat) return record;
    log::warn("{} is not a unit record; the unit runs again", file.string());
  } catch (const std::exception& e) {
    log::warn("{} is unreadable ({}); the unit runs again", file.string(), e.what());
  }
  return std::nullopt;
}

bool record_is_done(const json& record, const Experiment& exp, const StepRegistry& registry) {
  const std::string stage = record.value("stage", "");
  if (record.value("status", "") != "complete" || record.value("build", "") != runtime::build_id()) return false;
  if (stage == kReduceStage) return true;
  return record.value("config_sha256", "") == step_config_sha256(exp, stage_step(registry, stage));
}

Experiment load_run_experiment(const fs::path& run_dir) {
  fs::path manifest_file = run_dir / "manifest.json";
  if (!fs::exists(manifest_file)) fail("{} is not a run directory (no manifest.json)", run_dir.string());
  const json config = Manifest::load(manifest_file).section("config");
  std::optional<fs::path> base;
  if (config.is_object() && config.contains("base_dir")) base = config["base_dir"].get<std::string>();
  return load_experiment(run_dir / "config.toml", base);
}

int run_unit(const fs::path& run_dir_arg, const std::string& stage, int index, const StepRegistry& registry,
             std::optional<int> threads) {
  const fs::path run_dir = fs::absolute(run_dir_arg).lexically_normal();
  if (!is_stage(stage)) fail("--step {}: not a stage of units (capture, train, transfer; the reduce is --reduce)", stage);
  const Experiment exp = load_run_experiment(run_dir);
  const std::vector<Unit> units = plan_units(exp, stage, registry);
  if (index < 0 || index >= static_cast<int>(units.size()))
    fail("--index {}: stage {} of run {} has {} units (0..{})", index, stage, run_dir.string(), units.size(), units.size() - 1);
  const Unit& unit = units[static_cast<size_t>(index)];
  const StepDefinition& step = stage_step(registry, stage);

  fs::create_directories(unit_record_path(run_dir, stage, index).parent_path());
  RunLock lock(run_dir / "units" / stage / (std::to_string(index) + ".lock"));  // one process per unit
  json record = record_start(stage, index, unit.name, step_config_sha256(exp, step));
  write_record(run_dir, stage, index, record);
  log::info("Unit {}:{} ({}) of run {}", stage, index, unit.name, run_dir.string());

  auto start = std::chrono::steady_clock::now();
  std::string error;
  try {
    if (injected_failure(stage, index)) fail("injected failure (STRATA_FAIL_UNIT names {}:{})", stage, index);
    apply_threads(exp, threads);
    torch::Device device = runtime::parse_device(exp.experiment.device);
    auto view = RunDir::unit_view(run_dir, unit_view_manifest(run_dir, exp, stage, registry));
    StepContext context(exp, *view, step, device);
    context.unit = unit.select;
    if (!unit.select.scratch.empty()) fs::remove(run_dir / unit.select.scratch);  // never a stale one
    step.run(context);
    if (!unit.select.scratch.empty()) {
      if (!fs::exists(run_dir / unit.select.scratch))
        fail("internal: unit {}:{} did not write its scratch file {}", stage, index, unit.select.scratch);
      record["scratch"] = unit.select.scratch;
    }

    const Manifest& m = view->manifest();
    json artifacts = json::object();
    for (const auto& artifact : m.artifacts_of(stage)) artifacts[artifact.path] = artifact.to_json();
    json seeds = json::object();
    for (const auto& [key, seed] : m.seeds())
      if (seed_step(key) == stage) seeds[key] = seed;
    record["artifacts"] = artifacts;
    record["seeds"] = seeds;
    if (stage == "capture") record["cells"] = m.section("cells").is_array() ? m.section("cells") : json::array();
    if (stage == "train" && m.section("cells").is_array()) {
      // The capture records' cells carry no "sae": any there now was set by this unit.
      json cell_sae = json::object();
      for (const auto& cell : m.section("cells"))
        if (cell.contains("sae")) cell_sae[cell.value("name", "")] = cell["sae"];
      record["cell_sae"] = cell_sae;
    }
    if (const StepRecord* s = m.step(stage)) {
      record["failures"] = s->failures;
      record["summary"] = s->summary;
    }
  } catch (const c10::Error& e) {
    error = std::string("LibTorch error: ") + e.what_without_backtrace();
  } catch (const std::exception& e) {
    error = e.what();
  }
  record["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  record["finished_at"] = now_iso8601();
  record["status"] = error.empty() ? "complete" : "failed";
  record["exit_status"] = error.empty() ? 0 : 1;
  if (!error.empty()) record["error"] = error;
  write_record(run_dir, stage, index, record);
  if (!error.empty()) {
    log::warn("Unit {}:{} ({}) failed: {}", stage, index, unit.name, error);
    return 1;
  }
  log::info("Unit {}:{} ({}) done in {:.1f} s", stage, index, unit.name, record["seconds"].get<double>());
  return 0;
}

RunSummary reduce_run(const fs::path& run_dir_arg, const StepRegistry& registry, std::optional<int> threads,
                      const std::string& command_line) {
  const fs::path run_dir = fs::absolute(run_dir_arg).lexically_normal();
  const Experiment exp = load_run_experiment(run_dir);
  fs::create_directories(unit_record_path(run_dir, kReduceStage, 0).parent_path());
  RunLock reduce_lock(run_dir / "units" / kReduceStage / "0.lock");
  json record = record_start(kReduceStage, 0, plan_units(exp, kReduceStage)[0].name, "");
  write_record(run_dir, kReduceStage, 0, record);
  auto start = std::chrono::steady_clock::now();

  RunSummary summary;
  try {
    {
      auto run = open_run_waiting(run_dir);
      std::lock_guard guard(run->mutex());
      json m = run->manifest().to_json();
      std::vector<std::string> stages(kUnitStages.begin(), kUnitStages.end());
      drop_steps(m, stages);
      std::map<std::string, std::vector<json>> records;
      for (const auto& stage : kUnitStages) {
        records[stage] = done_records(run_dir, exp, stage, registry);
        for (const auto& r : records[stage]) merge_record(m, r);
      }
      Manifest merged = Manifest::from_json(m, run->manifest_path().string());
      json units = json::object();
      const std::string build = runtime::build_id();
      for (const auto& stage : kUnitStages) {
        const StepDefinition& step = stage_step(registry, stage);
        StepRecord s{.name = stage, .status = "complete", .config_sha256 = step_config_sha256(exp, step),
                     .inputs_sha256 = step_inputs_sha256(merged, step), .build = build};
        json summary_of_stage = json::object();
        for (const auto& r : records[stage]) {
          const std::string started = r.value("started_at", ""), finished = r.value("finished_at", "");
          if (s.started_at.empty() || started < s.started_at) s.started_at = started;
          if (finished > s.finished_at) s.finished_at = finished;
          s.seconds += r.value("seconds", 0.0);  // unit-seconds: the units may have run at the same time
          for (const auto& failure : r.value("failures", json::array())) s.failures.push_back(failure);
          merge_summary(summary_of_stage, r.value("summary", json::object()));
          units[stage].push_back({{"index", r.value("index", -1)}, {"name", r.value("name", "")},
                                  {"host", r.value("host", "")}, {"seconds", r.value("seconds", 0.0)},
                                  {"started_at", started}, {"exit_status", r.value("exit_status", -1)},
                                  {"slurm", r.value("slurm", json::object())}});
        }
        summary_of_stage["units"] = records[stage].size();
        s.summary = summary_of_stage;
        if (step.merge_units) s.status = "running";  // complete once its units' scratch files are merged
        merged.set_step(std::move(s));
      }
      json executor = run->manifest().section("executor").is_object() ? run->manifest().section("executor") : json::object();
      executor["units"] = units;
      merged.section("executor") = executor;
      run->manifest() = std::move(merged);
      run->save_manifest();
      // Steps whose units wrote scratch files (transfer blocks): their artifacts are made here, once.
      for (const auto& stage : kUnitStages) {
        const StepDefinition& step = stage_step(registry, stage);
        if (!step.merge_units) continue;
        std::vector<std::string> scratch;
        for (const auto& r : records[stage])
          if (r.contains("scratch")) scratch.push_back(r["scratch"].get<std::string>());
        apply_threads(exp, threads);
        log::info("Merging the {} unit(s) of stage {}", scratch.size(), stage);
        StepContext context(exp, *run, step, runtime::parse_device(exp.experiment.device));
        step.merge_units(context, scratch);
        StepRecord done = *run->manifest().step(stage);
        done.status = "complete";
        run->manifest().set_step(std::move(done));
        run->save_manifest();
      }
    }
    std::vector<std::string> steps;
    for (const auto& name : kReduceSteps)
      if (registry.find(name)) steps.push_back(name);
    summary = run_experiment({.steps = steps, .resume_dir = run_dir, .threads = threads, .command_line = command_line},
                             registry);
  } catch (const std::exception& e) {
    summary.run_dir = run_dir;
    summary.failed_step = kReduceStage;
    summary.error = e.what();
  }
  record["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  record["finished_at"] = now_iso8601();
  record["status"] = summary.ok() ? "complete" : "failed";
  record["exit_status"] = summary.ok() ? 0 : 1;
  if (!summary.ok()) record["error"] = summary.failed_step + ": " + summary.error;
  if (fs::exists(run_dir / "gates" / "gates.json")) {
    json gates = json::parse(read_text_file(run_dir / "gates" / "gates.json"));
    record["verdict"] = gates.value("must_pass_ok", false) ? "GO" : "NO-GO";
  }
  write_record(run_dir, kReduceStage, 0, record);
  return summary;
}

std::map<std::string, std::vector<int>> pending_units(const fs::path& run_dir, const Experiment& exp,
                                                      const StepRegistry& registry) {
  std::map<std::string, std::vector<int>> out;
  bool earlier_pending = false;
  for (const auto& stage : kUnitStages) {
    for (const auto& unit : plan_units(exp, stage, registry)) {
      auto record = read_unit_record(run_dir, stage, unit.index);
      // A record of another unit plan (e.g. another transfer_block) under the same index does not count.
      if (earlier_pending || !record || !record_is_done(*record, exp, registry) || record->value("name", "") != unit.name)
        out[stage].push_back(unit.index);
    }
    earlier_pending = earlier_pending || !out[stage].empty();
  }
  auto reduce = read_unit_record(run_dir, kReduceStage, 0);
  if (earlier_pending || !reduce || !record_is_done(*reduce, exp, registry)) out[kReduceStage].push_back(0);
  return out;
}

fs::path self_executable() { return fs::read_symlink("/proc/self/exe"); }

namespace {

// Starts `args` with stdout and stderr appended to `log_file` (empty: inherited); returns the pid.
pid_t spawn(const std::vector<std::string>& args, const fs::path& log_file) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (!log_file.empty()) {
    posix_spawn_file_actions_addopen(&actions, 1, log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
  }
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) fail("cannot start {}: {}", args[0], std::strerror(rc));
  return pid;
}

int wait_exit_status(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) fail("waitpid: {}", std::strerror(errno));
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

int run_local(const fs::path& run_dir, const Experiment& exp, const ExecutorOptions& options,
              const StepRegistry& registry) {
  const fs::path binary = options.strata_binary.empty() ? self_executable() : options.strata_binary;
  const std::map<std::string, std::vector<int>> pending = pending_units(run_dir, exp, registry);
  const fs::path logs = run_dir / "executor" / "logs";
  fs::create_directories(logs);
  std::vector<std::string> thread_args;
  if (options.threads) thread_args = {"--threads", std::to_string(*options.threads)};
  const int jobs = std::max(1, options.jobs);

  for (const auto& stage : kUnitStages) {
    auto it = pending.find(stage);
    if (it == pending.end() || it->second.empty()) {
      log::info("Stage {}: every unit is done", stage);
      continue;
    }
    const std::vector<Unit> units = plan_units(exp, stage, registry);
    log::info("Stage {}: {} unit(s), {} at a time", stage, it->second.size(), jobs);
    std::map<pid_t, std::pair<int, int>> running;  // pid -> (index, attempt)
    std::vector<int> queue(it->second.rbegin(), it->second.rend());
    std::vector<int> failed;
    const auto start = [&](int index, int attempt) {
      std::vector<std::string> args = {binary.string(), "run-unit", run_dir.string(), "--step", stage, "--index", std::to_string(index)};
      args.insert(args.end(), thread_args.begin(), thread_args.end());
      fs::path log_file = logs / fmt::format("{}-{}.log", stage, index);
      running[spawn(args, log_file)] = {index, attempt};
    };
    while (!queue.empty() || !running.empty()) {
      while (!queue.empty() && static_cast<int>(running.size()) < jobs) {
        start(queue.back(), 0);
        queue.pop_back();
      }
      int status = 0;
      pid_t pid = ::waitpid(-1, &status, 0);
      if (pid < 0) {
        if (errno == EINTR) continue;
        fail("waitpid: {}", std::strerror(errno));
      }
      auto done = running.find(pid);
      if (done == running.end()) continue;
      auto [index, attempt] = done->second;
      running.erase(done);
      const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      const std::string& name = units[static_cast<size_t>(index)].name;
      if (code == 0) {
        log::info("Unit {}:{} ({}) done", stage, index, name);
      } else if (attempt < options.max_retries) {
        log::warn("Unit {}:{} ({}) exited with {}; retry {} of {}", stage, index, name, code, attempt + 1, options.max_retries);
        start(index, attempt + 1);
      } else {
        log::warn("Unit {}:{} ({}) failed (exit status {}); log: {}", stage, index, name, code,
                  (logs / fmt::format("{}-{}.log", stage, index)).string());
        failed.push_back(index);
      }
    }
    if (!failed.empty()) {
      std::fprintf(stderr, "strata: error: %zu unit(s) of stage %s failed; the reduce did not run (strata status %s; resume "
                   "with: strata run --resume %s --executor local)\n",
                   failed.size(), stage.c_str(), run_dir.c_str(), run_dir.c_str());
      return 1;
    }
  }
  if (pending.count(kReduceStage) == 0 || pending.at(kReduceStage).empty()) {
    // Everything is done and current: the verdict stands as the reduce recorded it.
    const std::string verdict = read_unit_record(run_dir, kReduceStage, 0)->value("verdict", "");
    fmt::print("Nothing to run: every unit and the reduce are done{}\n", verdict.empty() ? "" : " (verdict " + verdict + ")");
    return verdict == "NO-GO" ? 2 : 0;
  }
  std::vector<std::string> args = {binary.string(), "run-unit", run_dir.string(), "--reduce"};
  args.insert(args.end(), thread_args.begin(), thread_args.end());
  return wait_exit_status(spawn(args, {}));
}

}  // namespace strata::harness
