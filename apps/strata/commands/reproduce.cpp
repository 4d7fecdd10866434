// `strata reproduce RUN_DIR --out NEW`: re-execute a run's config with its seeds and compare every artifact.
#include "command.hpp"
#include "harness/verify.hpp"
#include "pipeline_steps.hpp"

namespace {

void setup(strata::cli::Commands& commands) {
  auto* reproduce = commands.root().add_subcommand(
      "reproduce", "Re-run a run's recorded config with its recorded seeds and thread count; list each artifact as identical or different");
  auto dir = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  reproduce->add_option("run_dir", *dir, "The run to reproduce")->required();
  reproduce->add_option("--out", *out, "New run directory for the re-execution")->required();
  commands.bind(reproduce, [dir, out]() {
    namespace h = strata::harness;
    strata::cli::register_pipeline_steps();
    auto result = h::reproduce_run(*dir, *out, h::global_steps(), "strata reproduce " + *dir + " --out " + *out);
    size_t identical = 0;
    for (const auto& a : result.artifacts) {
      if (a.status == "identical") ++identical;
      fmt::print("{:<10} {}\n", a.status, a.path);
    }
    for (const auto& s : result.seed_differences) fmt::print("seed differs: {}\n", s);
    if (!result.run.ok()) fmt::print("step {} failed: {}\n", result.run.failed_step, result.run.error);
    fmt::print("{} of {} artifacts identical; reproduction in {}: {}\n", identical, result.artifacts.size(),
               result.run.run_dir.string(), result.identical() ? "IDENTICAL" : "DIFFERENT");
    return result.identical() ? 0 : 1;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
