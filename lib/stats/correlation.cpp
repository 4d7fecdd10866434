#include "stats/correlation.hpp"

#include <boost/math/distributions/normal.hpp>
#include <boost/math/distributions/students_t.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/error.hpp"

namespace strata::stats {

std::vector<double> average_ranks(const std::vector<double>& values) {
  const size_t n = values.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return values[a] < values[b]; });
  std::vector<double> ranks(n);
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j + 1 < n && values[order[j + 1]] == values[order[i]]) ++j;
    double rank = 0.5 * double(i + j) + 1.0;  // mean of 1-based ranks i+1 .. j+1
    for (size_t k = i; k <= j; ++k) ranks[order[k]] = rank;
    i = j + 1;
  }
  return ranks;
}

namespace {

double t_two_sided_p(double r, int64_t n) {
  if (n < 3) return 1.0;
  double df = double(n - 2);
  double one_minus = std::max(0.0, 1.0 - r * r);
  if (one_minus == 0.0) return 0.0;
  double t = std::abs(r) * std::sqrt(df / one_minus);
  boost::math::students_t dist(df);
  return std::min(1.0, 2.0 * boost::math::cdf(boost::math::complement(dist, t)));
}

}  // namespace

Correlation pearson(const std::vector<double>& x, const std::vector<double>& y) {
  if (x.size() != y.size()) fail("pearson: inputs differ in length ({} vs {})", x.size(), y.size());
  Correlation out;
  out.n = int64_t(x.size());
  if (out.n < 2) return out;
  double mx = std::accumulate(x.begin(), x.end(), 0.0) / double(out.n);
  double my = std::accumulate(y.begin(), y.end(), 0.0) / double(out.n);
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    double dx = x[i] - mx, dy = y[i] - my;
    sxy += dx * dy, sxx += dx * dx, syy += dy * dy;
  }
  if (sxx <= 0 || syy <= 0) return out;
  out.r = std::clamp(sxy / std::sqrt(sxx * syy), -1.0, 1.0);
  out.p = t_two_sided_p(out.r, out.n);
  return out;
}

Correlation spearman(const std::vector<double>& x, const std::vector<double>& y) {
  if (x.size() != y.size()) fail("spearman: inputs differ in length ({} vs {})", x.size(), y.size());
  return pearson(average_ranks(x), average_ranks(y));
}

TrendTest mann_kendall(const std::vector<double>& values) {
  TrendTest out;
  const int64_t n = int64_t(values.size());
  out.n = n;
  if (n < 3) return out;
  double s = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = i + 1; j < n; ++j) s += (values[j] > values[i]) - (values[j] < values[i]);
  // Tie groups correct the variance: Var(S) = [n(n-1)(2n+5) - sum t(t-1)(2t+5)] / 18.
  std::vector<double> sorted = values;
  std::sort(sorted.begin(), sorted.end());
  double tie_term = 0, tied_pairs = 0;
  for (size_t i = 0; i < sorted.size();) {
    size_t j = i;
    while (j + 1 < sorted.size() && sorted[j + 1] == sorted[i]) ++j;
    double t = double(j - i + 1);
    tie_term += t * (t - 1) * (2 * t + 5);
    tied_pairs += t * (t - 1) / 2;
    i = j + 1;
  }
  double nn = double(n);
  out.s = s;
  out.variance = (nn * (nn - 1) * (2 * nn + 5) - tie_term) / 18.0;
  if (out.variance > 0) {
    double corrected = s > 0 ? s - 1 : (s < 0 ? s + 1 : 0.0);
    out.z = corrected / std::sqrt(out.variance);
    boost::math::normal standard;
    out.p = std::min(1.0, 2.0 * boost::math::cdf(boost::math::complement(standard, std::abs(out.z))));
  }
  double pairs = nn * (nn - 1) / 2;
  double denominator = std::sqrt((pairs - tied_pairs) * pairs);  // positions never tie
  out.tau = denominator > 0 ? s / denominator : 0.0;
  return out;
}

std::vector<double> benjamini_hochberg(const std::vector<double>& p_values) {
  const size_t m = p_values.size();
  std::vector<size_t> order(m);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p_values[a] < p_values[b]; });
  std::vector<double> adjusted(m);
  double running = 1.0;
  for (size_t k = m; k-- > 0;) {
    double p = p_values[order[k]];
    if (!std::isfinite(p)) fail("benjamini_hochberg: p-value {} is not finite", p);
    running = std::min(running, p * double(m) / double(k + 1));
    adjusted[order[k]] = std::min(1.0, running);
  }
  return adjusted;
}

std::pair<double, double> percentile_interval(std::vector<double> values, double level) {
  values.erase(std::remove_if(values.begin(), values.end(), [](double v) { return !std::isfinite(v); }),
               values.end());
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (values.empty()) return {nan, nan};
  std::sort(values.begin(), values.end());
  auto quantile = [&](double q) {
    double position = q * double(values.size() - 1);
    size_t lo = size_t(std::floor(position));
    size_t hi = std::min(values.size() - 1, lo + 1);
    double frac = position - double(lo);
    return values[lo] * (1 - frac) + values[hi] * frac;
  };
  double alpha = (1.0 - level) / 2.0;
  return {quantile(alpha), quantile(1.0 - alpha)};
}

}  // namespace strata::stats
