// The answers to the seed's questions, computed once from transfer_matrix.json and shared by the
// report (which prints them) and the should-pass gates (which judge them). Definitions: docs/report.md.
#pragma once
#include <nlohmann/json.hpp>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "report/run_data.hpp"

namespace strata::report {

// The seed's bands on q_excess.
struct Bands {
  double universal = 0.9;   // >= universal
  double partial = 0.6;     // [partial, universal)
  double diverging = 0.4;   // [diverging, partial); below: model-specific
  std::string label(double q_excess) const;
};

struct AnalysisOptions {
  Bands bands;
  double divergence_threshold = 0.6;  // divergence point: first depth whose mean falls below this
  double early_universal = 0.80;      // Q1: early layers universal when their mean exceeds this
  double early_max_depth = 0.34;      // cells up to this relative depth count as early
  double bottleneck_margin = 0.05;    // a dip below both neighbouring depths by at least this much
  double alpha = 0.05;                // significance level (trend test, BH-adjusted p-values)
  int bootstrap_resamples = 2000;
  uint64_t bootstrap_seed = 20260218;
  double ci_level = 0.95;             // level of every bootstrap CI (and of its printed label)
  // Sparsity of the SAEs (should-pass): held-out L0 at most this fraction of d_in, and at most this
  // fraction of dead latents. A dense code meets any FVU threshold, so FVU alone does not show an SAE.
  double max_l0_fraction = 0.5;
  double max_dead_fraction = 0.2;
  // Positive controls: control model -> its twin ([[models]] control_of). Controls are left out of every
  // main analysis (depth groups, trend, model pairs, counts) and reported beside it (PositiveControl).
  std::map<std::string, std::string> controls;
};

// A run's analysis settings, all from its resolved config (config.resolved.json, Experiment::to_json()):
// bands from [transfer] high/moderate/diverging_threshold, bootstrap resamples and ci_level from
// [transfer], thresholds from [gates], controls from [[models]] control_of, and the bootstrap seed
// derive(experiment.seed, "analysis", "", -1), the seed the pipeline records as "analysis/-/-".
// Absent keys keep the defaults above. The one place these settings are derived.
AnalysisOptions analysis_options(const nlohmann::json& resolved_config);
// The same from RUN_DIR/config.resolved.json (defaults when the run has none).
AnalysisOptions analysis_options_for_run(const std::filesystem::path& run_dir);
// [[models]] control_of of a resolved config: control model -> twin.
std::map<std::string, std::string> control_models(const nlohmann::json& resolved_config);

// "95%" for 0.95, "90%" for 0.9, "99.5%" for 0.995: the label of a CI at `level`.
std::string ci_label(double level);

// Cells of different models at comparable depth. When every model has the same number of scored
// layers, the k-th layer of each model forms depth group k; otherwise relative depths are binned to 0.1.
struct DepthGroup {
  double relative_depth = 0;                 // mean over the group's cells
  std::vector<CellScore> cells;
  double mean_q_excess = 0;                  // mean over cells of mean_cross_model_q_excess
  double ci_lo = 0, ci_hi = 0;               // percentile bootstrap over the group's cross-model pairs
  std::optional<double> mean_cka;
  double spread = 0;                         // max - min over models of the cell values
  int cross_model_pairs = 0;
  std::optional<double> max_p_adjusted;      // largest BH-adjusted CKA p over those pairs
};

// One-sided Kendall trend test of cell-level mean cross-model q_excess against relative depth
// (Mann-Kendall with tie correction, normal approximation).
struct TrendTest {
  int n = 0;
  double tau = 0;      // Kendall's tau-b
  double z = 0;
  double p_decline = 1;  // P(S <= observed) under no trend
  bool declining(double alpha) const { return n >= 3 && tau < 0 && p_decline < alpha; }
};
TrendTest kendall_trend(const std::vector<double>& x, const std::vector<double>& y);

struct ModelPairSummary {
  std::string source_model, target_model;
  int pairs = 0;
  double mean_q_excess = 0, ci_lo = 0, ci_hi = 0;
  std::optional<double> mean_cka, median_p_adjusted, mean_retained_fraction;
  int significant = 0;  // pairs with p_adjusted < alpha
};

// One SAE's sparsity against the thresholds (AnalysisOptions::max_l0_fraction, max_dead_fraction).
struct SaeSparsity {
  std::string cell;
  std::optional<double> l0, d_in, dead_fraction;
  std::optional<double> l0_fraction() const {
    return l0 && d_in && *d_in > 0 ? std::optional<double>(*l0 / *d_in) : std::nullopt;
  }
  std::vector<std::string> problems;  // empty = sparse enough
};
std::vector<SaeSparsity> sae_sparsity(const std::vector<SaeSummary>& saes, const AnalysisOptions& options);

// The positive control at one depth: the control's same-layer pairs with its twin (both directions)
// beside the cross-family pairs (different non-control models, same depth group, both directions).
struct ControlDepth {
  std::string control_cell, twin_cell;
  double relative_depth = 0;
  // Control pair: the mean of its two directions; CI: the union of the two directions' intervals from the
  // transfer step (sequence bootstrap at ci_level), so it is conservative.
  std::optional<double> q_excess, q_lo, q_hi, cka, cka_lo, cka_hi, mmac;
  // map_r2: held-out R^2 of the best linear (ridge) map between the two models' activations, a ceiling on how
  // much any linear alignment can carry over; a control that does not separate is read against it.
  std::optional<double> map_r2, family_map_r2;
  // Cross-family pairs at the same depth: means with percentile-bootstrap CIs over the pairs.
  int cross_family_pairs = 0;
  std::optional<double> family_q_excess, family_q_lo, family_q_hi, family_cka, family_cka_lo, family_cka_hi,
      family_mmac;
  // The control's CI lies above the cross-family CI (q_excess).
  bool separates() const { return q_lo && family_q_hi && *q_lo > *family_q_hi; }
};
struct PositiveControl {
  std::string control, twin;
  std::vector<ControlDepth> depths;
  int separated_depths() const;
};

struct Analysis {
  AnalysisOptions options;
  std::vector<DepthGroup> groups;
  TrendTest trend;
  std::optional<size_t> divergence_group;   // first group below divergence_threshold
  bool divergence_clear = false;            // ... and every deeper group stays below it
  std::optional<size_t> bottleneck_group;   // interior dip, see bottleneck_margin
  std::optional<size_t> recommended_group;  // deepest group >= bands.partial, else the best group
  // Early layers: cells with relative depth <= early_max_depth (the first depth group if none is).
  std::vector<CellScore> early_cells;
  double early_mean = 0, early_ci_lo = 0, early_ci_hi = 0;
  bool early_universal = false;             // early_mean > early_universal
  double max_spread = 0;
  std::vector<ModelPairSummary> model_pairs;
  int total_pairs = 0, pairs_with_p = 0;
  std::optional<double> mean_q_null, mean_q_excess_within, mean_mmac, mean_mmac_random;
  std::vector<PositiveControl> positive_controls;
  std::vector<SaeSparsity> sparsity;  // every SAE given to analyse(), controls included
};

// `results` is everything the transfer step wrote (controls included); the main analysis runs on
// without_models(results, controls) and the controls are reported in positive_controls.
Analysis analyse(const TransferResults& results, const AnalysisOptions& options = {},
                 const std::vector<SaeSummary>& saes = {});

// The analysis as the gates read it (report/analysis.json): every number the report prints.
nlohmann::json to_json(const Analysis& analysis);

// The main matrix: `results` without the given models' cells, pairs and scores. A remaining cell's
// universality score is recomputed from its recorded pairs without the removed models (its
// sequence-bootstrap CI cannot be, and is dropped).
TransferResults without_models(const TransferResults& results, const std::map<std::string, std::string>& models);

// Percentile bootstrap CI of the mean (deterministic for a given seed).
std::pair<double, double> bootstrap_mean_ci(const std::vector<double>& values, int resamples, uint64_t seed,
                                            double level = 0.95);

}  // namespace strata::report
