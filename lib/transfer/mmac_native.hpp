// Host kernels for MMAC (transfer/metrics.hpp), beside its portable LibTorch form (blocks of codes multiplied
// as tensors, the correlation formed element-wise as tensors). Both compute, for every alive latent pair,
//   corr_ij = (C_ij / n - mean_a_i mean_b_j) / (sd_a_i sd_b_j),   C_ij = sum_t a_t,i b_t,j
// and keep best_a_i = max_j corr_ij, best_b_j = max_i corr_ij. The host kernels never hold a block of
// correlations: each row is formed, reduced into both maxima and dropped (one pass instead of ~10 tensor
// passes over an fp64 block). Maxima are exact, so results do not depend on the thread count.
// Compiled for baseline x86-64 on purpose: no FMA can contract (c / n - mean_a mean_b), so the correlation of a
// given C has the same bits as the tensor form's.
#pragma once
#include <cstdint>

namespace strata::transfer::native {

struct Moments {  // per alive latent, fp64: mean and standard deviation over all n tokens (zeros included)
  const double* mean;
  const double* sd;
};

// Folds the correlations of a row-major fp32 block of cross moments c [rows, cols] (rows: latents of A from
// `a`, columns: latents of B from `b`, n tokens) into best_a [rows] and best_b [cols].
void correlation_max(const float* c, int64_t rows, int64_t cols, double n, Moments a, Moments b, double* best_a,
                     double* best_b);

// Cross moments of two sparse code sets without densifying either: A's latents in column-major form (entries
// of latent i at [a_offsets[i], a_offsets[i+1]), tokens a_rows, values a_values), B in token-major form
// (entries of token t at [b_offsets[t], b_offsets[t+1]), latents b_latents, values b_values). Each row
// C_i. = sum over A's entries (t, v) of v * B's row t accumulates in fp64 in token order (products of fp32
// values are exact in fp64), then folds into the maxima like correlation_max. Cost: the entries of A times
// B's codes per token, plus one pass over each row: n_a n_b, with no n_a x n_b memory.
struct ColumnCodes {
  int64_t latents;
  const int64_t* offsets;
  const int32_t* tokens;
  const float* values;
};
struct TokenCodes {
  int64_t latents, tokens;
  const int64_t* offsets;
  const int64_t* latent;
  const float* values;
};
void sparse_correlation_max(ColumnCodes a, TokenCodes b, double n, Moments ma, Moments mb, double* best_a,
                            double* best_b);

}  // namespace strata::transfer::native
