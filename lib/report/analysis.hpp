// The answers to the seed's questions, computed once from transfer_matrix.json and shared by the
// report (which prints them) and the should-pass gates (which judge them). Definitions: docs/report.md.
#pragma once
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
};

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
};

Analysis analyse(const TransferResults& results, const AnalysisOptions& options = {});

// Percentile bootstrap CI of the mean (deterministic for a given seed).
std::pair<double, double> bootstrap_mean_ci(const std::vector<double>& values, int resamples, uint64_t seed,
                                            double level = 0.95);

}  // namespace strata::report
