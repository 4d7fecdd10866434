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

// The verdict and its reasons from a gates document.
std::pair<std::string, std::vector<std::string>> verdict_of(const std::optional<json>& gates) {
  if (!gates) return {"NOT EVALUATED", {}};
  std::vector<std::string> reasons;
  for (const auto& check : gates->value("must_pass", json::array()))
    if (!check.value("passed", false))
      for (const auto& reason : check.value("reasons", json::array()))
        reasons.push_back(check.value("title", check.value("name", "")) + ": " + json_scalar(reason));
  return {gates->value("verdict", reasons.empty() ? "GO" : "NO-GO"), reasons};
}

Table layer_table(const Analysis& a) {
  Table t{"per_layer", "Mean cross-model transfer quality by relative depth (95% bootstrap CI over cross-model pairs).",
          {"depth group", "relative depth", "cells", "mean q_excess", "95% CI", "band", "mean CKA", "spread across models",
           "cross-model pairs", "max BH p (CKA)"},
          {}};
  for (size_t g = 0; g < a.groups.size(); ++g) {
    const auto& group = a.groups[g];
    t.rows.push_back({std::to_string(g + 1), depth_label(group), group_cells(group), fixed(group.mean_q_excess),
                      ci(group.ci_lo, group.ci_hi), a.options.bands.label(group.mean_q_excess), opt(group.mean_cka),
                      fixed(group.spread), std::to_string(group.cross_model_pairs),
                      group.max_p_adjusted ? p_value(*group.max_p_adjusted) : "n/a"});
  }
  return t;
}

Table model_pair_table(const Analysis& a) {
  Table t{"per_model_pair",
          "Transfer quality by (source model, target model), over all their layer pairs except a cell with itself.",
          {"source model", "target model", "pairs", "mean q_excess", "95% CI", "mean CKA", "median BH p (CKA)",
           "significant (p_adj < alpha)", "retained token fraction"},
          {}};
  for (const auto& s : a.model_pairs)
    t.rows.push_back({s.source_model, s.target_model, std::to_string(s.pairs), fixed(s.mean_q_excess), ci(s.ci_lo, s.ci_hi),
                      opt(s.mean_cka), s.median_p_adjusted ? p_value(*s.median_p_adjusted) : "n/a",
                      fmt::format("{}/{}", s.significant, s.pairs), opt(s.mean_retained_fraction)});
  return t;
}

Table pair_table(const TransferResults& r) {
  Table t{"pairs", "Every (source SAE, target cell) pair.",
          {"source", "target", "q", "q_null", "q_excess", "q_excess 95% CI", "CKA", "CKA p (BH)", "MMAC", "MMAC random",
           "transfer_recon_ratio", "evaluation"},
          {}};
  for (const auto& source : r.cells)
    for (const auto& target : r.cells) {
      const PairResult* p = r.find(source, target);
      if (!p) continue;
      std::string q_ci = "n/a";
      if (auto it = p->entry.find("q_excess_ci"); it != p->entry.end() && it->is_array() && it->size() == 2 &&
                                                  (*it)[0].is_number() && (*it)[1].is_number())
        q_ci = ci((*it)[0].get<double>(), (*it)[1].get<double>());
      auto p_adj = p->metric("p_adjusted");
      t.rows.push_back({source, target, opt(p->metric("q")), opt(p->metric("q_null")), opt(p->metric("q_excess")), q_ci,
                        opt(p->metric("cka")), p_adj ? p_value(*p_adj) : "n/a", opt(p->metric("mmac")),
                        opt(p->metric("mmac_random")), opt(p->metric("transfer_recon_ratio")),
                        p->entry.value("evaluation", "n/a")});
    }
  return t;
}

