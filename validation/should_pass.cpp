// Should-pass checks: the seed's expectations about the science, and SAEs sparse enough to mean something.
// Reported, never blocking. They judge the report's analysis (report/analysis.json, written once per run by
// the report step) against the [gates] thresholds, so gates.json and the report quote the same numbers.
#include <cmath>

#include "report/analysis.hpp"
#include "report/run_data.hpp"
#include "validation/gates.hpp"

namespace strata::validation {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

double number(const json& v) { return v.is_number() ? v.get<double>() : std::nan(""); }

std::string interval(const json& ci) {
  return ci.is_array() && ci.size() == 2 ? fmt::format("[{:.3f}, {:.3f}]", number(ci[0]), number(ci[1])) : "[n/a]";
}

}  // namespace

std::vector<json> should_pass_checks(const fs::path& run_dir, const GateThresholds& t) {
  std::vector<json> checks = {make_check("early_layer_transfer", "Early-layer transfer > threshold", "should_pass"),
                              make_check("monotonic_decline", "Monotonic decline (trend test)", "should_pass"),
                              make_check("cross_model_spread", "Cross-model spread < threshold per depth", "should_pass"),
                              make_check("divergence_point", "Clear divergence point", "should_pass"),
                              make_check("sae_sparsity", "SAEs sparse (L0 / d_in, dead fraction)", "should_pass")};
  json a;
  try {
    a = report::read_json(run_dir / "report" / "analysis.json", "the report step (`strata report RUN_DIR`)");
  } catch (const std::exception& e) {
    for (auto& c : checks) finish_check(c, {e.what()}, "the report's analysis is unavailable");
    return checks;
  }
  json& early = checks[0];
  json& trend = checks[1];
  json& spread = checks[2];
  json& divergence = checks[3];
  json& sparsity = checks[4];

  // Sparsity does not need cross-model scores.
  std::vector<std::string> dense;
  double worst_l0 = 0, worst_dead = 0;
  const json saes = a.value("sparsity", json::array());
  for (const auto& s : saes) {
    const std::string cell = s.value("cell", "?");
    const double l0_fraction = number(s.value("l0_fraction", json())), dead = number(s.value("dead_fraction", json()));
    if (!std::isfinite(l0_fraction)) dense.push_back(fmt::format("{}: L0 or d_in not recorded", cell));
    else if (l0_fraction > t.max_l0_fraction)
      dense.push_back(fmt::format("{}: L0 {:.1f} is {:.2f} of d_in {} (max {})", cell, number(s.value("l0", json())),
                                  l0_fraction, number(s.value("d_in", json())), t.max_l0_fraction));
    if (!std::isfinite(dead)) dense.push_back(fmt::format("{}: dead fraction not recorded", cell));
    else if (dead > t.max_dead_fraction)
      dense.push_back(fmt::format("{}: dead fraction {:.3f} (max {})", cell, dead, t.max_dead_fraction));
    if (std::isfinite(l0_fraction)) worst_l0 = std::max(worst_l0, l0_fraction);
    if (std::isfinite(dead)) worst_dead = std::max(worst_dead, dead);
  }
  if (saes.empty()) dense.push_back("the analysis lists no SAE (saes/*/cfg.json missing?)");
  finish_check(sparsity, dense,
               fmt::format("{} SAEs: largest L0 / d_in {:.3f} (max {}), largest dead fraction {:.3f} (max {})",
                           saes.size(), worst_l0, t.max_l0_fraction, worst_dead, t.max_dead_fraction));
  sparsity["value"] = {{"l0_fraction", worst_l0}, {"dead_fraction", worst_dead}};
  sparsity["threshold"] = {{"max_l0_fraction", t.max_l0_fraction}, {"max_dead_fraction", t.max_dead_fraction}};

  const json groups = a.value("groups", json::array());
  if (groups.empty()) {
    for (json* c : {&early, &trend, &spread, &divergence})
      finish_check(*c, {"no cross-model scores (single-model run?)"}, "not applicable");
    return checks;
  }
  const std::string level = report::ci_label(a["options"].value("ci_level", 0.95));

  const json& e = a.at("early");
  const double early_mean = number(e.value("mean_q_excess", json()));
  finish_check(early,
               early_mean > t.early_transfer
                   ? std::vector<std::string>{}
                   : std::vector<std::string>{fmt::format("early mean cross-model q_excess {:.3f} <= {}", early_mean,
                                                          t.early_transfer)},
               fmt::format("early cells (depth <= {}) mean q_excess {:.3f} ({} CI {}), threshold {}",
                           a["options"].value("early_max_depth", t.early_max_depth), early_mean, level,
                           interval(e.value("ci", json())), t.early_transfer));
  early["value"] = e.value("mean_q_excess", json());
  early["ci"] = e.value("ci", json());
  early["threshold"] = t.early_transfer;

  const json& k = a.at("trend");
  const double tau = number(k["tau"]), p = number(k["p_decline"]);
  const int n = k.value("n", 0);
  const bool declining = n >= 3 && tau < 0 && p < t.trend_alpha;
  finish_check(trend,
               declining ? std::vector<std::string>{}
                         : std::vector<std::string>{fmt::format("Kendall tau {:.3f}, one-sided p {:.3g} (alpha {})", tau,
                                                                p, t.trend_alpha)},
               fmt::format("Kendall tau {:.3f} over {} cells, one-sided p {:.3g}", tau, n, p));
  trend["value"] = k["p_decline"];
  trend["threshold"] = t.trend_alpha;

  std::vector<std::string> wide;
  double max_spread = 0;
  for (const auto& g : groups) {
    const double s = number(g["spread"]);
    max_spread = std::max(max_spread, s);
    if (s >= t.spread) wide.push_back(fmt::format("depth {:.2f}: spread {:.3f} >= {}", number(g["relative_depth"]), s, t.spread));
  }
  finish_check(spread, wide, fmt::format("max spread {:.3f} over {} depths, threshold {}", max_spread, groups.size(), t.spread));
  spread["value"] = max_spread;
  spread["threshold"] = t.spread;

  // The divergence point at the gate's threshold, from the analysis's depth-group means.
  std::optional<size_t> first_below;
  for (size_t g = 0; g < groups.size() && !first_below; ++g)
    if (number(groups[g]["mean_q_excess"]) < t.divergence_threshold) first_below = g;
  std::vector<std::string> unclear;
  std::string summary;
  if (!first_below) {
    unclear.push_back(fmt::format("mean cross-model q_excess never falls below {}", t.divergence_threshold));
    summary = "no divergence point";
  } else {
    const json& g = groups[*first_below];
    summary = fmt::format("first below {} at depth {:.2f} (q_excess {:.3f}, {} CI {})", t.divergence_threshold,
                          number(g["relative_depth"]), number(g["mean_q_excess"]), level, interval(g["ci"]));
    bool rises_again = false;
    for (size_t d = *first_below; d < groups.size(); ++d)
      rises_again |= number(groups[d]["mean_q_excess"]) >= t.divergence_threshold;
    if (*first_below == 0) unclear.push_back("already below the threshold at the first depth");
    else if (rises_again) unclear.push_back("a deeper depth rises above the threshold again");
    divergence["value"] = g["relative_depth"];
  }
  finish_check(divergence, unclear, summary);
  divergence["threshold"] = t.divergence_threshold;
  return checks;
}

}  // namespace strata::validation
