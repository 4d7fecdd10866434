// `strata figures RUN_DIR`: publication figures (300-DPI PNG + vector PDF + caption) into RUN_DIR/figures,
// with the run's own analysis settings (bands, controls, CI level: report::analysis_options_for_run).
#include "command.hpp"
#include "option_flags.hpp"
#include "report/figures.hpp"

namespace {

void setup(strata::cli::Commands& commands) {
  auto* cmd = commands.root().add_subcommand("figures", "Render the run's figures (PNG at 300 DPI + vector PDF)");
  auto run_dir = std::make_shared<std::string>();
  auto options = std::make_shared<strata::report::FigureOptions>();
  cmd->add_option("RUN_DIR", *run_dir, "run directory")->required()->check(CLI::ExistingDirectory);
  strata::cli::add_option_flags(cmd, *options);  // every [figures] key: --dpi, --font-pt, --max-annotated-cells
  commands.bind(cmd, [run_dir, options]() {
    strata::cli::check_option_flags(*options);
    const auto figures = strata::report::render_figures(*run_dir, *options);
    for (const auto& f : figures)
      fmt::print("{}  ({:.2f} x {:.2f} in, {} DPI)  {}\n", f.png.string(), f.width_in, f.height_in, f.dpi, f.caption);
    return 0;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
