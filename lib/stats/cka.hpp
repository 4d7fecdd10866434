// Linear centred kernel alignment (Kornblith et al. 2019):
//   CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F),   Xc, Yc column-centred, rows = tokens.
// Equivalently, with centred Gram matrices K = Xc Xc^T and L = Yc Yc^T: CKA = <K, L> / (||K|| ||L||).
// Invariant to orthogonal transforms and isotropic scaling of either side; rows must pair the same tokens.
//
// A representation enters many pairs (every cell meets every other), so its per-side quantities are built
// once: CkaSide (centred features and ||Xc^T Xc||_F^2) and CentredGram (K, ||K||_F^2, and its weighted self
// terms for a given bootstrap weight matrix). A pair then costs only its cross term.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "core/runtime.hpp"
#include "stats/cka_native.hpp"

namespace strata::stats {

// Feature-space form, O(N dx dy), fp64 accumulation. x [N, dx], y [N, dy].
double linear_cka(const torch::Tensor& x, const torch::Tensor& y);

// One side of linear_cka, made once per representation: the rows as given, their fp64 column means, Xc^T Xc
// and its squared Frobenius norm. (Xc^T Xc and the cross products also serve the ridge map's evaluation:
// transfer/maps.hpp.) Xc itself is made again, with the same bits, for each cross term: an fp64 copy of every
// cell's rows held for a whole model pair came to 2.7 GB at phase5_4's widths.
struct CkaSide {
  torch::Tensor rows;  // [N, d] as given (fp32 activations)
  torch::Tensor mean;  // fp64 [d]
  torch::Tensor gram;  // Xc^T Xc [d, d]
  double self = 0;     // ||Xc^T Xc||_F^2
  torch::Tensor centred() const;  // Xc = fp64 rows - mean [N, d]
};
CkaSide cka_side(const torch::Tensor& x);
double linear_cka(const CkaSide& x, const CkaSide& y);  // == linear_cka(x, y) of the raw inputs
// The pair's cross term, Yc^T Xc [dy, dx], and CKA from it (linear_cka(x, y) is the two in sequence).
torch::Tensor cka_cross(const CkaSide& x, const CkaSide& y);
torch::Tensor cka_cross(const torch::Tensor& x_centred, const CkaSide& y);  // x's Xc made once for many y
double linear_cka(const CkaSide& x, const CkaSide& y, const torch::Tensor& cross);

struct PermutationTest {
  double observed = 0;
  double p = std::numeric_limits<double>::quiet_NaN();  // (1 + #{b : null_b >= observed}) / (1 + B); NaN if B = 0
  double null_mean = 0;  // mean of the null CKA values
  double null_max = 0;
  int64_t permutations = 0;
  int64_t n = 0;
};

// The centred Gram matrix of one representation on N tokens, K = Xc Xc^T (fp64, and an fp32 copy for the
// permutation loop), with ||K||_F^2. weighted_self(w) caches the bootstrap's weighted self term of K for one
// weight matrix (the same weights serve every pair of a model pair).
class CentredGram {
 public:
  CentredGram() = default;
  explicit CentredGram(const torch::Tensor& x);
  int64_t n() const { return n_; }
  const torch::Tensor& k() const { return k_; }
  const torch::Tensor& k32() const { return k32_; }
  const torch::Tensor& centred() const { return centred_; }  // Xc, fp64 [N, d]
  double self() const { return self_; }
  // Weighted HSIC(K, K) and K w / sum(w) per replicate, for weights [B, N]; made on first use per weights.
  struct Weighted {
    torch::Tensor weights_t, total, mean, self;  // [N, B], [B], [N, B], [B]
  };
  const Weighted& weighted(const torch::Tensor& weights) const;

