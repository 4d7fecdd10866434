// `strata status RUN_DIR`: per stage and unit of a run made by an executor, pending / running / done /
// failed, from the units' records first, then squeue and sacct (harness/executor_slurm.hpp run_status).
// Exit status: 0 = complete (every unit and the reduce done), 3 = in progress (units running, or queued in
// Slurm), 1 = stopped: nothing moves any more and a unit failed or was never started (resume it), 4 = Slurm
// did not answer (squeue and sacct both failed here), so the state of its jobs is unknown.
#include <map>

#include <fmt/format.h>

#include "command.hpp"
#include "harness/executor_slurm.hpp"
#include "pipeline_steps.hpp"

namespace {

void setup(strata::cli::Commands& commands) {
  auto* status = commands.root().add_subcommand("status", "Per-unit state of a run made by an executor (local or Slurm)");
  auto dir = std::make_shared<std::string>();
  status->add_option("run_dir", *dir, "Run directory")->required();
  commands.bind(status, [dir]() {
    strata::cli::register_pipeline_steps();
    const auto units = strata::harness::run_status(*dir);
    std::map<std::string, std::map<std::string, int>> counts;
    std::vector<std::string> order;
    fmt::print("{:<9} {:>5}  {:<24} {:<8} {:<14} {}\n", "stage", "unit", "name", "state", "job", "detail");
    for (const auto& u : units) {
      if (counts.find(u.stage) == counts.end()) order.push_back(u.stage);
      ++counts[u.stage][u.state];
      fmt::print("{:<9} {:>5}  {:<24} {:<8} {:<14} {}\n", u.stage, u.index, u.name, u.state, u.job, u.detail);
    }
    int failed = 0, unfinished = 0, unstarted = 0;
    for (const auto& stage : order) {
      std::string line;
      for (const auto& [state, n] : counts[stage]) line += fmt::format("{}{} {}", line.empty() ? "" : ", ", n, state);
      fmt::print("{}: {}\n", stage, line);
      failed += counts[stage]["failed"];
    }
    // Moving: running, or queued in Slurm. A pending unit without a job (a local run that stopped, or a
    // stage after a failed one) waits for a resume.
    for (const auto& u : units)
      if (u.state == "running" || (u.state == "pending" && !u.job.empty())) ++unfinished;
      else if (u.state == "pending") ++unstarted;
    // Still moving first: a failed unit's array siblings may be running, and its dependents are being cancelled.
    if (unfinished > 0) {
      fmt::print("Run: in progress ({} unit(s) running or queued{})\n", unfinished,
                 failed > 0 ? fmt::format(", {} failed", failed) : "");
      return 3;
    }
    int unknown = 0;
    for (const auto& u : units) unknown += u.state == "unknown";
    if (unknown > 0) {
      fmt::print("Run: unknown: Slurm did not answer for {} unit(s) (squeue and sacct failed here)\n", unknown);
      return 4;
    }
    if (failed > 0 || unstarted > 0) {
      fmt::print("Run: stopped, {} unit(s) failed, {} not started; resume with: strata run --resume {} --executor ...\n",
                 failed, unstarted, *dir);
      return 1;
    }
    fmt::print("Run: complete\n");
    return 0;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
