// Linear maps between representation spaces, fitted on paired rows.
#pragma once
#include <torch/types.h>

namespace strata::stats {

// Orthogonal (semi-orthogonal when widths differ) Procrustes: the Q [dz, dy] with orthonormal rows or
// columns maximising tr(Q^T Z^T Y), Q = U V^T from the thin SVD Z^T Y = U S V^T. z [n, dz] and y [n, dy]
// must already be centred. Computed in fp64; returned fp64.
torch::Tensor procrustes(const torch::Tensor& z, const torch::Tensor& y);
// The same from the cross product Z^T Y [dz, dy] alone. The SVD of (Z^T Y)^T is V S U^T, so
// procrustes_from_cross(C^T) = procrustes_from_cross(C)^T: the two directions of a pair share one factor.
torch::Tensor procrustes_from_cross(const torch::Tensor& cross);

// Ridge regression W [dz, dy] = (Z^T Z + lambda I)^-1 Z^T Y on centred z, y, fp64.
torch::Tensor ridge(const torch::Tensor& z, const torch::Tensor& y, double lambda);
// The same from Z^T Z and Z^T Y (e.g. a Gram made once per representation and a shared cross product).
torch::Tensor ridge_from_products(const torch::Tensor& gram, const torch::Tensor& cross, double lambda);

// Uniformly random matrix with orthonormal columns, [rows, cols] (rows >= cols), fp64 (QR of a Gaussian
// with the sign fix, i.e. Haar-distributed).
torch::Tensor random_orthonormal(int64_t rows, int64_t cols, torch::Generator& generator);

}  // namespace strata::stats
