#include "stats/linalg.hpp"

#include <torch/torch.h>

#include "core/error.hpp"

namespace strata::stats {

torch::Tensor procrustes(const torch::Tensor& z, const torch::Tensor& y) {
  if (z.dim() != 2 || y.dim() != 2 || z.size(0) != y.size(0))
    fail("procrustes: z [n, dz] and y [n, dy] must pair the same n rows");
  return procrustes_from_cross(torch::mm(z.to(torch::kFloat64).t(), y.to(torch::kFloat64)));
}

torch::Tensor procrustes_from_cross(const torch::Tensor& cross) {
  auto [u, s, vh] = torch::linalg_svd(cross.to(torch::kFloat64), /*full_matrices=*/false);
  return torch::mm(u, vh);
}

torch::Tensor ridge(const torch::Tensor& z, const torch::Tensor& y, double lambda) {
  if (z.dim() != 2 || y.dim() != 2 || z.size(0) != y.size(0))
    fail("ridge: z [n, dz] and y [n, dy] must pair the same n rows");
  torch::Tensor zd = z.to(torch::kFloat64), yd = y.to(torch::kFloat64);
  return ridge_from_products(torch::mm(zd.t(), zd), torch::mm(zd.t(), yd), lambda);
}

torch::Tensor ridge_from_products(const torch::Tensor& gram, const torch::Tensor& cross, double lambda) {
  torch::Tensor regularised = gram.to(torch::kFloat64).clone();
  regularised.diagonal().add_(lambda);
  return torch::linalg_solve(regularised, cross.to(torch::kFloat64));
}

torch::Tensor random_orthonormal(int64_t rows, int64_t cols, torch::Generator& generator) {
  if (rows < cols) fail("random_orthonormal: needs rows >= cols ({} < {})", rows, cols);
  torch::Tensor gaussian = torch::randn({rows, cols}, generator, torch::dtype(torch::kFloat64));
  auto [q, r] = torch::linalg_qr(gaussian, "reduced");
  return q * torch::sign(r.diagonal()).unsqueeze(0);
}

}  // namespace strata::stats
