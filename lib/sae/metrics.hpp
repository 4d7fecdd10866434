// Reconstruction and sparsity metrics, each defined once (docs/sae.md prints the formulas). Every layer
// that scores an SAE (training's held-out split, transfer between models) accumulates through these.
//
//   FVU  = sum_t ||x_t - x_hat_t||^2 / sum_t ||x_t - mean(x)||^2      pooled over all tokens t, fp64
//   explained_variance = 1 - FVU
//   MSE  = sum_t ||x_t - x_hat_t||^2 / (n_tokens * d)                 mean squared error per element
//   L0   = mean_t #{i : f_ti != 0}                                     active latents per token
//   sparsity = L0 / d_sae                                              fraction of latents active per token
//   dead_fraction  = #{i : latent i never active on the set} / d_sae
//   dense_fraction = #{i : latent i active on more than `dense_threshold` of the tokens} / d_sae
#pragma once
#include <torch/types.h>

#include <cstdint>

namespace strata::sae {

// Pooled FVU / MSE over any number of batches, in fp64, in one pass: the total variance comes from
// running sums of (x - shift) and ||x - shift||^2 where `shift` is the first batch's mean, which keeps
// the subtraction sum||x||^2 - n||mean||^2 well conditioned even when the mean dominates the variance.
class ReconstructionStats {
 public:
  // x, x_hat: [n, d] (any float dtype, any device).
  void add(const torch::Tensor& x, const torch::Tensor& x_hat);
  int64_t tokens() const { return tokens_; }
  double sum_squared_error() const { return sse_; }
  double total_variance() const;  // sum_t ||x_t - mean(x)||^2
  double fvu() const;             // NaN when no tokens or zero variance
  double explained_variance() const { return 1.0 - fvu(); }
  double mse() const;  // per element

 private:
  int64_t tokens_ = 0, dim_ = 0;
  double sse_ = 0.0, shifted_sq_ = 0.0;
  torch::Tensor shift_, shifted_sum_;  // fp64 [d]
};

// Latent activity over any number of batches of codes f [n, d_sae].
class SparsityStats {
 public:
  explicit SparsityStats(double dense_threshold = 0.1) : dense_threshold_(dense_threshold) {}
  void add(const torch::Tensor& f);
  // Same, from per-batch summaries (the trainer counts these inside its own kernels).
  void add_counts(int64_t tokens, int64_t active_total, const torch::Tensor& per_latent_active_tokens);
  int64_t tokens() const { return tokens_; }
  double l0() const;
  double sparsity() const;
  double dead_fraction() const;
  double dense_fraction() const;
  torch::Tensor firing_frequency() const;  // fp64 [d_sae]: fraction of tokens on which each latent fired

 private:
  double dense_threshold_;
  int64_t tokens_ = 0;
  double active_total_ = 0.0;
  torch::Tensor per_latent_;  // I64 [d_sae]
};

}  // namespace strata::sae
