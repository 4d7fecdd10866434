// Rank and linear correlation with p-values, monotone-trend tests, multiple-testing correction and
// percentile intervals. All p-values are two-sided; distributions come from Boost.Math.
#pragma once
#include <cstdint>
#include <vector>

namespace strata::stats {

struct Correlation {
  double r = 0;  // Pearson r or Spearman rho
  double p = 1;  // two-sided p-value
  int64_t n = 0;
};

// Ranks 1..n, ties get the average of the ranks they span.
std::vector<double> average_ranks(const std::vector<double>& values);

// Pearson r; p from t = r sqrt((n-2)/(1-r^2)) with n-2 degrees of freedom (Student t, Boost.Math).
// A constant input has no defined correlation: r = 0, p = 1.
Correlation pearson(const std::vector<double>& x, const std::vector<double>& y);

// Spearman rho = Pearson r of the average ranks; p from the same t approximation (as scipy.stats.spearmanr).
Correlation spearman(const std::vector<double>& x, const std::vector<double>& y);

// Mann-Kendall test for a monotone trend of `values` in their order: S = sum_{i<j} sign(v_j - v_i),
// Var(S) with the tie correction, z with continuity correction, two-sided normal p; tau_b = Kendall's tau-b
// against position. For n < 3 the test is undefined: p = 1.
struct TrendTest {
  double s = 0, variance = 0, z = 0, p = 1, tau = 0;
  int64_t n = 0;
};
TrendTest mann_kendall(const std::vector<double>& values);

// Benjamini-Hochberg adjusted p-values (step-up, monotone, capped at 1), in the input's order.
std::vector<double> benjamini_hochberg(const std::vector<double>& p_values);

// Percentile interval [q_lo, q_hi] at `level` (e.g. 0.95 -> 2.5 % and 97.5 %), linear interpolation
// between order statistics; non-finite values are ignored. Empty or all non-finite: {NaN, NaN}.
std::pair<double, double> percentile_interval(std::vector<double> values, double level);

}  // namespace strata::stats
