#include "report/analysis.hpp"

#include <boost/math/distributions/normal.hpp>

#include <cmath>
#include <numeric>
#include <random>
#include <set>

#include "core/error.hpp"
#include "transfer/transfer.hpp"
#include "core/random.hpp"

namespace strata::report {
using nlohmann::json;

std::string ci_label(double level) { return fmt::format("{:g}%", level * 100); }

std::map<std::string, std::string> control_models(const json& resolved) {
  std::map<std::string, std::string> controls;
  if (!resolved.is_object() || !resolved.contains("models") || !resolved["models"].is_array()) return controls;
  for (const auto& model : resolved["models"]) {
    if (!model.is_object()) continue;
    auto twin = model.find("control_of");
    if (twin == model.end() || !twin->is_string() || twin->get<std::string>().empty()) continue;
    controls[model.value("name", model.value("id", ""))] = twin->get<std::string>();
  }
  return controls;
}

AnalysisOptions analysis_options(const json& resolved) {
  AnalysisOptions a;
  if (!resolved.is_object()) return a;
  auto section = [&](const char* name) {
    return resolved.contains(name) && resolved[name].is_object() ? resolved[name] : json::object();
  };
  auto read = [](const json& from, const char* key, auto& field) {
    if (from.contains(key) && from[key].is_number()) field = from[key].get<std::decay_t<decltype(field)>>();
  };
  const json transfer = section("transfer"), gates = section("gates"), experiment = section("experiment");
  read(transfer, "high_threshold", a.bands.universal);
  read(transfer, "moderate_threshold", a.bands.partial);
  read(transfer, "diverging_threshold", a.bands.diverging);
  read(transfer, "bootstrap", a.bootstrap_resamples);
  read(transfer, "ci_level", a.ci_level);
  read(gates, "divergence_threshold", a.divergence_threshold);
  read(gates, "early_transfer", a.early_universal);
  read(gates, "early_max_depth", a.early_max_depth);
  read(gates, "trend_alpha", a.alpha);
  read(gates, "max_l0_fraction", a.max_l0_fraction);
  read(gates, "max_dead_fraction", a.max_dead_fraction);
  if (experiment.contains("seed") && experiment["seed"].is_number_integer())
    a.bootstrap_seed = derive(experiment["seed"].get<uint64_t>(), "analysis", "", int64_t{-1});
  a.controls = control_models(resolved);
  return a;
}

AnalysisOptions analysis_options_for_run(const std::filesystem::path& run_dir) {
  const auto resolved = read_json_if_exists(run_dir / "config.resolved.json");
  return resolved ? analysis_options(*resolved) : AnalysisOptions{};
}

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
  // No resamples (bootstrap = 0) means no interval, not an interval of nothing.
  if (values.empty() || resamples <= 0)
    return {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::quiet_NaN()};
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

TransferResults without_models(const TransferResults& all, const std::map<std::string, std::string>& removed) {
  if (removed.empty()) return all;
  auto kept = [&](const std::string& model) { return !removed.count(model); };
  TransferResults main;
  main.document = all.document;
  for (const auto& model : all.models)
    if (kept(model)) main.models.push_back(model);
  for (const auto& cell : all.cells)
    if (kept(all.model_of(cell))) main.cells.push_back(cell);
  std::map<std::string, const PairResult*> by_key;
  for (const auto& pair : all.pairs) {
    by_key[transfer::pair_key(pair.source, pair.target)] = &pair;
    if (kept(pair.source_model) && kept(pair.target_model)) main.pairs.push_back(pair);
  }
  for (const auto& score : all.universality) {
    if (!kept(score.model)) continue;
    CellScore cell = score;
    if (score.pairs.empty())
      fail("transfer/transfer_matrix.json: the layer_universality_scores entry of {} lists no \"pairs\", so the "
           "control model(s) cannot be left out of it; re-run the transfer step",
           score.name());
    cell.pairs.clear();
    double q = 0, cka = 0;
    int n_cka = 0;
    for (const auto& key : score.pairs) {
      auto it = by_key.find(key);
      if (it == by_key.end())
        fail("transfer/transfer_matrix.json: {}'s universality score names pair {}, which is not in the matrix; "
             "re-run the transfer step",
             score.name(), key);
      if (!kept(it->second->source_model) || !kept(it->second->target_model)) continue;
      cell.pairs.push_back(key);
      q += it->second->metric("q_excess").value_or(std::numeric_limits<double>::quiet_NaN());
      if (auto c = it->second->metric("cka")) {
        cka += *c;
        ++n_cka;
      }
    }
    if (cell.pairs.size() == score.pairs.size()) {  // nothing removed: the transfer step's numbers stand
      main.universality.push_back(cell);
      continue;
    }
    if (cell.pairs.empty()) continue;  // only the removed models to compare with: no score
    cell.mean_cross_model_q_excess = q / static_cast<double>(cell.pairs.size());
    cell.mean_cross_model_cka = n_cka ? std::optional<double>(cka / n_cka) : std::nullopt;
    cell.ci_lo.reset();  // the sequence-bootstrap replicates behind the recorded CI are not in the file
    cell.ci_hi.reset();
    main.universality.push_back(cell);
  }
  for (const auto& ceiling : all.seed_ceilings)
    if (!ceiling.contains("cell") || kept(all.model_of(ceiling["cell"].get<std::string>())))
      main.seed_ceilings.push_back(ceiling);
  return main;
}

std::vector<SaeSparsity> sae_sparsity(const std::vector<SaeSummary>& saes, const AnalysisOptions& options) {
  std::vector<SaeSparsity> out;
  for (const auto& sae : saes) {
    SaeSparsity s;
    s.cell = sae.cell;
    s.l0 = sae.metric("l0");
    if (auto d = sae.cfg.find("d_in"); d != sae.cfg.end() && d->is_number()) s.d_in = d->get<double>();
    s.dead_fraction = sae.metric("dead_fraction");
    if (!s.l0_fraction()) s.problems.push_back(fmt::format("{}: L0 or d_in not recorded", s.cell));
    else if (*s.l0_fraction() > options.max_l0_fraction)
      s.problems.push_back(fmt::format("{}: L0 {:.1f} is {:.2f} of d_in {} (max {})", s.cell, *s.l0, *s.l0_fraction(),
                                       *s.d_in, options.max_l0_fraction));
    if (!s.dead_fraction) s.problems.push_back(fmt::format("{}: dead fraction not recorded", s.cell));
    else if (*s.dead_fraction > options.max_dead_fraction)
      s.problems.push_back(fmt::format("{}: dead fraction {:.3f} (max {})", s.cell, *s.dead_fraction,
                                       options.max_dead_fraction));
    out.push_back(std::move(s));
  }
  return out;
}

int PositiveControl::separated_depths() const {
  return static_cast<int>(std::count_if(depths.begin(), depths.end(), [](const ControlDepth& d) { return d.separates(); }));
}

namespace {

std::optional<std::pair<double, double>> interval_of(const std::array<std::optional<double>, 2>& ci) {
  if (!ci[0] || !ci[1]) return std::nullopt;
  return std::make_pair(*ci[0], *ci[1]);
}

// The control's same-layer pairs with its twin, beside the cross-family pairs of the twin's depth group.
PositiveControl control_analysis(const TransferResults& all, const std::string& control, const std::string& twin,
                                 const std::vector<DepthGroup>& groups, const AnalysisOptions& options) {
  PositiveControl pc{control, twin, {}};
  std::vector<int> layers;
  for (const auto& cell : all.cells)
    if (all.model_of(cell) == control) layers.push_back(all.layer_of(cell));
  for (int layer : layers) {
    ControlDepth d;
    d.control_cell = cell_name(control, layer);
    d.twin_cell = cell_name(twin, layer);
    const PairResult* there = all.find(d.control_cell, d.twin_cell);
    const PairResult* back = all.find(d.twin_cell, d.control_cell);
    if (!there || !back) continue;  // the twin has no cell at this layer
    std::vector<double> q, cka, mmac, map_r2;
    for (const PairResult* p : {there, back}) {
      if (auto v = p->metric("q_excess")) q.push_back(*v);
      if (auto v = p->metric("cka")) cka.push_back(*v);
      if (auto v = p->metric("mmac")) mmac.push_back(*v);
      if (auto v = p->metric("map_r2")) map_r2.push_back(*v);
      if (auto ci = interval_of(p->q_excess_ci)) {
        d.q_lo = std::min(d.q_lo.value_or(ci->first), ci->first);
        d.q_hi = std::max(d.q_hi.value_or(ci->second), ci->second);
      }
      if (auto ci = interval_of(p->cka_ci)) {
        d.cka_lo = std::min(d.cka_lo.value_or(ci->first), ci->first);
        d.cka_hi = std::max(d.cka_hi.value_or(ci->second), ci->second);
      }
    }
    if (!q.empty()) d.q_excess = mean_of(q);
    if (!cka.empty()) d.cka = mean_of(cka);
    if (!mmac.empty()) d.mmac = mean_of(mmac);
    if (!map_r2.empty()) d.map_r2 = mean_of(map_r2);
    // The twin's depth group: every other family's cell at that depth.
    const DepthGroup* group = nullptr;
    for (const auto& g : groups)
      for (const auto& cell : g.cells)
        if (cell.name() == d.twin_cell) group = &g;
    if (group) {
      d.relative_depth = group->relative_depth;
      std::vector<double> fq, fcka, fmmac, fmap;
      for (const auto& s : group->cells)
        for (const auto& t : group->cells) {
          if (s.model == t.model) continue;
          const PairResult* p = all.find(s.name(), t.name());
          if (!p) continue;
          if (auto v = p->metric("q_excess")) fq.push_back(*v);
          if (auto v = p->metric("cka")) fcka.push_back(*v);
          if (auto v = p->metric("mmac")) fmmac.push_back(*v);
          if (auto v = p->metric("map_r2")) fmap.push_back(*v);
        }
      d.cross_family_pairs = static_cast<int>(fq.size());
      const uint64_t seed = derive(options.bootstrap_seed, "positive-control", control, layer);
      if (!fq.empty()) {
        d.family_q_excess = mean_of(fq);
        auto [lo, hi] = bootstrap_mean_ci(fq, options.bootstrap_resamples, seed, options.ci_level);
        if (std::isfinite(lo)) d.family_q_lo = lo, d.family_q_hi = hi;
      }
      if (!fcka.empty()) {
        d.family_cka = mean_of(fcka);
        auto [lo, hi] = bootstrap_mean_ci(fcka, options.bootstrap_resamples, seed + 1, options.ci_level);
        if (std::isfinite(lo)) d.family_cka_lo = lo, d.family_cka_hi = hi;
      }
      if (!fmmac.empty()) d.family_mmac = mean_of(fmmac);
      if (!fmap.empty()) d.family_map_r2 = mean_of(fmap);
    } else {
      d.relative_depth = std::numeric_limits<double>::quiet_NaN();
      for (const auto& cell : all.universality)
        if (cell.name() == d.twin_cell) d.relative_depth = cell.relative_depth;
    }
    pc.depths.push_back(std::move(d));
  }
  return pc;
}

}  // namespace

Analysis analyse(const TransferResults& all, const AnalysisOptions& options, const std::vector<SaeSummary>& saes) {
  const TransferResults results = without_models(all, options.controls);
  Analysis a;
  a.options = options;
  a.sparsity = sae_sparsity(saes, options);
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
        bootstrap_mean_ci(values, options.bootstrap_resamples, options.bootstrap_seed + a.groups.size(), options.ci_level);
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
        bootstrap_mean_ci(early_values, options.bootstrap_resamples, options.bootstrap_seed + 999, options.ci_level);
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
                                                      options.bootstrap_seed + 1000 + a.model_pairs.size(), options.ci_level);
      if (!cka.empty()) s.mean_cka = mean_of(cka);
      if (!p.empty()) s.median_p_adjusted = median_of(p);
      if (!retained.empty()) s.mean_retained_fraction = mean_of(retained);
      a.model_pairs.push_back(std::move(s));
    }
  for (const auto& [control, twin] : options.controls)
    a.positive_controls.push_back(control_analysis(all, control, twin, a.groups, options));
  return a;
}

