#include "report/report.hpp"

#include <cmath>
#include <numeric>
#include <sstream>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/log.hpp"
#include "report/tables.hpp"

namespace strata::report {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string opt(const std::optional<double>& v, int decimals = 3) { return v ? fixed(*v, decimals) : "n/a"; }

std::optional<double> number_or_null(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

std::string ci(double lo, double hi) { return fmt::format("[{}, {}]", fixed(lo), fixed(hi)); }

std::string json_scalar(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "n/a";
  return v.dump();
}

std::string depth_label(const DepthGroup& g) { return fmt::format("{:.2f}", g.relative_depth); }

std::string group_cells(const DepthGroup& g) {
  std::vector<std::string> names;
  for (const auto& c : g.cells) names.push_back(fmt::format("{}:{}", c.model, c.layer));
  return fmt::format("{}", fmt::join(names, ", "));
}

std::string p_or_not_computed(const std::optional<double>& p) { return p ? p_value(*p) : kNotComputed; }

Table layer_table(const Analysis& a) {
  const std::string level = ci_label(a.options.ci_level);
  Table t{"per_layer",
          fmt::format("Mean cross-model transfer quality by relative depth ({} bootstrap CI over the group's cells).", level),
          {"depth group", "relative depth", "cells", "mean q_excess", level + " CI", "band", "mean CKA", "spread across models",
           "cross-model pairs", "max BH p (CKA)"},
          {}};
  for (size_t g = 0; g < a.groups.size(); ++g) {
    const auto& group = a.groups[g];
    t.rows.push_back({std::to_string(g + 1), depth_label(group), group_cells(group), fixed(group.mean_q_excess),
                      ci(group.ci_lo, group.ci_hi), a.options.bands.label(group.mean_q_excess), opt(group.mean_cka),
                      fixed(group.spread), std::to_string(group.cross_model_pairs),
                      p_or_not_computed(group.max_p_adjusted)});
  }
  return t;
}

Table model_pair_table(const Analysis& a) {
  Table t{"per_model_pair",
          "Transfer quality by (source model, target model), over all their layer pairs except a cell with itself.",
          {"source model", "target model", "pairs", "mean q_excess", ci_label(a.options.ci_level) + " CI", "mean CKA", "median BH p (CKA)",
           "significant (p_adj < alpha)", "retained token fraction"},
          {}};
  for (const auto& s : a.model_pairs)
    t.rows.push_back({s.source_model, s.target_model, std::to_string(s.pairs), fixed(s.mean_q_excess), ci(s.ci_lo, s.ci_hi),
                      opt(s.mean_cka), p_or_not_computed(s.median_p_adjusted),
                      s.median_p_adjusted ? fmt::format("{}/{}", s.significant, s.pairs) : kNotComputed,
                      opt(s.mean_retained_fraction)});
  return t;
}

Table pair_table(const TransferResults& r, const AnalysisOptions& ao) {
  Table t{"pairs", "Every (source SAE, target cell) pair.",
          {"source", "target", "q", "q_null", "q_excess", "q_excess " + ci_label(ao.ci_level) + " CI", "CKA", "CKA p (BH)", "MMAC", "MMAC random",
           "transfer_recon_ratio", "evaluation"},
          {}};
  for (const auto& source : r.cells)
    for (const auto& target : r.cells) {
      const PairResult* p = r.find(source, target);
      if (!p) continue;
      std::string q_ci = "n/a";
      if (p->q_excess_ci[0] && p->q_excess_ci[1]) q_ci = ci(*p->q_excess_ci[0], *p->q_excess_ci[1]);
      auto p_adj = p->metric("p_adjusted");
      t.rows.push_back({source, target, opt(p->metric("q")), opt(p->metric("q_null")), opt(p->metric("q_excess")), q_ci,
                        opt(p->metric("cka")), p_or_not_computed(p_adj), opt(p->metric("mmac")),
                        opt(p->metric("mmac_random")), opt(p->metric("transfer_recon_ratio")),
                        p->evaluation.empty() ? std::string("n/a") : p->evaluation});
    }
  return t;
}

Table sae_table(const std::vector<SaeSummary>& saes) {
  Table t{"saes",
          "SAE quality on the held-out split. Source: trained by this run, or the published SAE's format and the "
          "path or hf:// address it was read from (its hash is in the manifest's cells[].sae).",
          {"SAE", "source", "architecture", "d_in", "d_sae", "FVU", "explained variance", "L0", "dead fraction",
           "converged", "diverged", "epochs"},
          {}};
  for (const auto& s : saes) {
    auto flag = [&](const char* key) {
      auto it = s.metrics.find(key);
      return it != s.metrics.end() && it->is_boolean() ? (it->get<bool>() ? "yes" : "no") : "n/a";
    };
    std::string source = "trained";
    if (auto p = s.cfg.find("published"); p != s.cfg.end() && p->is_object())
      source = fmt::format("{} ({})", p->value("format", "published"), p->value("source", "?"));
    t.rows.push_back({s.cell, source, s.cfg.value("architecture", "n/a"), json_scalar(s.cfg.value("d_in", json())),
                      json_scalar(s.cfg.value("d_sae", json())), opt(s.metric("fvu")), opt(s.metric("explained_variance")),
                      opt(s.metric("l0"), 1), opt(s.metric("dead_fraction")), flag("converged"), flag("diverged"),
                      json_scalar(s.metrics.value("epochs_run", json()))});
  }
  return t;
}

Table control_table(const PositiveControl& pc, const AnalysisOptions& ao) {
  const std::string level = ci_label(ao.ci_level);
  Table t{"positive_control_" + pc.control,
          fmt::format("Positive control: {} (a second training of {}) against its twin at each depth, beside the "
                      "cross-family pairs of that depth. Control: mean of both directions, CI the union of the two "
                      "directions' {} sequence-bootstrap intervals; cross-family: mean with a {} bootstrap CI over "
                      "its pairs.",
                      pc.control, pc.twin, level, level),
          {"relative depth", "control pair", "control q_excess", level + " CI", "cross-family q_excess", level + " CI",
           "control CKA", level + " CI", "cross-family CKA", level + " CI", "control MMAC", "cross-family MMAC",
           "control map R2", "cross-family map R2", "cross-family pairs", "separates"},
          {}};
  auto interval = [](const std::optional<double>& lo, const std::optional<double>& hi) {
    return lo && hi ? ci(*lo, *hi) : std::string("n/a");
  };
  for (const auto& d : pc.depths)
    t.rows.push_back({fixed(d.relative_depth, 2), d.control_cell + " <-> " + d.twin_cell, opt(d.q_excess),
                      interval(d.q_lo, d.q_hi), opt(d.family_q_excess), interval(d.family_q_lo, d.family_q_hi),
                      opt(d.cka), interval(d.cka_lo, d.cka_hi), opt(d.family_cka),
                      interval(d.family_cka_lo, d.family_cka_hi), opt(d.mmac), opt(d.family_mmac), opt(d.map_r2),
                      opt(d.family_map_r2), std::to_string(d.cross_family_pairs), d.separates() ? "yes" : "no"});
  return t;
}

const char* kDefinitions = R"(All FVU-based quantities are pooled over the evaluation split and accumulated in fp64.

| metric | definition |
| --- | --- |
| FVU | sum_i ||x_i - x_hat_i||^2 / sum_i ||x_i - mean(x)||^2 (fraction of variance unexplained) |
| explained variance (EV) | 1 - FVU |
| L0 | mean number of active latents per token |
| sparsity | L0 / d_sae (fraction of latents active per token) |
| dead fraction | fraction of latents that never fire on the held-out split |
| transfer_recon_ratio | FVU(SAE_i on mapped target) / FVU(SAE_i on its own cell) |
| q | EV_target / EV_source: EV of SAE_i on the mapped target over EV on its own cell |
| q_null | q with target rows shuffled against source rows before the map is fit |
| q_excess | (q - q_null) / (1 - q_null), the headline transfer quality (0 = chance, 1 = as good as on its own cell) |
| map | within a model: identity after scaling to E||x||^2 = d; across models: semi-orthogonal Procrustes Q = U V^T from the thin SVD of Z^T Y, rescaled to the source's total variance |
| feature_variance_ratio | mean over SAE_i's top-k latents (by source variance) of variance on mapped target / variance on own cell |
| top_k_spearman | Spearman's rho between those per-latent variances (p-value: top_k_spearman_p) |
| decoder_similarity | mean over SAE_i's top-k latents of the best cosine between its decoder row and SAE_j's mapped decoder rows |
| CKA | linear CKA = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred evaluation activations, no map (Kornblith et al. 2019) |
| map_r2 | held-out R^2 of a ridge map target -> source (a map-only baseline) |
| MMAC | mean over alive latents of SAE_i (>= 10 firings) of the best Pearson correlation with any alive latent of SAE_j over aligned tokens (Lan et al. 2024); mmac_weighted weights by activation mass; mmac_random uses random unit dictionaries at the same L0 |
| p_adjusted | Benjamini-Hochberg adjustment across all pairs of the CKA permutation p-value |
| mean cross-model q_excess | for a cell: mean q_excess of its SAE over the target cells of the other models |
| spread | at one depth: max - min over models of the cells' mean cross-model q_excess |
| divergence point | the first depth group whose mean cross-model q_excess falls below the divergence threshold |
| trend test | one-sided Kendall (Mann-Kendall) test of cell mean cross-model q_excess against relative depth, tie-corrected, normal approximation with continuity correction |
)";

}  // namespace

