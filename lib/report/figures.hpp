// The figures step: publication figures from a run directory (docs/report.md lists them).
// Each figure is figures/<name>.png (300 DPI, pHYs set), figures/<name>.pdf (vector) and
// figures/<name>.caption.txt (one line); figures/figures.json indexes them for the report and Gate 4.
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "core/options.hpp"
#include "report/analysis.hpp"

namespace strata::report {

struct FigureOptions {
  int dpi = 300;
  double font_pt = 9;
  int max_annotated_cells = 20;  // values are printed in heatmap cells up to this many rows/columns
  // Bands, controls and CI level; default: analysis_options_for_run(run_dir), the run's own config.
  std::optional<AnalysisOptions> analysis;

  // The experiment's [figures] section.
  static const auto& fields() {
    using O = FigureOptions;
    namespace o = options;
    static const auto table = std::make_tuple(
        o::field("dpi", &O::dpi, "PNG resolution", o::within(50, 2400)),
        o::field("font_pt", &O::font_pt, "font size in points", o::within(4, 48)),
        o::field("max_annotated_cells", &O::max_annotated_cells,
                 "heatmap values printed in cells up to this many rows/columns", o::at_least(0)));
    return table;
  }
};

struct FigureRecord {
  std::string name, caption, title, xlabel, ylabel;
  double width_in = 0, height_in = 0;
  int dpi = 0;
  std::filesystem::path png, pdf, caption_file;  // relative to the run directory
  nlohmann::json to_json() const;
};

// Renders every figure whose inputs exist (the transfer figures need transfer/transfer_matrix.json,
// the SAE figures saes/*/cfg.json). Throws if nothing could be rendered.
std::vector<FigureRecord> render_figures(const std::filesystem::path& run_dir, const FigureOptions& options = {});

}  // namespace strata::report
