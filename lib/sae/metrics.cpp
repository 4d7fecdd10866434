#include "sae/metrics.hpp"

#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "core/error.hpp"

namespace strata::sae {

void ReconstructionStats::add(const torch::Tensor& x, const torch::Tensor& x_hat) {
  if (x.dim() != 2 || x.sizes() != x_hat.sizes())
    fail("reconstruction metrics: x and x_hat must both be [n, d] (got [{}] and [{}])", fmt::join(x.sizes(), ", "),
         fmt::join(x_hat.sizes(), ", "));
  if (x.size(0) == 0) return;
  torch::NoGradGuard no_grad;
  auto x64 = x.detach().to(torch::kCPU, torch::kFloat64);
  auto xh64 = x_hat.detach().to(torch::kCPU, torch::kFloat64);
  if (tokens_ == 0) {
    dim_ = x.size(1);
    shift_ = x64.mean(0);
    shifted_sum_ = torch::zeros({dim_}, torch::kFloat64);
  } else if (x.size(1) != dim_) {
    fail("reconstruction metrics: width {} differs from earlier batches ({})", x.size(1), dim_);
  }
  auto shifted = x64 - shift_;
  shifted_sum_ += shifted.sum(0);
  shifted_sq_ += shifted.square().sum().item<double>();
  sse_ += (x64 - xh64).square().sum().item<double>();
  tokens_ += x.size(0);
}

double ReconstructionStats::total_variance() const {
  if (tokens_ == 0) return 0.0;
  double mean_sq = shifted_sum_.square().sum().item<double>() / double(tokens_);
  return std::max(0.0, shifted_sq_ - mean_sq);
}

double ReconstructionStats::fvu() const {
  double var = total_variance();
  if (tokens_ == 0 || var <= 0.0) return std::numeric_limits<double>::quiet_NaN();
  return sse_ / var;
}

double ReconstructionStats::mse() const {
  if (tokens_ == 0) return std::numeric_limits<double>::quiet_NaN();
  return sse_ / (double(tokens_) * double(dim_));
}

void SparsityStats::add(const torch::Tensor& f) {
  if (f.dim() != 2) fail("sparsity metrics: codes must be [n, d_sae]");
  auto active = (f.detach() != 0);
  auto per_latent = active.sum(0, /*keepdim=*/false, torch::kInt64).to(torch::kCPU);
  add_counts(f.size(0), per_latent.sum().item<int64_t>(), per_latent);
}

void SparsityStats::add_counts(int64_t tokens, int64_t active_total, const torch::Tensor& per_latent_active_tokens) {
  auto counts = per_latent_active_tokens.to(torch::kCPU, torch::kInt64);
  if (!per_latent_.defined()) {
    per_latent_ = counts.clone();
  } else {
    if (counts.numel() != per_latent_.numel())
      fail("sparsity metrics: {} latents differ from earlier batches ({})", counts.numel(), per_latent_.numel());
    per_latent_ += counts;
  }
  tokens_ += tokens;
  active_total_ += double(active_total);
}

double SparsityStats::l0() const {
  return tokens_ ? active_total_ / double(tokens_) : std::numeric_limits<double>::quiet_NaN();
}

double SparsityStats::sparsity() const {
  return per_latent_.defined() ? l0() / double(per_latent_.numel()) : std::numeric_limits<double>::quiet_NaN();
}

torch::Tensor SparsityStats::firing_frequency() const {
  if (!per_latent_.defined() || tokens_ == 0) return torch::empty({0}, torch::kFloat64);
  return per_latent_.to(torch::kFloat64) / double(tokens_);
}

double SparsityStats::dead_fraction() const {
  if (!per_latent_.defined()) return std::numeric_limits<double>::quiet_NaN();
  return (per_latent_ == 0).sum().item<double>() / double(per_latent_.numel());
}

double SparsityStats::dense_fraction() const {
  if (!per_latent_.defined() || tokens_ == 0) return std::numeric_limits<double>::quiet_NaN();
  return (firing_frequency() > dense_threshold_).sum().item<double>() / double(per_latent_.numel());
}

}  // namespace strata::sae
