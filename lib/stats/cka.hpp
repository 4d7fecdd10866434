// Linear centred kernel alignment (Kornblith et al. 2019):
//   CKA(X, Y) = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F),   Xc, Yc column-centred, rows = tokens.
// Equivalently, with centred Gram matrices K = Xc Xc^T and L = Yc Yc^T: CKA = <K, L> / (||K|| ||L||).
// Invariant to orthogonal transforms and isotropic scaling of either side; rows must pair the same tokens.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace strata::stats {

// Feature-space form, O(N dx dy), fp64 accumulation. x [N, dx], y [N, dy].
double linear_cka(const torch::Tensor& x, const torch::Tensor& y);

struct PermutationTest {
  double observed = 0;
  double p = 1;          // (1 + #{b : null_b >= observed}) / (1 + B)
  double null_mean = 0;  // mean of the null CKA values
  double null_max = 0;
  int64_t permutations = 0;
  int64_t n = 0;
};

// Gram-matrix form for the permutation test and the bootstrap, which both need many CKA values of the
// same N tokens: O(N^2) memory, O(N^2) per permutation.
class GramCka {
 public:
  GramCka(const torch::Tensor& x, const torch::Tensor& y);
  int64_t n() const { return n_; }
  double value() const { return observed_; }
  // Rows of y permuted against rows of x: <K, P L P^T> / (||K|| ||L||), since centring commutes with
  // permutation. Permutation b draws from a generator seeded by (seed, b): the result does not depend on
  // the thread count.
  PermutationTest permutation_test(int64_t permutations, uint64_t seed) const;
  // CKA with token multiplicities: weights [B, N] (e.g. bootstrap counts); one value per row.
  // Centring is weighted, so a row of integer counts gives exactly the CKA of the resampled matrix.
  std::vector<double> weighted(const torch::Tensor& weights) const;

 private:
  int64_t n_ = 0;
  torch::Tensor k_, l_;  // centred Gram matrices, fp64 [N, N]
  torch::Tensor k32_, l32_;
  double observed_ = 0, norm_product_ = 0;
};

}  // namespace strata::stats
