#include "stats/cka.hpp"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "core/error.hpp"
#include "core/random.hpp"
#include "stats/cka_native.hpp"

namespace strata::stats {
namespace {

torch::Tensor centred64(const torch::Tensor& x) {
  torch::Tensor d = x.to(torch::kFloat64);
  return d - d.mean(0, /*keepdim=*/true);
}

void check_pair(int64_t nx, int64_t ny) {
  if (nx != ny) fail("CKA: inputs pair {} vs {} rows; rows must be the same tokens", nx, ny);
  if (nx < 2) fail("CKA: needs at least 2 tokens");
}

void check_matrix(const torch::Tensor& x) {
  if (x.dim() != 2) fail("CKA: inputs must be 2-D [tokens, features]");
}

}  // namespace

CkaSide cka_side(const torch::Tensor& x) {
  check_matrix(x);
  CkaSide side;
  side.rows = x;
  side.mean = x.to(torch::kFloat64).mean(0);
  torch::Tensor centred = side.centred();
  side.gram = torch::mm(centred.t(), centred);
  side.self = side.gram.pow(2).sum().item<double>();
  return side;
}

// One fp64 buffer, centred in place (the same bits as rows.to(fp64) - mean, half the fresh memory: at
// [16384, 2560] each buffer is 336 MB of pages to fault in).
torch::Tensor CkaSide::centred() const {
  return rows.to(torch::kFloat64, /*non_blocking=*/false, /*copy=*/true).sub_(mean.unsqueeze(0));
}

torch::Tensor cka_cross(const CkaSide& x, const CkaSide& y) { return cka_cross(x.centred(), y); }

torch::Tensor cka_cross(const torch::Tensor& x_centred, const CkaSide& y) {
  check_pair(x_centred.size(0), y.rows.size(0));
  return torch::mm(y.centred().t(), x_centred);
}

double linear_cka(const CkaSide& x, const CkaSide& y, const torch::Tensor& cross) {
  double cross_sq = cross.pow(2).sum().item<double>();
  if (x.self <= 0 || y.self <= 0) return 0.0;  // a constant representation aligns with nothing
  return cross_sq / std::sqrt(x.self * y.self);
}

double linear_cka(const CkaSide& x, const CkaSide& y) { return linear_cka(x, y, cka_cross(x, y)); }

double linear_cka(const torch::Tensor& x, const torch::Tensor& y) {
  check_matrix(x);
  check_matrix(y);
  check_pair(x.size(0), y.size(0));
  return linear_cka(cka_side(x), cka_side(y));
}

CentredGram::CentredGram(const torch::Tensor& x) {
  check_matrix(x);
  n_ = x.size(0);
  centred_ = centred64(x);
  k_ = torch::mm(centred_, centred_.t());
  self_ = k_.pow(2).sum().item<double>();
  if (k_.device().is_cpu()) k32_ = k_.to(torch::kFloat32).contiguous();  // only the native host loop reads it
}

const CentredGram::Weighted& CentredGram::weighted(const torch::Tensor& weights) const {
  if (weights.dim() != 2 || weights.size(1) != n_) fail("CKA bootstrap: weights must be [B, {}]", n_);
  if (weights_.defined() && weights_.is_same(weights)) return weighted_;
  Weighted w;
  w.weights_t = weights.to(k_.device(), torch::kFloat64).t().contiguous();  // [N, B]
  w.total = w.weights_t.sum(0);                                // n_b
  w.mean = torch::mm(k_, w.weights_t) / w.total;               // K w / n_b
  // Weighted HSIC(K, K) with K centred under the weights (see GramCka::weighted).
  torch::Tensor cross = (w.weights_t * torch::mm(k_ * k_, w.weights_t)).sum(0);
  torch::Tensor g = (w.weights_t * w.mean).sum(0) / w.total;
  w.self = cross - 2.0 * w.total * (w.weights_t * w.mean * w.mean).sum(0) + w.total * w.total * g * g;
  weights_ = weights;
  weighted_ = std::move(w);
  return weighted_;
}

GramCka::GramCka(const torch::Tensor& x, const torch::Tensor& y)
    : GramCka(std::make_shared<CentredGram>(x), std::make_shared<CentredGram>(y)) {}

GramCka::GramCka(std::shared_ptr<const CentredGram> k, std::shared_ptr<const CentredGram> l)
    : k_(std::move(k)), l_(std::move(l)) {
  check_pair(k_->n(), l_->n());
  norm_product_ = std::sqrt(k_->self() * l_->self());
  observed_ = norm_product_ > 0 ? (k_->k() * l_->k()).sum().item<double>() / norm_product_ : 0.0;
}

PermutationTest GramCka::permutation_test(int64_t permutations, uint64_t seed) const {
  return permutation_test(permutations, seed, Form::automatic);
}

PermutationTest GramCka::permutation_test(int64_t permutations, uint64_t seed, Form form) const {
  return permutation_test(permutations, seed, form, runtime::kernel_path(k_->k().device()));
}

PermutationTest GramCka::permutation_test(int64_t permutations, uint64_t seed, Form form,
                                          runtime::KernelPath path) const {
  return permutation_test(permutations, seed, form, path, native::default_gram_loop(n()));
}

PermutationTest GramCka::permutation_test(int64_t permutations, uint64_t seed, Form form, runtime::KernelPath path,
                                          native::GramLoop loop) const {
  PermutationTest out;
  out.observed = observed_;
  out.permutations = permutations;
  out.n = n();
  if (permutations <= 0) return out;  // no test ran: p stays NaN ("not computed"), never a made-up 1
  if (norm_product_ <= 0) {           // a constant side: every permuted CKA is 0 = observed
    out.p = 1.0;
    return out;
  }
  std::vector<double> null(permutations);
  const int64_t n = this->n();
  auto draw = [&](int64_t b, int32_t* perm) {
    std::mt19937_64 rng(strata::derive(seed, "cka/permutation", b));
    std::iota(perm, perm + n, 0);
    for (int64_t i = n; i > 1; --i) std::swap(perm[i - 1], perm[strata::uniform_below(rng, uint64_t(i))]);
  };
  const double dx = double(k_->centred().size(1)), dy = double(l_->centred().size(1));
  if (form == Form::automatic) form = dx * dy < feature_form_ratio(path) * double(n) ? Form::features : Form::gram;
  const torch::Device device = k_->k().device();
  if (path == runtime::KernelPath::native && !device.is_cpu())
    fail("CKA permutation test: the native loop runs on the CPU only, but the Gram matrices are on {}", device.str());
  // Permutations [count, n] drawn on the host (same draws whatever the path or device), as int64 on `device`.
  auto draw_batch = [&](int64_t first, int64_t count) {
    torch::Tensor index = torch::empty({count, n}, torch::kInt32);
    int32_t* ip = index.data_ptr<int32_t>();
    at::parallel_for(0, count, 1, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) draw(first + c, ip + c * n);
    });
    return index.to(device, torch::kInt64);
  };
  auto store = [&](int64_t first, const torch::Tensor& values) {  // values: fp64 [count], un-normalised
    torch::Tensor host = values.to(torch::kCPU, torch::kFloat64).contiguous();
    const double* v = host.data_ptr<double>();
    for (int64_t c = 0; c < host.numel(); ++c) null[first + c] = v[c] / norm_product_;
  };
  if (form == Form::gram && path == runtime::KernelPath::portable) {
    // <K, P L P^T> = sum_ij K_ij L_p(i)p(j): rows of L gathered by p, then columns, for a batch of
    // permutations at once (fp64; about 3 x 8 N^2 bytes per permutation in flight, batches of <= 256 MiB).
    const torch::Tensor& k = k_->k();
    const torch::Tensor& l = l_->k();
    const int64_t batch = std::clamp<int64_t>(int64_t((256 << 20) / (3 * 8 * n * n + 1)), 1, 256);
    for (int64_t first = 0; first < permutations; first += batch) {
      const int64_t count = std::min(batch, permutations - first);
      torch::Tensor index = draw_batch(first, count);
      torch::Tensor rows = l.index_select(0, index.view({-1})).view({count, n, n});  // L[p(i), :]
      torch::Tensor both = rows.gather(2, index.unsqueeze(1).expand({count, n, n}));  // L[p(i), p(j)]
      store(first, (both * k.unsqueeze(0)).sum({1, 2}));
    }
  } else if (form == Form::features) {
    // ||Xc^T P_b Yc||_F^2 for a batch of permutations in one fp32 GEMM: Yc's rows gathered token-major,
    // [N, count, dy] = [N, count dy], so that Xc^T [dx, N] times it gives every [dx, dy] block at once (one
    // large GEMM instead of count narrow ones). Centred in fp64 first (no cancellation of large means), then
    // rounded to fp32 like the Gram loop's K and L; each block's fp32 squares summed in fp64.
    const torch::Tensor xt = k_->centred().t().to(torch::kFloat32).contiguous();  // [dx, N]
    const torch::Tensor yc = l_->centred().to(torch::kFloat32).contiguous();        // [N, dy]
    const int64_t width = yc.size(1);
    const int64_t batch = std::clamp<int64_t>(int64_t((4 << 20) / (4 * n * width + 1)), 1, 512);
    // Already LibTorch ops on any device: the native and portable paths are the same code.
    for (int64_t first = 0; first < permutations; first += batch) {
      const int64_t count = std::min(batch, permutations - first);
      torch::Tensor index = draw_batch(first, count).t().contiguous();  // [N, count]: token-major
      torch::Tensor gathered = yc.index_select(0, index.view({-1})).view({n, count * width});
      torch::Tensor cross = torch::mm(xt, gathered).view({xt.size(0), count, width});  // [dx, count, dy]
      store(first, cross.square().sum(std::vector<int64_t>{0, 2}, false, torch::kFloat64));
    }
  } else {
    const float* k = k_->k32().data_ptr<float>();
    const float* l = l_->k32().data_ptr<float>();
    // Permutations run in blocks that share one pass over K (memory-bound otherwise: K is N^2 floats).
    constexpr int64_t kBlock = native::kGramBlock;
    const int64_t blocks = (permutations + kBlock - 1) / kBlock;
    at::parallel_for(0, blocks, 1, [&](int64_t block_begin, int64_t block_end) {
      std::vector<std::vector<int32_t>> perms(kBlock, std::vector<int32_t>(n));
      const int32_t* block_perms[kBlock];
      for (int64_t c = 0; c < kBlock; ++c) block_perms[c] = perms[c].data();
      for (int64_t block = block_begin; block < block_end; ++block) {
        const int64_t first = block * kBlock, count = std::min(kBlock, permutations - first);
        for (int64_t c = 0; c < count; ++c) draw(first + c, perms[c].data());
        double totals[kBlock];
        native::gram_permutation_sums(k, l, n, block_perms, count, totals, loop);
        for (int64_t c = 0; c < count; ++c) null[first + c] = totals[c] / norm_product_;
      }
    });
  }
  int64_t exceed = 0;
  for (double v : null) exceed += v >= observed_;
  out.p = double(1 + exceed) / double(1 + permutations);
  out.null_mean = std::accumulate(null.begin(), null.end(), 0.0) / double(permutations);
  out.null_max = *std::max_element(null.begin(), null.end());
  return out;
}

