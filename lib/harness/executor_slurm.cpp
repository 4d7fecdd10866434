#include "harness/executor_slurm.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <sstream>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/log.hpp"

namespace strata::harness {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Seconds any Slurm client call may take: sacct and squeue can hang for minutes on an unreachable daemon.
constexpr int kSlurmTimeoutSeconds = 30;

std::string quote(const std::string& text) {
  std::string out = "'";
  for (char c : text) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct CommandResult {
  int status = -1;     // exit status; 124 = timed out
  std::string output;  // stdout, trailing white space removed
  std::string error;   // stderr
};

std::string trimmed(std::string text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) text.pop_back();
  return text;
}

// A shell command under `timeout`; stdout and stderr captured apart (sbatch may warn on stderr).
CommandResult run_shell(const std::string& command) {
  CommandResult result;
  char error_file[] = "/tmp/strata-slurm-stderr-XXXXXX";
  const int fd = ::mkstemp(error_file);
  if (fd < 0) fail("cannot create a temporary file for {}: {}", command, std::strerror(errno));
  ::close(fd);
  const std::string full = fmt::format("timeout {} {} 2>{}", kSlurmTimeoutSeconds, command, quote(error_file));
  if (FILE* pipe = ::popen(full.c_str(), "r")) {
    char buffer[4096];
    while (size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) result.output.append(buffer, n);
    const int status = ::pclose(pipe);
    result.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  try {
    result.error = trimmed(read_text_file(error_file));
  } catch (const std::exception&) {
  }
  ::unlink(error_file);
  result.output = trimmed(result.output);
  return result;
}

const std::vector<std::string> kStageTables = {"capture", "train", "transfer", kReduceStage};

SlurmOptions parse_slurm_options(const json& table, const std::string& where, const std::string& file, bool allow_stages,
                                 SlurmConfig* config) {
  SlurmOptions o;
  const auto text = [&](const std::string& key, const json& value) {
    if (!value.is_string()) fail("{}: '{}.{}' must be a string, got {}", file, where, key, value.type_name());
    return value.get<std::string>();
  };
  const auto integer = [&](const std::string& key, const json& value) {
    if (!value.is_number_integer() || value.get<int64_t>() < 0)
      fail("{}: '{}.{}' must be a non-negative integer, got {}", file, where, key, value.dump());
    return value.get<int>();
  };
  const auto lines = [&](const std::string& key, const json& value) {
    std::vector<std::string> out;
    if (!value.is_array()) fail("{}: '{}.{}' must be an array of strings", file, where, key);
    for (const auto& line : value) out.push_back(text(key, line));
    return out;
  };
  for (const auto& [key, value] : table.items()) {
    if (key == "partition") o.partition = text(key, value);
    else if (key == "account") o.account = text(key, value);
    else if (key == "qos") o.qos = text(key, value);
    else if (key == "time") o.time = text(key, value);
    else if (key == "mem") o.mem = text(key, value);
    else if (key == "constraint") o.constraint = text(key, value);
    else if (key == "gpus_per_task") o.gpus_per_task = integer(key, value);
    else if (key == "cpus_per_task") o.cpus_per_task = integer(key, value);
    else if (key == "extra") o.extra = lines(key, value);
    else if (key == "setup") o.setup = lines(key, value);
    else if (allow_stages && key == "array_parallelism") config->array_parallelism = integer(key, value);
    else if (allow_stages && std::find(kStageTables.begin(), kStageTables.end(), key) != kStageTables.end()) {
      if (!value.is_object()) fail("{}: '{}.{}' must be a table", file, where, key);
      config->stages[key] = parse_slurm_options(value, where + "." + key, file, false, nullptr);
    } else {
      fail("{}: unknown key '{}.{}' (known keys: partition, account, qos, time, mem, constraint, gpus_per_task, "
           "cpus_per_task, extra, setup{})",
           file, where, key, allow_stages ? ", array_parallelism and the per-stage tables capture, train, transfer, reduce" : "");
    }
  }
  return o;
}

std::string slurm_state_class(const std::string& raw) {
  const std::string state = raw.substr(0, raw.find(' '));  // sacct: "CANCELLED by 0"
  static const std::set<std::string> pending = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED"};
  static const std::set<std::string> running = {"CONFIGURING", "RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"};
  if (pending.count(state)) return "pending";
  if (running.count(state)) return "running";
  if (state == "COMPLETED") return "completed";
  return "failed";  // FAILED, CANCELLED, TIMEOUT, NODE_FAIL, PREEMPTED, BOOT_FAIL, DEADLINE, OUT_OF_MEMORY, ...
}

json read_submissions(const fs::path& run_dir) {
  fs::path file = run_dir / "executor" / "submissions.json";
  if (!fs::exists(file)) return json::array();
  return json::parse(read_text_file(file));
}

}  // namespace

void SlurmOptions::overlay(const SlurmOptions& over) {
  using Field = std::pair<std::string*, const std::string*>;
  for (auto [mine, theirs] : std::initializer_list<Field>{{&partition, &over.partition}, {&account, &over.account},
                                                           {&qos, &over.qos}, {&time, &over.time}, {&mem, &over.mem},
                                                           {&constraint, &over.constraint}})
    if (!theirs->empty()) *mine = *theirs;
  if (over.gpus_per_task) gpus_per_task = over.gpus_per_task;
  if (over.cpus_per_task) cpus_per_task = over.cpus_per_task;
  extra.insert(extra.end(), over.extra.begin(), over.extra.end());
  setup.insert(setup.end(), over.setup.begin(), over.setup.end());
}

SlurmOptions SlurmConfig::for_stage(const std::string& stage) const {
  SlurmOptions out = common;
  if (auto it = stages.find(stage); it != stages.end()) out.overlay(it->second);
  out.overlay(command_line);
  return out;
}

ExecutorTable parse_executor_table(const json& table, const std::string& file) {
  ExecutorTable out;
  if (table.is_null()) return out;
  for (const auto& [key, value] : table.items()) {
    if (key == "kind") {
      if (!value.is_string() || (value != "local" && value != "slurm"))
        fail("{}: 'executor.kind' must be \"local\" or \"slurm\", got {}", file, value.dump());
      out.kind = value.get<std::string>();
    } else if (key == "jobs" || key == "max_retries") {
      if (!value.is_number_integer() || value.get<int64_t>() < (key == "jobs" ? 1 : 0))
        fail("{}: 'executor.{}' must be an integer >= {}, got {}", file, key, key == "jobs" ? 1 : 0, value.dump());
      (key == "jobs" ? out.jobs : out.max_retries) = value.get<int>();
    } else if (key == "transfer_block") {
      // Read by plan_units (executor.cpp); 0 = one block of source cells per model.
      if (!value.is_number_integer() || value.get<int64_t>() < 0 || value.get<int64_t>() > 1000000)
        fail("{}: 'executor.transfer_block' (source cells per transfer unit; 0 = one model's cells) must be an "
             "integer >= 0, got {}", file, value.dump());
    } else if (key == "slurm") {
      if (!value.is_object()) fail("{}: 'executor.slurm' must be a table", file);
      out.slurm.common = parse_slurm_options(value, "executor.slurm", file, true, &out.slurm);
    } else {
      fail("{}: unknown key 'executor.{}' (known keys: kind, jobs, max_retries, transfer_block, and the table [executor.slurm])", file, key);
    }
  }
  return out;
}

std::string array_spec(std::vector<int> indexes) {
  std::sort(indexes.begin(), indexes.end());
  indexes.erase(std::unique(indexes.begin(), indexes.end()), indexes.end());
  std::string out;
  for (size_t i = 0; i < indexes.size();) {
    size_t j = i;
    while (j + 1 < indexes.size() && indexes[j + 1] == indexes[j] + 1) ++j;
    out += (out.empty() ? "" : ",") + std::to_string(indexes[i]) + (j > i ? "-" + std::to_string(indexes[j]) : "");
    i = j + 1;
  }
  return out;
}

std::string slurm_script(const fs::path& run_dir, const std::string& experiment_name, const std::string& stage,
                         const std::vector<int>& indexes, const SlurmConfig& config, const ExecutorOptions& options) {
  const SlurmOptions o = config.for_stage(stage);
  const bool reduce = stage == kReduceStage;
  const fs::path logs = run_dir / "executor" / "logs";
  std::ostringstream s;
  s << "#!/bin/bash\n";
  s << "# strata: stage " << stage << " of run " << run_dir.string() << " (written by strata run --executor slurm)\n";
  s << "#SBATCH --job-name=strata-" << experiment_name << "-" << stage << "\n";
  if (reduce) {
    s << "#SBATCH --output=" << (logs / "reduce-%j.log").string() << "\n";
  } else {
    s << "#SBATCH --array=" << array_spec(indexes);
    if (config.array_parallelism > 0) s << "%" << config.array_parallelism;
    s << "\n#SBATCH --output=" << (logs / (stage + "-%a-%A.log")).string() << "\n";
  }
  s << "#SBATCH --chdir=" << run_dir.string() << "\n";
  if (!o.partition.empty()) s << "#SBATCH --partition=" << o.partition << "\n";
  if (!o.account.empty()) s << "#SBATCH --account=" << o.account << "\n";
  if (!o.qos.empty()) s << "#SBATCH --qos=" << o.qos << "\n";
  if (!o.time.empty()) s << "#SBATCH --time=" << o.time << "\n";
  if (!o.mem.empty()) s << "#SBATCH --mem=" << o.mem << "\n";
  if (!o.constraint.empty()) s << "#SBATCH --constraint=" << o.constraint << "\n";
  if (o.gpus_per_task && *o.gpus_per_task > 0) s << "#SBATCH --gpus-per-task=" << *o.gpus_per_task << "\n";  // 0: none
  if (o.cpus_per_task) s << "#SBATCH --cpus-per-task=" << *o.cpus_per_task << "\n";
  for (const auto& line : o.extra) s << (line.rfind("#SBATCH", 0) == 0 ? line : "#SBATCH " + line) << "\n";
  for (const auto& line : o.setup) s << line << "\n";
  const std::string binary = (options.strata_binary.empty() ? self_executable() : options.strata_binary).string();
  const std::string threads = options.threads ? " --threads " + std::to_string(*options.threads) : "";
  if (reduce) {
    s << "exec " << quote(binary) << " run-unit " << quote(run_dir.string()) << " --reduce" << threads << "\n";
  } else {
    // A failing unit is run again up to max_retries times in the same allocation (a transient fault).
    s << "for attempt in $(seq 0 " << options.max_retries << "); do\n";
    s << "  " << quote(binary) << " run-unit " << quote(run_dir.string()) << " --step " << stage
      << " --index \"$SLURM_ARRAY_TASK_ID\"" << threads << " && exit 0\n";
    s << "done\nexit 1\n";
  }
  return s.str();
}

json submit_slurm(const fs::path& run_dir, const Experiment& exp, const std::map<std::string, std::vector<int>>& pending,
                  const SlurmConfig& config, const ExecutorOptions& options, bool dry_run) {
  const fs::path scripts = run_dir / "executor" / "slurm";
  json submissions = dry_run ? json::array() : read_submissions(run_dir);
  const size_t number = submissions.size() + 1;
  json submission = {{"submitted_at", now_iso8601()}, {"stages", json::array()}};
  std::string previous;  // the job id the next stage waits for
  std::vector<std::string> stages(kUnitStages.begin(), kUnitStages.end());
  stages.push_back(kReduceStage);
  if (!dry_run) {
    fs::create_directories(scripts);
    fs::create_directories(run_dir / "executor" / "logs");
  }
  for (const auto& stage : stages) {
    auto it = pending.find(stage);
    if (it == pending.end() || it->second.empty()) continue;
    const std::string text = slurm_script(run_dir, exp.experiment.name, stage, it->second, config, options);
    const fs::path script = scripts / fmt::format("{}-{}.sbatch", number, stage);
    std::string command = "sbatch --parsable";
    if (!previous.empty()) command += " --dependency=afterok:" + previous + " --kill-on-invalid-dep=yes";
    else if (dry_run && stage != stages.front() && !submission["stages"].empty())
      command += " --dependency=afterok:<job id of the previous stage> --kill-on-invalid-dep=yes";
    command += " " + quote(script.string());
    if (dry_run) {
      fmt::print("# ---- {} ({} unit(s)): {}\n{}\n", stage, it->second.size(), command, text);
      submission["stages"].push_back({{"stage", stage}, {"indexes", it->second}, {"script", script.string()}, {"command", command}});
      continue;
    }
    atomic_write_text(script, text);
    CommandResult result = run_shell(command);
    const std::string job_id = result.output.substr(0, result.output.find(';'));  // "123" or "123;cluster"
    if (result.status != 0 || job_id.empty() || job_id.find_first_not_of("0123456789") != std::string::npos)
      fail("sbatch failed for stage {} ({}{}): {}{}", stage, command, result.status == 124 ? ", timed out" : "",
           trimmed(result.output + "\n" + result.error),
           submission["stages"].empty() ? "" : fmt::format(" (stages submitted before it: {}; cancel them with scancel)",
                                                           submission["stages"].dump()));
    previous = job_id;
    submission["stages"].push_back({{"stage", stage}, {"job_id", job_id}, {"indexes", it->second}, {"script", script.string()}, {"command", command}});
  }
  if (dry_run) return submission;
  submissions.push_back(submission);
  atomic_write_text(run_dir / "executor" / "submissions.json", submissions.dump(2) + "\n");
  auto run = RunDir::open(run_dir);  // the reduce waits for this lock
  std::lock_guard guard(run->mutex());
  json& section = run->manifest().section("executor");
  if (!section.is_object()) section = json::object();
  section["kind"] = "slurm";
  section["submissions"] = submissions;
  run->save_manifest();
  return submission;
}

std::vector<UnitState> run_status(const fs::path& run_dir_arg, const StepRegistry& registry) {
  const fs::path run_dir = fs::absolute(run_dir_arg).lexically_normal();
  const Experiment exp = load_run_experiment(run_dir);
  const json submissions = read_submissions(run_dir);

  // The latest job of every unit, and what Slurm says about it.
  std::map<std::pair<std::string, int>, std::string> job_of;
  std::set<std::string> jobs;
  for (const auto& submission : submissions)
    for (const auto& stage : submission.value("stages", json::array())) {
      const std::string id = stage.value("job_id", "");
      if (id.empty()) continue;
      jobs.insert(id);
      for (int index : stage.at("indexes"))
        job_of[{stage.at("stage").get<std::string>(), index}] = stage.at("stage") == kReduceStage ? id : id + "_" + std::to_string(index);
    }
  std::map<std::string, std::pair<std::string, std::string>> slurm;  // "123_4" -> (state, reason)
  std::map<std::string, std::string> unanswered;  // job id -> why neither squeue nor sacct answered
  for (const auto& id : jobs) {
    CommandResult q = run_shell("squeue -h -r --states=all -o '%i|%T|%r' -j " + id);
    bool found = false;
    if (q.status == 0) {
      std::istringstream in(q.output);
      for (std::string line; std::getline(in, line);) {
        auto a = line.find('|'), b = line.rfind('|');
        if (a == std::string::npos || a == b) continue;
        slurm[line.substr(0, a)] = {line.substr(a + 1, b - a - 1), line.substr(b + 1)};
        found = true;
      }
    }
    if (found) continue;
    // Gone from squeue (MinJobAge): sacct knows it where accounting is on.
    CommandResult a = run_shell("sacct -n -P -X -o JobID,State -j " + id);
    if (a.status != 0) {
      // Neither answered: Slurm is unreachable from here (no SLURM_CONF, controller down), which says
      // nothing about the job. Only a squeue that answers without the job means it left the queue.
      if (q.status != 0) unanswered[id] = q.error.substr(0, q.error.find('\n'));
      continue;
    }
    std::istringstream in(a.output);
    for (std::string line; std::getline(in, line);) {
      auto bar = line.find('|');
      if (bar != std::string::npos) slurm[line.substr(0, bar)] = {line.substr(bar + 1), "sacct"};
    }
  }

  std::vector<UnitState> out;
  std::vector<std::string> stages(kUnitStages.begin(), kUnitStages.end());
  stages.push_back(kReduceStage);
  const std::string here = [] {
    char buffer[256] = {};
    return ::gethostname(buffer, sizeof buffer - 1) == 0 ? std::string(buffer) : std::string();
  }();
  for (const auto& stage : stages) {
    for (const auto& unit : plan_units(exp, stage)) {
      UnitState u{.stage = stage, .index = unit.index, .name = unit.name};
      auto record = read_unit_record(run_dir, stage, unit.index);
      auto job = job_of.find({stage, unit.index});
      if (job != job_of.end()) u.job = job->second;
      const std::string error = record ? record->value("error", "") : "";
      if (record && record_is_done(*record, exp, registry)) {
        u.state = "done";
        if (record->contains("verdict")) u.detail = "verdict " + record->value("verdict", "");
      } else if (job != job_of.end()) {
        auto s = slurm.find(job->second);
        const std::string array_job = job->second.substr(0, job->second.find('_'));
        if (s == slurm.end() && unanswered.count(array_job) && !(record && record->value("status", "") == "failed")) {
          u.state = "unknown";
          u.detail = "Slurm did not answer (squeue: " + unanswered[array_job] +
                     "); run strata status where squeue works (SLURM_CONF)";
        } else if (s == slurm.end()) {
          u.state = "failed";
          u.detail = record && record->value("status", "") == "failed" ? error
                                                                       : "the job left the queue without a complete record";
        } else {
          const std::string cls = slurm_state_class(s->second.first);
          u.state = cls == "completed" ? "failed" : cls;
          // A dependent that can never start (submitted without --kill-on-invalid-dep) is as good as failed.
          if (cls == "pending" && s->second.second.find("DependencyNeverSatisfied") != std::string::npos) u.state = "failed";
          u.detail = s->second.first + (s->second.second.empty() || s->second.second == "None" ? "" : " (" + s->second.second + ")");
          if (cls == "completed") u.detail = "the job completed without a complete record";
          if (cls == "failed" && !error.empty()) u.detail += ": " + error;
        }
      } else if (!record) {
        u.state = "pending";
        u.detail = "not started";
      } else if (record->value("status", "") == "failed") {
        u.state = "failed";
        u.detail = error;
      } else if (record->value("status", "") == "running") {
        const pid_t pid = record->value("pid", 0);
        u.job = fmt::format("pid {} on {}", pid, record->value("host", "?"));
        const bool alive = record->value("host", "") != here || (pid > 0 && ::kill(pid, 0) == 0);
        u.state = alive ? "running" : "failed";
        if (!alive) u.detail = "the process ended without a record";
      } else {
        u.state = "pending";
        u.detail = "made by another build or config: runs again on resume";
      }
      out.push_back(std::move(u));
    }
  }
  return out;
}

}  // namespace strata::harness
