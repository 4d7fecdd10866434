// `strata verify RUN_DIR`: re-hash every artifact of a run against its manifest.
#include "command.hpp"
#include "harness/verify.hpp"

namespace {

void setup(strata::cli::Commands& commands) {
  auto* verify = commands.root().add_subcommand("verify", "Re-hash every artifact of a run against its manifest");
  auto dir = std::make_shared<std::string>();
  verify->add_option("run_dir", *dir, "Run directory")->required();
  commands.bind(verify, [dir]() {
    auto result = strata::harness::verify_run(*dir);
    for (const auto& path : result.missing) fmt::print("MISSING    {}\n", path);
    for (const auto& problem : result.mismatched) fmt::print("MISMATCH   {}: {}\n", problem.path, problem.problem);
    for (const auto& problem : result.inconsistent) fmt::print("INCONSISTENT step {}: {}\n", problem.path, problem.problem);
    for (const auto& path : result.unrecorded) fmt::print("unrecorded {} (not in the manifest; not checked)\n", path);
    for (const auto& step : result.incomplete_steps) fmt::print("note: step {} did not complete\n", step);
    const std::string inconsistent =
        result.inconsistent.empty() ? "" : fmt::format(", {} inconsistent", result.inconsistent.size());
    fmt::print("{}: {} artifacts checked, {} missing, {} mismatched{}: {}\n", result.run_dir.string(), result.checked,
               result.missing.size(), result.mismatched.size(), inconsistent, result.ok() ? "OK" : "FAILED");
    return result.ok() ? 0 : 1;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
