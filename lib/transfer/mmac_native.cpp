#include "transfer/mmac_native.hpp"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace strata::transfer::native {
namespace {

// Per-thread column maxima, merged at the end (max is exact: any merge order gives the same bits).
class ColumnMaxima {
 public:
  explicit ColumnMaxima(int64_t cols) : cols_(cols), per_thread_(size_t(at::get_num_threads())) {}
  double* local() {
    std::vector<double>& v = per_thread_[size_t(at::get_thread_num())];
    if (v.empty()) v.assign(size_t(cols_), -1.0);
    return v.data();
  }
  void merge_into(double* best) const {
    for (const std::vector<double>& v : per_thread_)
      for (int64_t j = 0; j < int64_t(v.size()); ++j) best[j] = std::max(best[j], v[j]);
  }

 private:
  int64_t cols_;
  std::vector<std::vector<double>> per_thread_;
};

// One row of cross moments into both maxima, with the tensor form's operations and roundings:
// ((double(c) / n) - (mean_a * mean_b)) / (sd_a * sd_b).
template <typename T>
inline double fold_row(const T* c, int64_t cols, double n, double mean_a, double sd_a, Moments b, double* col_best) {
  double row_best = -1.0;
  for (int64_t j = 0; j < cols; ++j) {
    const double outer_mean = mean_a * b.mean[j];
    const double outer_sd = sd_a * b.sd[j];
    const double corr = (double(c[j]) / n - outer_mean) / outer_sd;
    row_best = corr > row_best ? corr : row_best;
    col_best[j] = corr > col_best[j] ? corr : col_best[j];
  }
  return row_best;
}

}  // namespace

void correlation_max(const float* c, int64_t rows, int64_t cols, double n, Moments a, Moments b, double* best_a,
                     double* best_b) {
  ColumnMaxima maxima(cols);
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    double* col_best = maxima.local();
    for (int64_t i = r0; i < r1; ++i)
      best_a[i] = std::max(best_a[i], fold_row(c + i * cols, cols, n, a.mean[i], a.sd[i], b, col_best));
  });
  maxima.merge_into(best_b);
}

void sparse_correlation_max(ColumnCodes a, TokenCodes b, double n, Moments ma, Moments mb, double* best_a,
                            double* best_b) {
  ColumnMaxima maxima(b.latents);
  at::parallel_for(0, a.latents, 16, [&](int64_t i0, int64_t i1) {
    double* col_best = maxima.local();
    std::vector<double> row(size_t(b.latents), 0.0);
    for (int64_t i = i0; i < i1; ++i) {
      std::fill(row.begin(), row.end(), 0.0);
      for (int64_t e = a.offsets[i]; e < a.offsets[i + 1]; ++e) {
        const int64_t t = a.tokens[e];
        const double v = double(a.values[e]);
        for (int64_t f = b.offsets[t]; f < b.offsets[t + 1]; ++f) row[size_t(b.latent[f])] += v * double(b.values[f]);
      }
      best_a[i] = std::max(best_a[i], fold_row(row.data(), b.latents, n, ma.mean[i], ma.sd[i], mb, col_best));
    }
  });
  maxima.merge_into(best_b);
}

}  // namespace strata::transfer::native
