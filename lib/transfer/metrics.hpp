// The transfer metrics on tensors (docs/transfer.md has the long form). Every function here is pure: the
// runner (transfer.hpp) decides which rows, maps and SAEs go in.
//   FVU(SAE, X)      = sum_t ||x_t - SAE(x_t)||^2 / sum_t ||x_t - mean(X)||^2   (pooled over tokens, fp64)
//   q                = (1 - FVU(SAE_s, map(X_t))) / (1 - FVU(SAE_s, X_s))
//   q_null           = q with the map fitted to shuffled rows;  q_excess = (q - q_null) / (1 - q_null)
//   feature variance = mean_k Var(f_k on mapped target) / mean_k Var(f_k on own rows), top-k latents by own Var
//   decoder sim.     = mean over the source's top-k latents a of max_b cos(W_dec_s[a], W_dec_t[b] Q)
//   MMAC(A -> B)     = mean over alive latents a of A of max over alive b of B of Pearson(f_a, g_b) on the
//                      same tokens; weighted: by mass sum_t f_a(t); alive: >= min_firings firings
//   CKA              = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)   (stats/cka.hpp)
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <variant>

#include "core/runtime.hpp"
#include "core/scratch_file.hpp"
#include "sae/sae.hpp"

namespace strata::transfer {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Per-sequence sufficient statistics of a pooled FVU, so that a bootstrap over sequences is a matrix product
// (weights [B, D] x sums [D, ...]) instead of a pass over the rows per resample.
struct SequenceSums {
  torch::Tensor residual, square, count;  // fp64 [D]: sum ||x - x_hat||^2, sum ||x||^2, tokens
  torch::Tensor sum;                      // fp64 [D, d]: sum x
  double fvu() const;
  torch::Tensor fvu(const torch::Tensor& weights) const;  // weights [B, D] -> FVU per replicate, fp64 [B]
};

// The alive latents' codes of one encoding in column-major (CSC) order, so that any block of alive latents
// is a contiguous range: MMAC densifies one block at a time. The entries (8 B each) are the step's largest
// data at high L0 (16384 tokens x L0 4000 = 524 MB per code set): the runner spills them to a scratch file,
// and then only the block in use is in memory (read back by entries()).
struct LatentCodes {
  int64_t tokens = 0;
  torch::Tensor alive;     // I64 [n_alive]: latent ids with >= min_firings firings
  torch::Tensor offsets;   // I64 [n_alive + 1]: entries of alive latent p are [offsets[p], offsets[p+1])
  torch::Tensor rows;      // I32 [nnz]: token of each entry (4 B, not 8); undefined once spilled
  torch::Tensor values;    // F32 [nnz]; undefined once spilled
  torch::Tensor mean, sd, mass;  // fp64 [n_alive]: over all tokens (zeros included)
  int64_t n_alive() const { return alive.numel(); }
  int64_t nnz() const;
  // Moves rows and values into `file` (appended); entries() reads them back by ranges.
  void spill(const std::shared_ptr<ScratchFile>& file);
  bool spilled() const { return file_ != nullptr; }
  struct Entries {
    torch::Tensor rows, values;  // I32, F32, on the codes' device
  };
  Entries entries(int64_t first, int64_t last) const;  // entries [first, last), in memory or read back
  torch::Tensor dense(int64_t begin, int64_t end) const;  // F32 [tokens, end - begin], alive positions
  torch::Tensor sparse_t(int64_t begin, int64_t end) const;  // the same block transposed, sparse COO [end - begin, tokens]

