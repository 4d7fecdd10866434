// `strata gate RUN_DIR`: prints the gate table, writes RUN_DIR/gates/gates.json, exits 0 only when
// every must-pass gate holds (2 otherwise; 1 is reserved for errors).
#include "command.hpp"
#include "validation/gates.hpp"

namespace {

void setup(strata::cli::Commands& commands) {
  auto* cmd = commands.root().add_subcommand("gate", "Evaluate the go/no-go gates of a run (exit 0 = GO)");
  auto run_dir = std::make_shared<std::string>();
  auto skip_stream = std::make_shared<bool>(false);
  cmd->add_option("RUN_DIR", *run_dir, "run directory")->required()->check(CLI::ExistingDirectory);
  cmd->add_flag("--no-stream-check", *skip_stream, "trust meta.json nonfinite_count instead of reading every shard");
  commands.bind(cmd, [run_dir, skip_stream]() {
    auto thresholds = strata::validation::thresholds_for_run(*run_dir);
    if (*skip_stream) thresholds.stream_store_check = false;
    const auto gates = strata::validation::evaluate_gates(*run_dir, thresholds);
    strata::validation::write_gates(*run_dir, gates);
    fmt::print("{}", strata::validation::format_gate_table(gates));
    return gates.value("must_pass_ok", false) ? 0 : 2;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