 private:
  int64_t n_ = 0;
  torch::Tensor centred_, k_, k32_;
  double self_ = 0;
  mutable torch::Tensor weights_;  // the weights `weighted_` was made for
  mutable Weighted weighted_;
};

// Gram-matrix form for the permutation test and the bootstrap, which both need many CKA values of the
// same N tokens: O(N^2) memory, O(N^2) per permutation.
class GramCka {
 public:
  GramCka(const torch::Tensor& x, const torch::Tensor& y);
  GramCka(std::shared_ptr<const CentredGram> k, std::shared_ptr<const CentredGram> l);  // shared, not copied
  int64_t n() const { return k_->n(); }
  double value() const { return observed_; }
  // Rows of y permuted against rows of x: <K, P L P^T> / (||K|| ||L||), since centring commutes with
  // permutation. Permutation b draws from a generator seeded by derive(seed, "cka/permutation", b): the
  // result does not depend on the thread count. Two exact forms, chosen by cost:
  //   Gram form:    sum_ij K_ij L_p(i)p(j), N^2/2 gathers per permutation, blocks of 8 sharing a pass over K;
  //   feature form: ||Xc^T P Yc||_F^2, one fp32 GEMM per batch of permutations (2 N dx dy flops each; Xc, Yc
  //                 centred in fp64, then rounded to fp32 as the Gram loop's K and L are), cheaper while
  //                 dx dy < kFeatureFormRatio N (narrow representations, e.g. the zoo).
  PermutationTest permutation_test(int64_t permutations, uint64_t seed) const;
  // Each form has the native host loop (CPU) and a portable LibTorch path (any device: the permutations are
  // drawn on the host as above, then gathered in batches on the Grams' device). The path defaults to
  // runtime::kernel_path of the Grams' device (STRATA_KERNELS overrides); both give the same null values up to
  // rounding (the portable Gram form accumulates in fp64, the native loop multiplies in fp32).
  enum class Form { automatic, gram, features };
  PermutationTest permutation_test(int64_t permutations, uint64_t seed, Form form) const;
  PermutationTest permutation_test(int64_t permutations, uint64_t seed, Form form, runtime::KernelPath path) const;
  // The native Gram loop's form (stats/cka_native.hpp: reference or vectorised, the same bits); the overloads
  // above take native::default_gram_loop(N), the faster of the two on this CPU.
  PermutationTest permutation_test(int64_t permutations, uint64_t seed, Form form, runtime::KernelPath path,
                                   native::GramLoop loop) const;
  // Feature form when its cost per permutation, c_f N dx dy (GEMM and gather), is below the Gram loop's c_g N^2,
  // i.e. dx dy < ratio N with ratio = c_g / c_f. test_stats cka_permutation_forms_agree_and_cost prints both:
  // on the 2-core Zen 5 machine c_g / c_f = 28 at (N, dx, dy) = (1024, 96, 64) (0.23 vs 0.05 ms) and 36 at
  // (2048, 256, 192) (2.1 vs 0.86 ms); 24 keeps the Gram loop where the two are close.
  static constexpr double kFeatureFormRatio = 24.0;
  // The portable Gram form moves about 48 N^2 bytes per permutation (two fp64 gathers of L and the product)
  // where the native loop makes N^2/2 fp32 gathers: on the CPU it is ~10x slower per element, so the portable
  // path keeps the feature form (the same code on both paths) up to a 10x larger dx dy. On a GPU both forms
  // are fast.
  static constexpr double kPortableFeatureFormRatio = 240.0;
  static double feature_form_ratio(runtime::KernelPath path) {
    return path == runtime::KernelPath::native ? kFeatureFormRatio : kPortableFeatureFormRatio;
  }
  // CKA with token multiplicities: weights [B, N] (e.g. bootstrap counts); one value per row.
  // Centring is weighted, so a row of integer counts gives exactly the CKA of the resampled matrix.
  std::vector<double> weighted(const torch::Tensor& weights) const;

 private:
  std::shared_ptr<const CentredGram> k_, l_;
  double observed_ = 0, norm_product_ = 0;
};

}  // namespace strata::stats