Table sae_table(const std::vector<SaeSummary>& saes) {
  Table t{"saes", "SAE quality on the held-out split.",
          {"SAE", "architecture", "d_in", "d_sae", "FVU", "explained variance", "L0", "dead fraction", "converged",
           "diverged", "epochs"},
          {}};
  for (const auto& s : saes) {
    auto flag = [&](const char* key) {
      auto it = s.metrics.find(key);
      return it != s.metrics.end() && it->is_boolean() ? (it->get<bool>() ? "yes" : "no") : "n/a";
    };
    t.rows.push_back({s.cell, s.cfg.value("architecture", "n/a"), json_scalar(s.cfg.value("d_in", json())),
                      json_scalar(s.cfg.value("d_sae", json())), opt(s.metric("fvu")), opt(s.metric("explained_variance")),
                      opt(s.metric("l0"), 1), opt(s.metric("dead_fraction")), flag("converged"), flag("diverged"),
                      json_scalar(s.metrics.value("epochs_run", json()))});
  }
  return t;
}

Table gate_table(const json& gates) {
  Table t{"gates", "Go/no-go gates.", {"tier", "check", "result", "summary"}, {}};
  for (const char* tier : {"must_pass", "should_pass", "publication_ready"})
    for (const auto& check : gates.value(tier, json::array()))
      t.rows.push_back({tier, check.value("title", check.value("name", "")), check.value("status", "n/a"),
                        check.value("summary", "")});
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
  const TransferResults results = load_transfer(run_dir);
  const Analysis a = analyse(results, options.analysis);
  const auto saes = load_saes(run_dir);
  std::optional<json> gates = options.gates;
  if (!gates) gates = read_json_if_exists(run_dir / "gates" / "gates.json");
  const std::optional<json> manifest = read_json_if_exists(run_dir / "manifest.json");
  const std::optional<json> figures = read_json_if_exists(run_dir / "figures" / "figures.json");
  const auto [verdict, reasons] = verdict_of(gates);
  const AnalysisOptions& ao = options.analysis;

  ReportResult result;
  result.verdict = verdict;
  const fs::path report_dir = run_dir / "report";
  const fs::path tables_dir = report_dir / "tables";
  std::vector<Table> tables = {layer_table(a), model_pair_table(a), pair_table(results), sae_table(saes)};
  if (gates) tables.push_back(gate_table(*gates));

  std::ostringstream md;
  // Named after the experiment, not the directory, so a reproduced run writes the same report.
  std::string run_name = run_dir.filename().string();
  if (auto resolved = read_json_if_exists(run_dir / "config.resolved.json");
      resolved && resolved->contains("experiment") && (*resolved)["experiment"].contains("name"))
    run_name = (*resolved)["experiment"]["name"].get<std::string>();
  md << "# strata report: " << run_name << "\n\n";
  md << "**Verdict: " << verdict << "**";
  if (verdict == "NOT EVALUATED") md << " (gates not evaluated; run `strata gate RUN_DIR`)";
  md << "\n\n";
  if (!reasons.empty()) {
    md << "Failed must-pass checks:\n\n";
    for (const auto& reason : reasons) md << "- " << reason << "\n";
    md << "\n";
  }
  md << fmt::format("{} models, {} cells, {} SAE x activation pairs, {} SAEs.\n\n", results.models.size(),
                    results.cells.size(), results.pairs.size(), saes.size());

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
        "cross-model q_excess is {} (95% CI {}), {} the criterion q_excess > {:.2f}; band: {}. Criterion: q_excess, "
        "the SAE's explained variance on another model's mapped activations relative to its own, corrected for the "
        "shuffled-pairing null{}.\n",
        a.early_universal ? "Yes" : "No", ao.early_max_depth, fmt::join(early_names, ", "), fixed(a.early_mean),
        ci(a.early_ci_lo, a.early_ci_hi), a.early_universal ? "above" : "not above", ao.early_universal,
        ao.bands.label(a.early_mean),
        std::isfinite(early_cka) ? fmt::format("; their mean cross-model linear CKA is {}", fixed(early_cka)) : "");
    if (a.divergence_group) {
      const DepthGroup& d = a.groups[*a.divergence_group];
      md << fmt::format(
          "- **Q2. Divergence point:** relative depth {} (depth group {}), the first depth where the mean cross-model "
          "q_excess ({}, 95% CI {}) falls below {:.2f}; {}.\n",
          depth_label(d), *a.divergence_group + 1, fixed(d.mean_q_excess), ci(d.ci_lo, d.ci_hi), ao.divergence_threshold,
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
      // Whether the 95% CIs separate the dip from both neighbours (a conservative check).
      const bool resolved = b.ci_hi < before.ci_lo && b.ci_hi < after.ci_lo;
      md << fmt::format("- **Q3. Bottleneck:** relative depth {} ({}) dips to {} (95% CI {}) while its neighbouring "
                        "depths reach {} ({}) and {} ({}) (a dip of at least {:.2f}); {}.\n",
                        depth_label(b), group_cells(b), fixed(b.mean_q_excess), ci(b.ci_lo, b.ci_hi),
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
                        "q_excess {}, 95% CI {}).\n",
                        depth_label(r), group_cells(r),
                        in_band ? fmt::format("the deepest depth still at least partially universal (>= {:.2f})",
                                              ao.bands.partial)
                                : "the best-transferring depth (no depth reaches the partial band)",
                        fixed(r.mean_q_excess), ci(r.ci_lo, r.ci_hi));
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
  md << "## All pairs\n\n";
  if (tables[2].rows.size() <= 100) md << tables[2].markdown() << "\n";
  else md << fmt::format("{} pairs; see [tables/pairs.csv](tables/pairs.csv) and tables/pairs.tex.\n\n", tables[2].rows.size());
  md << "## SAE quality\n\n" << tables[3].caption << "\n\n" << tables[3].markdown() << "\n";

  // ---- Nulls and ceilings ----
  md << "## Nulls and ceilings\n\n";
  md << fmt::format("- Shuffled-pairing null: mean q_null over all pairs = {} (raw q does not fall to 0 for unrelated "
                    "data; q_excess rescales it so that 0 = the null).\n",
                    opt(a.mean_q_null));
  md << fmt::format("- Within-model ceiling: mean q_excess between different layers of the same model = {}.\n",
                    opt(a.mean_q_excess_within));
  md << fmt::format("- MMAC = {} against the random-dictionary baseline mmac_random = {}.\n", opt(a.mean_mmac),
                    opt(a.mean_mmac_random));
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

  // ---- Gates ----
  md << "## Gate results\n\n";
  if (gates) md << tables.back().markdown() << "\n";
  else md << "Gates not evaluated (gates/gates.json missing; run `strata gate RUN_DIR`).\n\n";

  md << "## Metric definitions\n\n" << kDefinitions << "\n";
  md << fmt::format("Bands on q_excess (the seed's): >= {} universal, {}-{} partial, {}-{} diverging, < {} model-specific. "
                    "Depth groups: the k-th captured layer of every model when all models have the same number of "
                    "layers, otherwise relative depth binned to 0.1.\n\n",
                    ao.bands.universal, ao.bands.partial, ao.bands.universal, ao.bands.diverging, ao.bands.partial,
                    ao.bands.diverging);

  md << "## Limitations\n\n"
        "- Cross-model comparisons go through a fitted semi-orthogonal map on aligned tokens; a pair's q_excess "
        "bounds what a linear isometry can carry, not every possible correspondence.\n"
        "- Confidence intervals in the per-layer and per-model-pair tables resample pairs, which are not independent "
        "(they share SAEs and tokens); the per-cell intervals in the universality figure resample sequences.\n"
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
      Table artifacts{"artifacts", "Artifacts and their SHA-256.", {"artifact", "sha256", "bytes"}, {}};
      auto add = [&](const std::string& path, const json& info) {
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

  for (const auto& table : tables) {
    table.write(tables_dir);
    result.tables.push_back(tables_dir / (table.name + ".csv"));
    result.tables.push_back(tables_dir / (table.name + ".tex"));
  }
  result.markdown = report_dir / "report.md";
  atomic_write_text(result.markdown, md.str());
  log::info("report: {} (verdict {})", result.markdown.string(), verdict);
  return result;
}

}  // namespace strata::report
