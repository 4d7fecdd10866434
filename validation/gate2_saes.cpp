// Gate 2: every SAE trained, none diverged, held-out FVU below max_fvu, convergence reached (for the SAEs
// strata trained; a published SAE is held to the FVU bound on this run's held-out split only).
#include <cmath>

#include "report/run_data.hpp"
#include "validation/gates.hpp"

namespace strata::validation {
namespace fs = std::filesystem;
using nlohmann::json;

json gate2_saes(const fs::path& run_dir, const std::vector<ExpectedCell>& cells, const GateThresholds& thresholds) {
  json check = make_check("gate2_saes", "Gate 2: SAEs converged, FVU < max", "must_pass");
  std::vector<std::string> reasons;
  size_t trained = 0;
  double worst_fvu = 0;
  for (const auto& cell : cells) {
    const fs::path dir = run_dir / "saes" / cell.name();
    if (!fs::exists(dir / "cfg.json") || !fs::exists(dir / "sae_weights.safetensors")) {
      reasons.push_back(fmt::format("{}: not trained (saes/{}/cfg.json or sae_weights.safetensors missing)",
                                    cell.name(), cell.name()));
      continue;
    }
    json metrics;
    bool published = false;  // a published SAE (cfg "published"): not trained here, so no convergence record
    try {
      const json cfg = report::read_json(dir / "cfg.json", "the train step");
      metrics = cfg.value("metrics", json());
      published = cfg.contains("published");
    } catch (const std::exception& e) {
      reasons.push_back(e.what());
      continue;
    }
    if (!metrics.is_object()) {
      reasons.push_back(fmt::format("{}: cfg.json has no \"metrics\"", cell.name()));
      continue;
    }
    ++trained;
    if (metrics.value("diverged", false)) reasons.push_back(fmt::format("{}: training diverged", cell.name()));
    const auto fvu = metrics.find("fvu");
    if (fvu == metrics.end() || !fvu->is_number() || !std::isfinite(fvu->get<double>())) {
      reasons.push_back(fmt::format("{}: FVU missing or not finite", cell.name()));
    } else {
      worst_fvu = std::max(worst_fvu, fvu->get<double>());
      if (fvu->get<double>() >= thresholds.max_fvu)
        reasons.push_back(fmt::format("{}: FVU {:.4f} >= {}", cell.name(), fvu->get<double>(), thresholds.max_fvu));
    }
    if (!published && !metrics.value("converged", false))
      reasons.push_back(fmt::format("{}: not converged after {} epochs", cell.name(),
                                    metrics.contains("epochs_run") ? metrics["epochs_run"].dump() : "?"));
  }
  finish_check(check, reasons,
               fmt::format("{}/{} SAEs trained, worst FVU {:.4f} (max {})", trained, cells.size(), worst_fvu,
                           thresholds.max_fvu));
  check["value"] = worst_fvu;
  check["threshold"] = thresholds.max_fvu;
  return check;
}

}  // namespace strata::validation
