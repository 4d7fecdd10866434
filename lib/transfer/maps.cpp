#include "transfer/maps.hpp"

#include <torch/torch.h>

#include <cmath>

#include "stats/linalg.hpp"

namespace strata::transfer {

namespace {
// fp64(raw) * scale in a buffer of its own (never an alias of raw, which the in-place steps would change).
torch::Tensor scaled_copy(const torch::Tensor& raw, double scale) {
  return raw.to(torch::kFloat64, /*non_blocking=*/false, /*copy=*/true).mul_(scale);
}
}  // namespace

// In-place steps compute what the out-of-place ones did, element by element: the same bits in a third of the
// memory. At phase5_4's sizes each out-of-place temporary was a fresh half-gigabyte for the kernel to fault in
// and zero: a quarter of the maps' CPU time went to page faults (bench/RESULTS.md).
FitRows fit_rows(const torch::Tensor& raw, double scale) {
  FitRows rows;
  torch::Tensor x = scaled_copy(raw, scale);
  rows.mean = x.mean(0);
  rows.centred = x.sub_(rows.mean);
  rows.gram = torch::mm(rows.centred.t(), rows.centred);
  rows.trace = rows.gram.diagonal().sum().item<double>();
  return rows;
}

torch::Tensor centred_rows(const torch::Tensor& raw, double scale, const torch::Tensor& mean) {
  return scaled_copy(raw, scale).sub_(mean);
}

torch::Tensor AffineMap::apply(const torch::Tensor& raw_target) const {
  torch::Tensor z = scaled_copy(raw_target, target_scale);
  if (!linear.defined()) return z.div_(source_scale).to(torch::kFloat32);
  torch::Tensor y = torch::mm(z.sub_(mean_in), linear);
  z = torch::Tensor();
  return y.mul_(alpha).add_(mean_out).div_(source_scale).to(torch::kFloat32);
}

AffineMap procrustes_map(const torch::Tensor& q, const FitRows& target, const FitRows& source, double target_scale,
                         double source_scale) {
  AffineMap map;
  map.mean_in = target.mean;
  map.mean_out = source.mean;
  map.target_scale = target_scale;
  map.source_scale = source_scale;
  map.linear = q;
  // sum ||Z Q||^2 = tr(Q^T Z^T Z Q), from the cell's Gram instead of a pass over the rows.
  const double mapped = (torch::mm(target.gram, q) * q).sum().item<double>();
  map.alpha = mapped > 0 ? std::sqrt(source.trace / mapped) : 1.0;
  return map;
}

double ridge_r2(const FitRows& target, const FitRows& source, const torch::Tensor& cross, double ridge_lambda,
                const torch::Tensor& z_eval, const torch::Tensor& y_eval) {
  const double lambda = ridge_lambda * target.trace / double(target.gram.size(0));
  torch::Tensor w = stats::ridge_from_products(target.gram, cross, lambda);
  torch::Tensor predicted = torch::mm(z_eval - target.mean, w) + source.mean;
  return 1 - (y_eval - predicted).pow(2).sum().item<double>() / (y_eval - y_eval.mean(0)).pow(2).sum().item<double>();
}

double ridge_r2(const FitRows& target, const FitRows& source, const torch::Tensor& cross, double ridge_lambda,
                const EvalMoments& target_eval, const EvalMoments& source_eval, const torch::Tensor& xc_cross,
                double target_scale, double source_scale) {
  const double lambda = ridge_lambda * target.trace / double(target.gram.size(0));
  torch::Tensor w = stats::ridge_from_products(target.gram, cross, lambda);  // [d_t, d_s]
  const double n = double(target_eval.n), st = target_scale, ss = source_scale;
  torch::Tensor delta_t = st * target_eval.mean - target.mean, delta_s = ss * source_eval.mean - source.mean;
  torch::Tensor a_b = (st * ss) * xc_cross + n * torch::outer(delta_t, delta_s);        // A^T B
  torch::Tensor a_a = (st * st) * target_eval.gram + n * torch::outer(delta_t, delta_t);  // A^T A
  const double centred_sq = ss * ss * source_eval.gram.diagonal().sum().item<double>();  // sum||y - mean y||^2
  const double b_b = centred_sq + n * delta_s.pow(2).sum().item<double>();              // ||B||^2
  const double residual =
      b_b - 2.0 * (w * a_b).sum().item<double>() + (torch::mm(a_a, w) * w).sum().item<double>();
  return 1 - residual / centred_sq;
}

}  // namespace strata::transfer