 private:
  struct Block {
    torch::Tensor latent, rows, values;  // per entry: alive position - begin, token, value
  };
  Block block(int64_t begin, int64_t end) const;  // the entries of alive positions [begin, end)
  std::shared_ptr<ScratchFile> file_;
  int64_t rows_at_ = 0, values_at_ = 0;  // byte offsets of the spilled rows and values in file_
};

struct Encoding {
  SequenceSums sums;                      // defined when a decoder was given
  torch::Tensor latent_mean, latent_var;  // fp64 [d_sae] over tokens
  torch::Tensor firings, mass;            // fp64 [d_sae]: tokens with f > 0, sum of f
  LatentCodes codes;                      // when kept (min_firings >= 0)
  double l0 = 0;
};

// One batch's codes: dense f [n, d_sae], or TopK codes without their zeros. The sparse form makes an SAE pass
// cost n d (d_sae + k) instead of 2 n d d_sae and keeps the per-latent sums at n k.
using BatchCodes = std::variant<torch::Tensor, sae::TopKCodes>;
// TopK codes take the sparse form below this k / d_sae (the dense decode GEMM wins above it on the CPU).
inline constexpr double kTopkSparseBelow = 0.05;
// `sae`'s encoder in the form above: sparse for a TopK SAE with k < sparse_below d_sae, dense otherwise.
std::function<BatchCodes(const torch::Tensor&)> encoder_of(const sae::Sae& sae,
                                                           double sparse_below = kTopkSparseBelow);

// Applies `encode` and (if given) `decoder` in batches of `batch` rows to raw rows x [N, d]: per-sequence FVU
// sums (doc [N] indexes D sequences), per-latent moments, and, when keep_codes_min_firings >= 0, the codes
// of the latents with at least that many firings. Where only the FVU is needed (the null's pass), `moments`
// = false skips the per-latent statistics (latent_mean/var, firings, mass and l0 stay undefined / 0).
// Dense and sparse codes give the same results up to fp32/fp64 reassociation.
Encoding encode_rows(const std::function<BatchCodes(const torch::Tensor&)>& encode, const sae::Sae* decoder,
                     const torch::Tensor& x, const torch::Tensor& doc, int64_t n_docs, int64_t batch,
                     int64_t keep_codes_min_firings = -1, bool moments = true);

// Max-over-partners Pearson correlation (Lan et al. 2024), both directions at once. Cross moments E[ab] are
// fp32 products over blocks of alive latents; memory is bounded by block_bytes (two dense blocks of tokens x
// latents) plus a block x block correlation, whatever L0 or the number of alive latents. A block of A whose
// codes are sparser than `sparse_below` (nonzeros / (latents x tokens)) multiplies as a sparse matrix
// (cost nnz x block instead of tokens x block^2: 256x fewer products at L0 64 of 16384); denser blocks as a
// dense GEMM. Both give the same sums up to fp32 reassociation.
// On the native kernel path (runtime::kernel_path: the CPU) the correlations are folded into the maxima row by
// row (transfer/mmac_native.hpp), with the same bits as the tensor form for the same cross moments; and when
// both code sets are sparse (density_a density_b < kMmacSparseProductBelow) the cross moments are summed from
// the codes themselves, token by token, in fp64 (cost: tokens x L0_a x L0_b, no dense block at all).
struct MmacResult {
  double a_to_b = kNaN, a_to_b_weighted = kNaN, b_to_a = kNaN, b_to_a_weighted = kNaN;
};
inline constexpr double kMmacSparseBelow = 0.02;  // sparse x dense beats the GEMM below ~5 % on the 2-core CPU
inline constexpr double kMmacSparseProductBelow = 0.0025;  // ~5 % each: the GEMM wins above (2-core CPU)
MmacResult mmac(const LatentCodes& a, const LatentCodes& b, int64_t block_bytes = int64_t(256) << 20,
                double sparse_below = kMmacSparseBelow);
MmacResult mmac(const LatentCodes& a, const LatentCodes& b, int64_t block_bytes, double sparse_below,
                runtime::KernelPath path);

// Mean over rows of `source_rows` [k, d] of the max cosine with any row of `target_rows` [m, d] (fp64).
double decoder_similarity(const torch::Tensor& source_rows, const torch::Tensor& target_rows);

}  // namespace strata::transfer
