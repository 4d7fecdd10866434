// `strata report RUN_DIR`: evaluates the gates, then writes RUN_DIR/report/report.md and its tables.
// A run that fails a gate still gets its report, marked NO-GO with the reasons.
#include "command.hpp"
#include "report/report.hpp"
#include "validation/gates.hpp"

namespace {

void setup(strata::cli::Commands& commands) {
  auto* cmd = commands.root().add_subcommand("report", "Write the markdown report (+ CSV/LaTeX tables) of a run");
  auto run_dir = std::make_shared<std::string>();
  cmd->add_option("RUN_DIR", *run_dir, "run directory")->required()->check(CLI::ExistingDirectory);
  commands.bind(cmd, [run_dir]() {
    const auto thresholds = strata::validation::thresholds_for_run(*run_dir);
    strata::report::ReportOptions options;
    options.analysis = strata::validation::analysis_options(thresholds);
    options.gates = strata::validation::evaluate_gates(*run_dir, thresholds);
    strata::validation::write_gates(*run_dir, *options.gates);
    const auto result = strata::report::write_report(*run_dir, options);
    fmt::print("report: {} (verdict {})\n", result.markdown.string(), result.verdict);
    return 0;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
