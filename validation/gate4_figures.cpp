// Gate 4: the figures exist and are valid: PNG pixel size = stated inches x DPI, PDF with vector content.
#include <cmath>

#include "report/image_files.hpp"
#include "report/run_data.hpp"
#include "validation/gates.hpp"

namespace strata::validation {
namespace fs = std::filesystem;
using nlohmann::json;

json gate4_figures(const fs::path& run_dir, const GateThresholds& thresholds) {
  json check = make_check("gate4_figures", "Gate 4: figures rendered and valid", "must_pass");
  std::vector<std::string> reasons;
  const fs::path index_file = run_dir / "figures" / "figures.json";
  json index;
  try {
    index = report::read_json(index_file, "`strata figures` (the figures step)");
  } catch (const std::exception& e) {
    finish_check(check, {e.what()}, "no figures");
    return check;
  }
  std::vector<std::string> required = {"layer_transfer_heatmap"};
  if (auto transfer = report::read_json_if_exists(run_dir / "transfer" / "transfer_matrix.json");
      transfer && !transfer->value("layer_universality_scores", json::array()).empty())
    required.push_back("layer_universality_curve");
  std::set<std::string> seen;
  int valid = 0;
  for (const auto& figure : index.value("figures", json::array())) {
    const std::string name = figure.value("name", "?");
    seen.insert(name);
    const fs::path png = run_dir / figure.value("png", ""), pdf = run_dir / figure.value("pdf", "");
    const double dpi = figure.value("dpi", 0.0);
    const int width = static_cast<int>(std::lround(figure.value("width_in", 0.0) * dpi));
    const int height = static_cast<int>(std::lround(figure.value("height_in", 0.0) * dpi));
    const size_t before = reasons.size();
    try {
      if (!fs::exists(png)) {
        reasons.push_back(fmt::format("{}: {} missing", name, figure.value("png", "")));
      } else {
        const auto info = report::read_png_info(png);
        if (std::abs(static_cast<int>(info.width) - width) > thresholds.pixel_tolerance ||
            std::abs(static_cast<int>(info.height) - height) > thresholds.pixel_tolerance)
          reasons.push_back(fmt::format("{}: PNG is {}x{} px, expected {}x{} ({}x{} in at {} DPI)", name, info.width,
                                        info.height, width, height, figure.value("width_in", 0.0),
                                        figure.value("height_in", 0.0), dpi));
      }
      if (!fs::exists(pdf)) {
        reasons.push_back(fmt::format("{}: {} missing", name, figure.value("pdf", "")));
      } else {
        const auto info = report::inspect_pdf(pdf);
        if (!info.has_vector_content())
          reasons.push_back(fmt::format("{}: PDF has no vector drawing ({} path, {} paint operators)", name,
                                        info.path_operators, info.paint_operators));
      }
      if (!fs::exists(run_dir / figure.value("caption_file", "")))
        reasons.push_back(fmt::format("{}: caption file missing", name));
    } catch (const std::exception& e) {
      reasons.push_back(fmt::format("{}: {}", name, e.what()));
    }
    valid += reasons.size() == before;
  }
  for (const auto& name : required)
    if (!seen.count(name)) reasons.push_back(fmt::format("required figure {} was not rendered", name));
  finish_check(check, reasons, fmt::format("{}/{} figures valid (PNG size, vector PDF, caption)", valid,
                                           index.value("figures", json::array()).size()));
  return check;
}

}  // namespace strata::validation