std::vector<double> GramCka::weighted(const torch::Tensor& weights) const {
  if (weights.dim() != 2 || weights.size(1) != n()) fail("GramCka::weighted: weights must be [B, {}]", n());
  // Weighted HSIC(K, L) with K centred under the weights: A - 2 n sum_i w_i m_i l_i + n^2 g h, where
  // m = K w / n, l = L w / n, g = w.m / n, h = w.l / n, A = w^T (K o L) w. The n^2 factors cancel in CKA.
  // The self terms HSIC(K, K), HSIC(L, L) and K w, L w come from each side's cache.
  const CentredGram::Weighted& wk = k_->weighted(weights);
  const CentredGram::Weighted& wl = l_->weighted(weights);
  const torch::Tensor& w = wk.weights_t;
  const torch::Tensor& total = wk.total;
  torch::Tensor cross = (w * torch::mm(k_->k() * l_->k(), w)).sum(0);
  torch::Tensor g = (w * wk.mean).sum(0) / total, h = (w * wl.mean).sum(0) / total;
  torch::Tensor kl = cross - 2.0 * total * (w * wk.mean * wl.mean).sum(0) + total * total * g * h;
  torch::Tensor kk = wk.self, ll = wl.self;
  torch::Tensor cka = kl / torch::sqrt(kk * ll);
  cka = torch::where(kk * ll > 0, cka, torch::zeros_like(cka)).contiguous();
  cka = cka.to(torch::kCPU);
  return std::vector<double>(cka.data_ptr<double>(), cka.data_ptr<double>() + cka.numel());
}

}  // namespace strata::stats