namespace {

json number_or_null(double v) { return std::isfinite(v) ? json(v) : json(); }
json optional_number(const std::optional<double>& v) { return v ? number_or_null(*v) : json(); }
json interval(double lo, double hi) { return json::array({number_or_null(lo), number_or_null(hi)}); }
json optional_interval(const std::optional<double>& lo, const std::optional<double>& hi) {
  return json::array({optional_number(lo), optional_number(hi)});
}
json cell_names(const std::vector<CellScore>& cells) {
  json names = json::array();
  for (const auto& c : cells) names.push_back(c.name());
  return names;
}
json optional_index(const std::optional<size_t>& i) { return i ? json(*i) : json(); }

}  // namespace

json to_json(const Analysis& a) {
  const AnalysisOptions& o = a.options;
  json out;
  out["options"] = {{"bands", {{"universal", o.bands.universal}, {"partial", o.bands.partial}, {"diverging", o.bands.diverging}}},
                    {"divergence_threshold", o.divergence_threshold},
                    {"early_universal", o.early_universal},
                    {"early_max_depth", o.early_max_depth},
                    {"bottleneck_margin", o.bottleneck_margin},
                    {"alpha", o.alpha},
                    {"bootstrap_resamples", o.bootstrap_resamples},
                    {"bootstrap_seed", o.bootstrap_seed},
                    {"ci_level", o.ci_level},
                    {"max_l0_fraction", o.max_l0_fraction},
                    {"max_dead_fraction", o.max_dead_fraction},
                    {"controls", o.controls}};
  json groups = json::array();
  for (const auto& g : a.groups)
    groups.push_back({{"relative_depth", number_or_null(g.relative_depth)},
                      {"cells", cell_names(g.cells)},
                      {"mean_q_excess", number_or_null(g.mean_q_excess)},
                      {"ci", interval(g.ci_lo, g.ci_hi)},
                      {"band", o.bands.label(g.mean_q_excess)},
                      {"mean_cka", optional_number(g.mean_cka)},
                      {"spread", number_or_null(g.spread)},
                      {"cross_model_pairs", g.cross_model_pairs},
                      {"max_p_adjusted", optional_number(g.max_p_adjusted)}});
  out["groups"] = groups;
  out["early"] = {{"cells", cell_names(a.early_cells)},
                  {"mean_q_excess", a.early_cells.empty() ? json() : number_or_null(a.early_mean)},
                  {"ci", interval(a.early_ci_lo, a.early_ci_hi)},
                  {"universal", a.early_universal}};
  out["trend"] = {{"n", a.trend.n},
                  {"tau", number_or_null(a.trend.tau)},
                  {"z", number_or_null(a.trend.z)},
                  {"p_decline", number_or_null(a.trend.p_decline)},
                  {"declining", a.trend.declining(o.alpha)}};
  out["divergence_group"] = optional_index(a.divergence_group);
  out["divergence_clear"] = a.divergence_clear;
  out["bottleneck_group"] = optional_index(a.bottleneck_group);
  out["recommended_group"] = optional_index(a.recommended_group);
  out["max_spread"] = number_or_null(a.max_spread);
  json pairs = json::array();
  for (const auto& s : a.model_pairs)
    pairs.push_back({{"source_model", s.source_model},
                     {"target_model", s.target_model},
                     {"pairs", s.pairs},
                     {"mean_q_excess", number_or_null(s.mean_q_excess)},
                     {"ci", interval(s.ci_lo, s.ci_hi)},
                     {"mean_cka", optional_number(s.mean_cka)},
                     {"median_p_adjusted", optional_number(s.median_p_adjusted)},
                     {"significant", s.median_p_adjusted ? json(s.significant) : json()},
                     {"mean_retained_fraction", optional_number(s.mean_retained_fraction)}});
  out["model_pairs"] = pairs;
  out["total_pairs"] = a.total_pairs;
  out["pairs_with_p"] = a.pairs_with_p;
  out["mean_q_null"] = optional_number(a.mean_q_null);
  out["mean_q_excess_within"] = optional_number(a.mean_q_excess_within);
  out["mean_mmac"] = optional_number(a.mean_mmac);
  out["mean_mmac_random"] = optional_number(a.mean_mmac_random);
  json controls = json::array();
  for (const auto& pc : a.positive_controls) {
    json depths = json::array();
    for (const auto& d : pc.depths)
      depths.push_back({{"control_cell", d.control_cell},
                        {"twin_cell", d.twin_cell},
                        {"relative_depth", number_or_null(d.relative_depth)},
                        {"q_excess", optional_number(d.q_excess)},
                        {"q_excess_ci", optional_interval(d.q_lo, d.q_hi)},
                        {"cka", optional_number(d.cka)},
                        {"cka_ci", optional_interval(d.cka_lo, d.cka_hi)},
                        {"mmac", optional_number(d.mmac)},
                        {"cross_family_pairs", d.cross_family_pairs},
                        {"cross_family_q_excess", optional_number(d.family_q_excess)},
                        {"cross_family_q_excess_ci", optional_interval(d.family_q_lo, d.family_q_hi)},
                        {"cross_family_cka", optional_number(d.family_cka)},
                        {"cross_family_cka_ci", optional_interval(d.family_cka_lo, d.family_cka_hi)},
                        {"cross_family_mmac", optional_number(d.family_mmac)},
                        {"map_r2", optional_number(d.map_r2)},
                        {"cross_family_map_r2", optional_number(d.family_map_r2)},
                        {"separates", d.separates()}});
    controls.push_back({{"control", pc.control}, {"twin", pc.twin}, {"separated_depths", pc.separated_depths()},
                        {"depths", depths}});
  }
  out["positive_controls"] = controls;
  json sparsity = json::array();
  for (const auto& s : a.sparsity)
    sparsity.push_back({{"cell", s.cell},
                        {"l0", optional_number(s.l0)},
                        {"d_in", optional_number(s.d_in)},
                        {"l0_fraction", optional_number(s.l0_fraction())},
                        {"dead_fraction", optional_number(s.dead_fraction)},
                        {"problems", s.problems}});
  out["sparsity"] = sparsity;
  return out;
}

}  // namespace strata::report
