#include "stats/cka.hpp"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.hpp"
#include "core/random.hpp"

namespace strata::stats {
namespace {

torch::Tensor centred64(const torch::Tensor& x) {
  torch::Tensor d = x.to(torch::kFloat64);
  return d - d.mean(0, /*keepdim=*/true);
}

void check_pair(const torch::Tensor& x, const torch::Tensor& y) {
  if (x.dim() != 2 || y.dim() != 2) fail("CKA: inputs must be 2-D [tokens, features]");
  if (x.size(0) != y.size(0)) fail("CKA: inputs pair {} vs {} rows; rows must be the same tokens", x.size(0), y.size(0));
  if (x.size(0) < 2) fail("CKA: needs at least 2 tokens");
}

}  // namespace

double linear_cka(const torch::Tensor& x, const torch::Tensor& y) {
  check_pair(x, y);
  torch::Tensor xc = centred64(x), yc = centred64(y);
  double cross = torch::mm(yc.t(), xc).pow(2).sum().item<double>();
  double xx = torch::mm(xc.t(), xc).pow(2).sum().item<double>();
  double yy = torch::mm(yc.t(), yc).pow(2).sum().item<double>();
  if (xx <= 0 || yy <= 0) return 0.0;  // a constant representation aligns with nothing
  return cross / std::sqrt(xx * yy);
}

GramCka::GramCka(const torch::Tensor& x, const torch::Tensor& y) {
  check_pair(x, y);
  n_ = x.size(0);
  torch::Tensor xc = centred64(x), yc = centred64(y);
  k_ = torch::mm(xc, xc.t());
  l_ = torch::mm(yc, yc.t());
  double kk = k_.pow(2).sum().item<double>(), ll = l_.pow(2).sum().item<double>();
  norm_product_ = std::sqrt(kk * ll);
  observed_ = norm_product_ > 0 ? (k_ * l_).sum().item<double>() / norm_product_ : 0.0;
  k32_ = k_.to(torch::kFloat32).contiguous();
  l32_ = l_.to(torch::kFloat32).contiguous();
}

PermutationTest GramCka::permutation_test(int64_t permutations, uint64_t seed) const {
  PermutationTest out;
  out.observed = observed_;
  out.permutations = permutations;
  out.n = n_;
  if (permutations <= 0 || norm_product_ <= 0) return out;
  std::vector<double> null(permutations);
  const int64_t n = n_;
  const float* k = k32_.data_ptr<float>();
  const float* l = l32_.data_ptr<float>();
  // Permutations run in blocks that share one pass over K (memory-bound otherwise: K is N^2 floats).
  constexpr int64_t kBlock = 8;
  const int64_t blocks = (permutations + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    std::vector<std::vector<int32_t>> perms(kBlock, std::vector<int32_t>(n));
    for (int64_t block = block_begin; block < block_end; ++block) {
      const int64_t first = block * kBlock, count = std::min(kBlock, permutations - first);
      for (int64_t c = 0; c < count; ++c) {
        std::mt19937_64 rng(seed ^ (0x9E3779B97F4A7C15ull * uint64_t(first + c + 1)));
        auto& perm = perms[c];
        std::iota(perm.begin(), perm.end(), 0);
        strata::shuffle(perm, rng);
      }
      // <K, P L P^T> = sum_i sum_j K_ij L_{p(i) p(j)}; K and L are symmetric, so twice the upper triangle.
      double totals[kBlock] = {};
      for (int64_t i = 0; i < n; ++i) {
        const float* krow = k + i * n;
        for (int64_t c = 0; c < count; ++c) {
          const int32_t* perm = perms[c].data();
          const float* lrow = l + int64_t(perm[i]) * n;
          float acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
          int64_t j = i + 1;
          for (; j + 4 <= n; j += 4) {
            acc0 += krow[j] * lrow[perm[j]];
            acc1 += krow[j + 1] * lrow[perm[j + 1]];
            acc2 += krow[j + 2] * lrow[perm[j + 2]];
            acc3 += krow[j + 3] * lrow[perm[j + 3]];
          }
          for (; j < n; ++j) acc0 += krow[j] * lrow[perm[j]];
          totals[c] += 2.0 * double((acc0 + acc1) + (acc2 + acc3)) + double(krow[i]) * double(lrow[perm[i]]);
        }
      }
      for (int64_t c = 0; c < count; ++c) null[first + c] = totals[c] / norm_product_;
    }
  });
  int64_t exceed = 0;
  for (double v : null) exceed += v >= observed_;
  out.p = double(1 + exceed) / double(1 + permutations);
  out.null_mean = std::accumulate(null.begin(), null.end(), 0.0) / double(permutations);
  out.null_max = *std::max_element(null.begin(), null.end());
  return out;
}

std::vector<double> GramCka::weighted(const torch::Tensor& weights) const {
  if (weights.dim() != 2 || weights.size(1) != n_) fail("GramCka::weighted: weights must be [B, {}]", n_);
  torch::Tensor w = weights.to(torch::kFloat64).t().contiguous();  // [N, B]
  torch::Tensor total = w.sum(0);                                  // n_b
  // Weighted HSIC(K, L) with K centred under the weights: A - 2 n sum_i w_i m_i l_i + n^2 g h, where
  // m = K w / n, l = L w / n, g = w.m / n, h = w.l / n, A = w^T (K o L) w. The n^2 factors cancel in CKA.
  auto hsic = [&](const torch::Tensor& a, const torch::Tensor& b, const torch::Tensor& am, const torch::Tensor& bm) {
    torch::Tensor cross = (w * torch::mm(a * b, w)).sum(0);
    torch::Tensor g = (w * am).sum(0) / total, h = (w * bm).sum(0) / total;
    return cross - 2.0 * total * (w * am * bm).sum(0) + total * total * g * h;
  };
  torch::Tensor m = torch::mm(k_, w) / total, lm = torch::mm(l_, w) / total;
  torch::Tensor kl = hsic(k_, l_, m, lm), kk = hsic(k_, k_, m, m), ll = hsic(l_, l_, lm, lm);
  torch::Tensor cka = kl / torch::sqrt(kk * ll);
  cka = torch::where(kk * ll > 0, cka, torch::zeros_like(cka)).contiguous();
  return std::vector<double>(cka.data_ptr<double>(), cka.data_ptr<double>() + cka.numel());
}

}  // namespace strata::stats
