// Linear maps between representation spaces, fitted on paired rows.
#pragma once
#include <torch/types.h>

namespace strata::stats {

// Orthogonal (semi-orthogonal when widths differ) Procrustes: the Q [dz, dy] with orthonormal rows or
// columns maximising tr(Q^T Z^T Y), Q = U V^T from the thin SVD Z^T Y = U S V^T. z [n, dz] and y [n, dy]
// must already be centred. Computed in fp64; returned fp64.
torch::Tensor procrustes(const torch::Tensor& z, const torch::Tensor& y);

// Ridge regression W [dz, dy] = (Z^T Z + lambda I)^-1 Z^T Y on centred z, y, fp64.
torch::Tensor ridge(const torch::Tensor& z, const torch::Tensor& y, double lambda);

// Uniformly random matrix with orthonormal columns, [rows, cols] (rows >= cols), fp64 (QR of a Gaussian
// with the sign fix, i.e. Haar-distributed).
torch::Tensor random_orthonormal(int64_t rows, int64_t cols, torch::Generator& generator);

}  // namespace strata::stats
