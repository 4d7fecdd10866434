#include "report/analysis.hpp"

#include <boost/math/distributions/normal.hpp>

#include <cmath>
#include <numeric>
#include <random>

namespace strata::report {

std::string Bands::label(double q) const {
  if (q >= universal) return "universal";
  if (q >= partial) return "partial";
  if (q >= diverging) return "diverging";
  return "model-specific";
}

namespace {

double mean_of(const std::vector<double>& v) {
  return v.empty() ? std::numeric_limits<double>::quiet_NaN()
                   : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

double median_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::vector<std::vector<CellScore>> group_cells(const TransferResults& results) {
  std::map<std::string, std::vector<CellScore>> by_model;
  for (const auto& cell : results.universality) by_model[cell.model].push_back(cell);
  if (by_model.empty()) return {};
  size_t count = by_model.begin()->second.size();
  bool equal_counts = std::all_of(by_model.begin(), by_model.end(), [&](const auto& m) { return m.second.size() == count; });
  std::vector<std::vector<CellScore>> groups;
  if (equal_counts) {
    groups.resize(count);
    for (auto& [model, cells] : by_model) {
      std::sort(cells.begin(), cells.end(), [](const auto& a, const auto& b) { return a.layer < b.layer; });
      for (size_t k = 0; k < count; ++k) groups[k].push_back(cells[k]);
    }
  } else {
    std::map<long, std::vector<CellScore>> bins;
    for (const auto& cell : results.universality) bins[std::lround(cell.relative_depth * 10)].push_back(cell);
    for (auto& [bin, cells] : bins) groups.push_back(std::move(cells));
  }
  return groups;
}

}  // namespace

std::pair<double, double> bootstrap_mean_ci(const std::vector<double>& values, int resamples, uint64_t seed,
                                            double level) {
  if (values.empty()) return {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::quiet_NaN()};
  if (values.size() == 1) return {values[0], values[0]};
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, values.size() - 1);
  std::vector<double> means(resamples);
  for (int r = 0; r < resamples; ++r) {
    double sum = 0;
    for (size_t i = 0; i < values.size(); ++i) sum += values[pick(rng)];
    means[r] = sum / static_cast<double>(values.size());
  }
  std::sort(means.begin(), means.end());
  const double tail = (1 - level) / 2;
  auto at = [&](double q) {
    return means[std::min(means.size() - 1, static_cast<size_t>(std::floor(q * (means.size() - 1) + 0.5)))];
  };
  return {at(tail), at(1 - tail)};
}

TrendTest kendall_trend(const std::vector<double>& x, const std::vector<double>& y) {
  TrendTest test;
  const size_t n = std::min(x.size(), y.size());
  test.n = static_cast<int>(n);
  if (n < 3) return test;
  double s = 0, pairs_x = 0, pairs_y = 0;
  for (size_t i = 0; i < n; ++i)
    for (size_t j = i + 1; j < n; ++j) {
      const double dx = x[j] - x[i], dy = y[j] - y[i];
      const int sx = (dx > 0) - (dx < 0), sy = (dy > 0) - (dy < 0);
      s += sx * sy;
      pairs_x += sx != 0;
      pairs_y += sy != 0;
    }
  test.tau = (pairs_x > 0 && pairs_y > 0) ? s / std::sqrt(pairs_x * pairs_y) : 0.0;
  // Variance of S under H0 with ties in both variables (Kendall 1970, eq. 4.3).
  auto tie_groups = [&](const std::vector<double>& v) {
    std::vector<double> sorted(v.begin(), v.begin() + static_cast<long>(n));
    std::sort(sorted.begin(), sorted.end());
    std::vector<double> sizes;
    for (size_t i = 0; i < n;) {
      size_t j = i;
      while (j < n && sorted[j] == sorted[i]) ++j;
      if (j - i > 1) sizes.push_back(static_cast<double>(j - i));
      i = j;
    }
    return sizes;
  };
  const auto tx = tie_groups(x), ty = tie_groups(y);
  const double nn = static_cast<double>(n);
  double v0 = nn * (nn - 1) * (2 * nn + 5), vt = 0, vu = 0, t1 = 0, u1 = 0, t2 = 0, u2 = 0;
  for (double t : tx) { vt += t * (t - 1) * (2 * t + 5); t1 += t * (t - 1); t2 += t * (t - 1) * (t - 2); }
  for (double u : ty) { vu += u * (u - 1) * (2 * u + 5); u1 += u * (u - 1); u2 += u * (u - 1) * (u - 2); }
  const double var = (v0 - vt - vu) / 18 + t2 * u2 / (9 * nn * (nn - 1) * (nn - 2)) + t1 * u1 / (2 * nn * (nn - 1));
  if (var <= 0) return test;
  // Continuity correction toward zero.
  const double corrected = s > 0 ? s - 1 : (s < 0 ? s + 1 : 0);
  test.z = corrected / std::sqrt(var);
  test.p_decline = boost::math::cdf(boost::math::normal_distribution<double>(), test.z);
  return test;
}

Analysis analyse(const TransferResults& results, const AnalysisOptions& options) {
  Analysis a;
  a.options = options;
  a.total_pairs = static_cast<int>(results.pairs.size());

  for (auto& cells : group_cells(results)) {
    DepthGroup group;
    group.cells = cells;
    std::vector<double> values, depths, ckas;
    for (const auto& cell : cells) {
      values.push_back(cell.mean_cross_model_q_excess);
      depths.push_back(cell.relative_depth);
      if (cell.mean_cross_model_cka) ckas.push_back(*cell.mean_cross_model_cka);
    }
    group.relative_depth = mean_of(depths);
    group.mean_q_excess = mean_of(values);
    if (!ckas.empty()) group.mean_cka = mean_of(ckas);
    group.spread = *std::max_element(values.begin(), values.end()) - *std::min_element(values.begin(), values.end());
    std::vector<double> pair_values;
    for (const auto& pair : results.pairs) {
      if (pair.same_model) continue;
      bool from_group = std::any_of(cells.begin(), cells.end(), [&](const CellScore& c) {
        return c.model == pair.source_model && c.layer == pair.source_layer;
      });
      if (!from_group) continue;
      if (auto q = pair.metric("q_excess")) pair_values.push_back(*q);
      if (auto p = pair.metric("p_adjusted"))
        group.max_p_adjusted = std::max(group.max_p_adjusted.value_or(0.0), *p);
    }
    group.cross_model_pairs = static_cast<int>(pair_values.size());
    // The CI is over the same per-cell values whose mean is reported (resampling cells).
    std::tie(group.ci_lo, group.ci_hi) =
        bootstrap_mean_ci(values, options.bootstrap_resamples, options.bootstrap_seed + a.groups.size());
    a.max_spread = std::max(a.max_spread, group.spread);
    a.groups.push_back(std::move(group));
  }

  std::vector<double> depth, value;
  for (const auto& cell : results.universality) {
    depth.push_back(cell.relative_depth);
    value.push_back(cell.mean_cross_model_q_excess);
  }
  a.trend = kendall_trend(depth, value);

  if (!a.groups.empty()) {
    for (const auto& cell : results.universality)
      if (cell.relative_depth <= options.early_max_depth + 1e-12) a.early_cells.push_back(cell);
    if (a.early_cells.empty()) a.early_cells = a.groups.front().cells;
    std::vector<double> early_values;
    for (const auto& cell : a.early_cells) early_values.push_back(cell.mean_cross_model_q_excess);
    a.early_mean = mean_of(early_values);
    // As for the depth groups: the CI resamples the same per-cell values whose mean is reported (each
    // cell's layer-universality score), so the estimate always lies inside its interval.
    std::tie(a.early_ci_lo, a.early_ci_hi) =
        bootstrap_mean_ci(early_values, options.bootstrap_resamples, options.bootstrap_seed + 999);
    a.early_universal = a.early_mean > options.early_universal;
    for (size_t g = 0; g < a.groups.size(); ++g)
      if (a.groups[g].mean_q_excess < options.divergence_threshold) {
        a.divergence_group = g;
        break;
      }
    if (a.divergence_group) {
      a.divergence_clear = *a.divergence_group > 0;
      for (size_t g = *a.divergence_group; g < a.groups.size(); ++g)
        if (a.groups[g].mean_q_excess >= options.divergence_threshold) a.divergence_clear = false;
    }
    double deepest_dip = 0;
    for (size_t g = 1; g + 1 < a.groups.size(); ++g) {
      const double dip = std::min(a.groups[g - 1].mean_q_excess, a.groups[g + 1].mean_q_excess) - a.groups[g].mean_q_excess;
      if (dip >= options.bottleneck_margin && dip > deepest_dip) {
        deepest_dip = dip;
        a.bottleneck_group = g;
      }
    }
    for (size_t g = 0; g < a.groups.size(); ++g)
      if (a.groups[g].mean_q_excess >= options.bands.partial) a.recommended_group = g;
    if (!a.recommended_group) {
      size_t best = 0;
      for (size_t g = 1; g < a.groups.size(); ++g)
        if (a.groups[g].mean_q_excess > a.groups[best].mean_q_excess) best = g;
      a.recommended_group = best;
    }
  }

  std::map<std::pair<std::string, std::string>, std::vector<const PairResult*>> by_models;
  std::vector<double> q_null, within, mmac, mmac_random;
  for (const auto& pair : results.pairs) {
    by_models[{pair.source_model, pair.target_model}].push_back(&pair);
    if (pair.metric("p_adjusted")) ++a.pairs_with_p;
    if (auto v = pair.metric("q_null")) q_null.push_back(*v);
    if (auto v = pair.metric("mmac")) mmac.push_back(*v);
    if (auto v = pair.metric("mmac_random")) mmac_random.push_back(*v);
    if (pair.same_model && pair.source != pair.target)
      if (auto v = pair.metric("q_excess")) within.push_back(*v);
  }
  if (!q_null.empty()) a.mean_q_null = mean_of(q_null);
  if (!within.empty()) a.mean_q_excess_within = mean_of(within);
  if (!mmac.empty()) a.mean_mmac = mean_of(mmac);
  if (!mmac_random.empty()) a.mean_mmac_random = mean_of(mmac_random);

  for (const auto& source : results.models)
    for (const auto& target : results.models) {
      auto it = by_models.find({source, target});
      if (it == by_models.end()) continue;
      ModelPairSummary s;
      s.source_model = source;
      s.target_model = target;
      std::vector<double> q, cka, p, retained;
      for (const auto* pair : it->second) {
        if (pair->source == pair->target) continue;  // the diagonal is 1 by construction
        if (auto v = pair->metric("q_excess")) q.push_back(*v);
        if (auto v = pair->metric("cka")) cka.push_back(*v);
        if (auto v = pair->metric("retained_fraction")) retained.push_back(*v);
        if (auto v = pair->metric("p_adjusted")) {
          p.push_back(*v);
          s.significant += *v < options.alpha;
        }
      }
      s.pairs = static_cast<int>(q.size());
      if (q.empty()) continue;
      s.mean_q_excess = mean_of(q);
      std::tie(s.ci_lo, s.ci_hi) = bootstrap_mean_ci(q, options.bootstrap_resamples,
                                                      options.bootstrap_seed + 1000 + a.model_pairs.size());
      if (!cka.empty()) s.mean_cka = mean_of(cka);
      if (!p.empty()) s.median_p_adjusted = median_of(p);
      if (!retained.empty()) s.mean_retained_fraction = mean_of(retained);
      a.model_pairs.push_back(std::move(s));
    }
  return a;
}

}  // namespace strata::report
