// Should-pass checks: the seed's expectations about the science. Reported, never blocking.
#include "report/analysis.hpp"
#include "validation/gates.hpp"

namespace strata::validation {
namespace fs = std::filesystem;
using nlohmann::json;

report::AnalysisOptions analysis_options(const GateThresholds& t) {
  report::AnalysisOptions o;
  o.early_universal = t.early_transfer;
  o.early_max_depth = t.early_max_depth;
  o.divergence_threshold = t.divergence_threshold;
  o.alpha = t.trend_alpha;
  return o;
}

std::vector<json> should_pass_checks(const fs::path& run_dir, const GateThresholds& t) {
  json early = make_check("early_layer_transfer", "Early-layer transfer > threshold", "should_pass");
  json trend = make_check("monotonic_decline", "Monotonic decline (trend test)", "should_pass");
  json spread = make_check("cross_model_spread", "Cross-model spread < threshold per depth", "should_pass");
  json divergence = make_check("divergence_point", "Clear divergence point", "should_pass");
  std::vector<json> checks = {early, trend, spread, divergence};
  report::Analysis a;
  try {
    a = report::analyse(report::load_transfer(run_dir), analysis_options(t));
  } catch (const std::exception& e) {
    for (auto& c : checks) finish_check(c, {e.what()}, "transfer results unavailable");
    return checks;
  }
  if (a.groups.empty()) {
    for (auto& c : checks) finish_check(c, {"no cross-model scores (single-model run?)"}, "not applicable");
    return checks;
  }
  finish_check(checks[0],
               a.early_universal ? std::vector<std::string>{}
                                 : std::vector<std::string>{fmt::format("early mean cross-model q_excess {:.3f} <= {}",
                                                                        a.early_mean, t.early_transfer)},
               fmt::format("early cells (depth <= {}) mean q_excess {:.3f} (95% CI [{:.3f}, {:.3f}]), threshold {}",
                           t.early_max_depth, a.early_mean, a.early_ci_lo, a.early_ci_hi, t.early_transfer));
  checks[0]["value"] = a.early_mean;
  checks[0]["threshold"] = t.early_transfer;

  const bool declining = a.trend.declining(t.trend_alpha);
  finish_check(checks[1],
               declining ? std::vector<std::string>{}
                         : std::vector<std::string>{fmt::format("Kendall tau {:.3f}, one-sided p {:.3g} (alpha {})",
                                                                a.trend.tau, a.trend.p_decline, t.trend_alpha)},
               fmt::format("Kendall tau {:.3f} over {} cells, one-sided p {:.3g}", a.trend.tau, a.trend.n,
                           a.trend.p_decline));
  checks[1]["value"] = a.trend.p_decline;
  checks[1]["threshold"] = t.trend_alpha;

  std::vector<std::string> wide;
  for (const auto& g : a.groups)
    if (g.spread >= t.spread) wide.push_back(fmt::format("depth {:.2f}: spread {:.3f} >= {}", g.relative_depth, g.spread, t.spread));
  finish_check(checks[2], wide, fmt::format("max spread {:.3f} over {} depths, threshold {}", a.max_spread, a.groups.size(), t.spread));
  checks[2]["value"] = a.max_spread;
  checks[2]["threshold"] = t.spread;

  std::vector<std::string> unclear;
  std::string summary;
  if (!a.divergence_group) {
    unclear.push_back(fmt::format("mean cross-model q_excess never falls below {}", t.divergence_threshold));
    summary = "no divergence point";
  } else {
    const auto& g = a.groups[*a.divergence_group];
    summary = fmt::format("first below {} at depth {:.2f} (q_excess {:.3f})", t.divergence_threshold, g.relative_depth,
                          g.mean_q_excess);
    if (*a.divergence_group == 0) unclear.push_back("already below the threshold at the first depth");
    else if (!a.divergence_clear) unclear.push_back("a deeper depth rises above the threshold again");
    checks[3]["value"] = g.relative_depth;
  }
  finish_check(checks[3], unclear, summary);
  checks[3]["threshold"] = t.divergence_threshold;
  return checks;
}

}  // namespace strata::validation