ReportResult write_report(const fs::path& run_dir, const ReportOptions& options) {
  if (!fs::is_directory(run_dir)) fail("run directory {} does not exist", run_dir.string());
  const AnalysisOptions ao = options.analysis ? *options.analysis : analysis_options_for_run(run_dir);
  const TransferResults everything = load_transfer(run_dir);
  const TransferResults results = without_models(everything, ao.controls);  // the main matrix
  const auto saes = load_saes(run_dir);
  const Analysis a = analyse(everything, ao, saes);
  const std::optional<json> manifest = read_json_if_exists(run_dir / "manifest.json");
  const std::optional<json> figures = read_json_if_exists(run_dir / "figures" / "figures.json");
  const std::string level = ci_label(ao.ci_level);

  ReportResult result;
  const fs::path report_dir = run_dir / "report";
  const fs::path tables_dir = report_dir / "tables";
  std::vector<Table> tables = {layer_table(a), model_pair_table(a), pair_table(results, ao), sae_table(saes)};

  std::ostringstream md;
  std::string run_name = run_dir.filename().string();
  if (options.experiment_name)
    run_name = *options.experiment_name;
  else if (auto resolved = read_json_if_exists(run_dir / "config.resolved.json");
           resolved && resolved->contains("experiment") && (*resolved)["experiment"].contains("name"))
    run_name = (*resolved)["experiment"]["name"].get<std::string>();
  md << "# strata report: " << run_name << "\n\n";
  md << "The go/no-go verdict is the gates step's, which runs after this report and judges the same analysis "
        "(report/analysis.json): see gates/gates.json, or run `strata gate RUN_DIR`.\n\n";
  md << fmt::format("{} models, {} cells, {} SAE x activation pairs, {} SAEs.\n\n", results.models.size(),
                    results.cells.size(), results.pairs.size(), saes.size());
  if (!ao.controls.empty()) {
    std::vector<std::string> names;
    for (const auto& [control, twin] : ao.controls) names.push_back(fmt::format("{} (of {})", control, twin));
    md << fmt::format("Positive control{} {} left out of the main matrix (the pair counts, tables, figures and "
                      "Q1-Q4; the SAE table includes it) and reported in the \"Positive control\" section.\n\n",
                      names.size() > 1 ? "s" : "", fmt::join(names, ", "));
  }

  // ---- Executive summary ----
  md << "## Executive summary\n\n";
  if (a.groups.empty()) {
    md << "No cross-model scores (layer_universality_scores is empty: a single-model run has no cross-model "
          "transfer), so Q1-Q4 cannot be answered.\n\n";
  } else {
    std::vector<std::string> early_names;
    std::vector<double> early_ckas;
    for (const auto& c : a.early_cells) {
      early_names.push_back(fmt::format("{}:{}", c.model, c.layer));
      if (c.mean_cross_model_cka) early_ckas.push_back(*c.mean_cross_model_cka);
    }
    double early_cka = early_ckas.empty() ? std::nan("")
                                          : std::accumulate(early_ckas.begin(), early_ckas.end(), 0.0) / early_ckas.size();
    md << fmt::format(
        "- **Q1. Are early layers universal?** {}. Over the early cells (relative depth <= {:.2f}: {}), the mean "
        "cross-model q_excess is {} ({} CI {}), {} the criterion q_excess > {:.2f}; band: {}. Criterion: q_excess, "
        "the SAE's explained variance on another model's mapped activations relative to its own, corrected for the "
        "shuffled-pairing null{}.\n",
        a.early_universal ? "Yes" : "No", ao.early_max_depth, fmt::join(early_names, ", "), fixed(a.early_mean), level,
        ci(a.early_ci_lo, a.early_ci_hi), a.early_universal ? "above" : "not above", ao.early_universal,
        ao.bands.label(a.early_mean),
        std::isfinite(early_cka) ? fmt::format("; their mean cross-model linear CKA is {}", fixed(early_cka)) : "");
    if (a.divergence_group) {
      const DepthGroup& d = a.groups[*a.divergence_group];
      md << fmt::format(
          "- **Q2. Divergence point:** relative depth {} (depth group {}), the first depth where the mean cross-model "
          "q_excess ({}, {} CI {}) falls below {:.2f}; {}.\n",
          depth_label(d), *a.divergence_group + 1, fixed(d.mean_q_excess), level, ci(d.ci_lo, d.ci_hi), ao.divergence_threshold,
          a.divergence_clear ? "every deeper depth stays below it (a clear divergence point)"
                             : (*a.divergence_group == 0 ? "already at the first depth, so no universal prefix"
                                                         : "but a deeper depth rises above it again (not a clean break)"));
    } else {
      md << fmt::format("- **Q2. Divergence point:** none; the mean cross-model q_excess stays >= {:.2f} at every depth "
                        "(lowest: {}).\n",
                        ao.divergence_threshold,
                        fixed(std::min_element(a.groups.begin(), a.groups.end(), [](const auto& x, const auto& y) {
                                return x.mean_q_excess < y.mean_q_excess;
                              })->mean_q_excess));
    }
    if (a.bottleneck_group) {
      const DepthGroup& b = a.groups[*a.bottleneck_group];
      const DepthGroup &before = a.groups[*a.bottleneck_group - 1], &after = a.groups[*a.bottleneck_group + 1];
      // Whether the CIs separate the dip from both neighbours (a conservative check).
      const bool resolved = b.ci_hi < before.ci_lo && b.ci_hi < after.ci_lo;
      md << fmt::format("- **Q3. Bottleneck:** relative depth {} ({}) dips to {} ({} CI {}) while its neighbouring "
                        "depths reach {} ({}) and {} ({}) (a dip of at least {:.2f}); {}.\n",
                        depth_label(b), group_cells(b), fixed(b.mean_q_excess), level, ci(b.ci_lo, b.ci_hi),
                        fixed(before.mean_q_excess), ci(before.ci_lo, before.ci_hi), fixed(after.mean_q_excess),
                        ci(after.ci_lo, after.ci_hi), ao.bottleneck_margin,
                        resolved ? "its CI lies below both neighbours' CIs, so the dip is resolved at this sample size"
                                 : "the CIs overlap, so the dip is suggestive, not resolved at this sample size");
    } else {
      md << fmt::format("- **Q3. Bottleneck:** none stands out (no interior depth lies {:.2f} or more below both "
                        "neighbours).\n",
                        ao.bottleneck_margin);
    }
    if (a.recommended_group) {
      const DepthGroup& r = a.groups[*a.recommended_group];
      const bool in_band = r.mean_q_excess >= ao.bands.partial;
      md << fmt::format("- **Q4. Recommended layer for the next phase:** relative depth {} ({}), {} (mean cross-model "
                        "q_excess {}, {} CI {}).\n",
                        depth_label(r), group_cells(r),
                        in_band ? fmt::format("the deepest depth still at least partially universal (>= {:.2f})",
                                              ao.bands.partial)
                                : "the best-transferring depth (no depth reaches the partial band)",
                        fixed(r.mean_q_excess), level, ci(r.ci_lo, r.ci_hi));
    }
    md << fmt::format("- **Trend:** Kendall's tau between relative depth and cell mean cross-model q_excess is {} "
                      "(n = {}, z = {}, one-sided p = {}): {}.\n",
                      fixed(a.trend.tau), a.trend.n, fixed(a.trend.z, 2), p_value(a.trend.p_decline),
                      a.trend.declining(ao.alpha) ? "a significant monotonic decline" : "no significant decline");
    md << fmt::format("- **Cross-model spread:** largest per-depth spread of the models' values is {} (q_excess units).\n",
                      fixed(a.max_spread));
  }
  md << "\n";

  // ---- Figures ----
  md << "## Figures\n\n";
  if (figures && figures->contains("figures")) {
    for (const auto& f : (*figures)["figures"]) {
      const std::string png = f.value("png", ""), pdf = f.value("pdf", "");
      md << fmt::format("![{}](../{})\n\n*{}* ([PDF](../{}))\n\n", f.value("title", ""), png, f.value("caption", ""), pdf);
    }
  } else {
    md << "No figures recorded (figures/figures.json missing; run `strata figures RUN_DIR`).\n\n";
  }

  // ---- Tables ----
  md << "## Per-layer results\n\n" << tables[0].caption << "\n\n" << tables[0].markdown() << "\n";
  md << "## Per-model-pair results\n\n" << tables[1].caption << "\n\n" << tables[1].markdown() << "\n";
  if (!a.positive_controls.empty()) {
    md << "## Positive control\n\n";
    for (const auto& pc : a.positive_controls) {
      Table t = control_table(pc, ao);
      const int separated = pc.separated_depths(), depths = static_cast<int>(pc.depths.size());
      md << t.caption << "\n\n" << t.markdown() << "\n";
      if (depths == 0)
        md << fmt::format("{} has no pairs with {} in the transfer matrix, so the control cannot be judged.\n\n",
                          pc.control, pc.twin);
      else if (separated == depths)
        md << fmt::format("The control separates from the cross-family pairs at every depth ({} of {}): its q_excess "
                          "interval lies above theirs, so the cross-model path sees universality where it is "
                          "planted by training.\n\n",
                          separated, depths);
      else if (separated > 0)
        md << fmt::format("The control separates from the cross-family pairs at {} of {} depths (its q_excess "
                          "interval lies above theirs only there).\n\n",
                          separated, depths);
      else
        md << fmt::format("The control does not separate from the cross-family pairs at any of {} depths: the "
                          "cross-model path does not show universality between two trainings of one model, so a "
                          "\"not universal\" answer above is not evidence until this is understood.\n\n",
                          depths);
      if (depths > 0 && separated < depths) {
        // Read a weak control against how linearly related the twins' activations are at all: if even the
        // best linear map explains little of the twin's variance, the twins differ, not the path.
        std::vector<double> r2;
        for (const auto& d : pc.depths)
          if (d.map_r2) r2.push_back(*d.map_r2);
        if (!r2.empty())
          md << fmt::format("The two trainings' activations are themselves only partly linearly related: the best "
                            "linear map between them (map R2, ridge, held out) explains {} to {} of the twin's "
                            "variance, which bounds what any isometric alignment can carry over. An identical copy "
                            "under another model name scores q_excess and CKA 1.000 through the same path "
                            "(docs/report.md, \"Positive control\").\n\n",
                            fixed(*std::min_element(r2.begin(), r2.end()), 2),
                            fixed(*std::max_element(r2.begin(), r2.end()), 2));
      }
      tables.push_back(std::move(t));
    }
  }
  md << "## All pairs\n\n";
  if (tables[2].rows.size() <= 100) md << tables[2].markdown() << "\n";
  else md << fmt::format("{} pairs; see [tables/pairs.csv](tables/pairs.csv) and tables/pairs.tex.\n\n", tables[2].rows.size());
  md << "## SAE quality\n\n" << tables[3].caption << "\n\n" << tables[3].markdown() << "\n";
  {
    std::vector<double> fractions, dead;
    std::vector<std::string> problems;
    for (const auto& s : a.sparsity) {
      if (auto f = s.l0_fraction()) fractions.push_back(*f);
      if (s.dead_fraction) dead.push_back(*s.dead_fraction);
      problems.insert(problems.end(), s.problems.begin(), s.problems.end());
    }
    auto range = [](const std::vector<double>& v) {
      return v.empty() ? std::string("n/a")
                       : fmt::format("{}-{}", fixed(*std::min_element(v.begin(), v.end())),
                                     fixed(*std::max_element(v.begin(), v.end())));
    };
    md << fmt::format("Sparsity (a dense code meets any FVU threshold): L0 / d_in {} (max {}), dead fraction {} "
                      "(max {}); ",
                      range(fractions), ao.max_l0_fraction, range(dead), ao.max_dead_fraction);
    if (problems.empty()) md << fmt::format("all {} SAEs are within both.\n\n", a.sparsity.size());
    else md << fmt::format("{} finding(s): {}.\n\n", problems.size(), fmt::join(problems, "; "));
  }

  // ---- Nulls and ceilings ----
  md << "## Nulls and ceilings\n\n";
  md << fmt::format("- Shuffled-pairing null: mean q_null over all pairs = {} (raw q does not fall to 0 for unrelated "
                    "data; q_excess rescales it so that 0 = the null).\n",
                    opt(a.mean_q_null));
  md << fmt::format("- Within-model ceiling: mean q_excess between different layers of the same model = {}.\n",
                    opt(a.mean_q_excess_within));
  md << fmt::format("- MMAC = {} against the random-dictionary baseline mmac_random = {}.\n", opt(a.mean_mmac),
                    opt(a.mean_mmac_random));
  if (a.pairs_with_p == 0)
    md << "- CKA permutation p-values: not computed (no permutation test ran, `cka_permutations = 0`), so no pair "
          "has a p-value or a BH adjustment.\n";
  else
    md << fmt::format("- CKA permutation p-values: {} of {} pairs, BH-adjusted across pairs.\n", a.pairs_with_p,
                      a.total_pairs);
  if (results.seed_ceilings.is_array() && !results.seed_ceilings.empty()) {
    md << "- Seed-to-seed ceiling (a second SAE trained with another seed on the same cell):\n";
    for (const auto& c : results.seed_ceilings)
      md << fmt::format("  - {}: q_excess {}, q {}, MMAC {}, decoder similarity {}\n", c.value("cell", "?"),
                        opt(number_or_null(c, "q_excess")), opt(number_or_null(c, "q")), opt(number_or_null(c, "mmac")),
                        opt(number_or_null(c, "decoder_similarity")));
  } else {
    md << "- Seed-to-seed ceiling: not recorded in transfer_matrix.json (`seed_ceilings`).\n";
  }
  md << "\n";

  md << "## Metric definitions\n\n" << kDefinitions << "\n";
  md << fmt::format("Bands on q_excess (the seed's): >= {} universal, {}-{} partial, {}-{} diverging, < {} model-specific. "
                    "Depth groups: the k-th captured layer of every model when all models have the same number of "
                    "layers, otherwise relative depth binned to 0.1.\n\n",
                    ao.bands.universal, ao.bands.partial, ao.bands.universal, ao.bands.diverging, ao.bands.partial,
                    ao.bands.diverging);

  md << "## Limitations\n\n"
        "- Cross-model comparisons go through a fitted semi-orthogonal map on aligned tokens; a pair's q_excess "
        "bounds what a linear isometry can carry, not every possible correspondence.\n"
        "- Confidence intervals in the per-layer table resample cells, in the per-model-pair table pairs; neither are "
        "independent (they share SAEs and tokens). The per-cell intervals in the universality figure and the pairs "
        "table resample sequences.\n"
        "- Tokens are restricted to positions where the tokenizations agree on a byte boundary; the retained fraction "
        "is reported per model pair.\n"
        "- The trend test uses the normal approximation, which is coarse for fewer than ~10 cells.\n"
        "- Results describe the captured dataset and token budget of this run; other corpora may differ.\n\n";

  // ---- Reproducibility ----
  md << "## Reproducibility appendix\n\n";
  if (!manifest) {
    md << "manifest.json missing: this run cannot be reproduced from its directory.\n";
  } else {
    const json& m = *manifest;
    auto find_any = [&](std::initializer_list<const char*> keys) -> json {
      for (const char* k : keys) {
        if (m.contains(k)) return m[k];
        for (const char* section : {"build", "environment", "git"})
          if (m.contains(section) && m[section].is_object() && m[section].contains(k)) return m[section][k];
      }
      return json();
    };
    // The binary's source (baked in at build time), not the checkout's HEAD when the run started: a
    // reproduction by the same binary after new commits must print the same bytes.
    md << "- Build commit: `" << json_scalar(find_any({"build_commit", "commit", "git_commit", "git_sha"}))
       << "` (tracked files modified at build time: " << json_scalar(find_any({"build_dirty"})) << ")\n";
    const json config_sha = m.contains("config") && m["config"].is_object() ? m["config"].value("sha256", json())
                                                                             : find_any({"config_sha256"});
    md << "- Config SHA-256 (resolved): `" << json_scalar(config_sha) << "`\n";
    md << "- Regenerate: `strata reproduce RUN_DIR --out NEW_DIR`\n";
    if (m.contains("environment") && m["environment"].is_object()) {
      md << "\nEnvironment:\n\n";
      for (const auto& [k, v] : m["environment"].items()) md << "- " << k << ": " << (v.is_string() ? v.get<std::string>() : v.dump()) << "\n";
    }
    if (m.contains("seeds")) {
      md << "\nSeeds:\n\n";
      if (m["seeds"].is_object())
        for (const auto& [k, v] : m["seeds"].items()) {
          if (v.is_object()) {
            for (const auto& [k2, v2] : v.items()) md << "- " << k << " " << k2 << ": " << json_scalar(v2) << "\n";
          } else {
            md << "- " << k << ": " << json_scalar(v) << "\n";
          }
        }
      else
        md << "- " << m["seeds"].dump() << "\n";
    } else {
      md << "\nSeeds: not recorded in manifest.json.\n";
    }
    if (m.contains("artifacts")) {
      Table artifacts{"artifacts", "Artifacts the report was made from, and their SHA-256.", {"artifact", "sha256", "bytes"}, {}};
      auto add = [&](const std::string& path, const json& info) {
        // Only what precedes the report: its own earlier files and the gates (which run after it) would make
        // the bytes depend on the run's history (a resumed run against a fresh one).
        const std::string step = info.is_object() ? info.value("step", "") : "";
        if (step == "report" || step == "gates" || path.rfind("report/", 0) == 0 || path.rfind("gates/", 0) == 0) return;
        artifacts.rows.push_back({path, info.is_object() ? json_scalar(info.value("sha256", json())) : json_scalar(info),
                                  info.is_object() ? json_scalar(info.value("bytes", info.value("size", json()))) : ""});
      };
      if (m["artifacts"].is_array())
        for (const auto& art : m["artifacts"]) add(art.value("path", art.value("name", "?")), art);
      else if (m["artifacts"].is_object())
        for (const auto& [path, info] : m["artifacts"].items()) add(path, info);
      md << "\n" << artifacts.markdown();
      tables.push_back(artifacts);
    }
  }

  // The report step owns report/: files of an earlier report that this one does not write must not stay
  // behind to be recorded with it.
  fs::remove_all(report_dir);
  result.analysis = report_dir / "analysis.json";
  atomic_write_text(result.analysis, to_json(a).dump(2) + "\n");
  for (const auto& table : tables) {
    table.write(tables_dir);
    result.tables.push_back(tables_dir / (table.name + ".csv"));
    result.tables.push_back(tables_dir / (table.name + ".tex"));
  }
  result.markdown = report_dir / "report.md";
  atomic_write_text(result.markdown, md.str());
  log::info("report: {}", result.markdown.string());
  return result;
}

}  // namespace strata::report
