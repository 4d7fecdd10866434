#include "sae/architecture.hpp"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <atomic>
#include <cmath>
#include <limits>

#include "core/error.hpp"
#include "sae/kernels.hpp"
#include "sae/train.hpp"

namespace strata::sae {
namespace {

float* fptr(const torch::Tensor& t) { return t.data_ptr<float>(); }

// Per-chunk partial column sums [kChunks, n], reduced in chunk order in fp64.
struct ColumnSums {
  torch::Tensor partial;  // F32 [kChunks, n]
  void reset(int64_t n) {
    if (!partial.defined() || partial.size(1) != n) partial = torch::empty({kChunks, n});
    partial.zero_();
  }
  float* chunk(int64_t c) { return fptr(partial) + c * partial.size(1); }
  // out[j] = scale * sum over chunks, as F32 [n].
  torch::Tensor total(double scale = 1.0) const {
    return (partial.to(torch::kFloat64).sum(0) * scale).to(torch::kFloat32);
  }
};

void ensure(torch::Tensor& t, std::initializer_list<int64_t> shape, torch::ScalarType dtype = torch::kFloat32) {
  if (!t.defined() || t.sizes() != torch::IntArrayRef(shape) || t.scalar_type() != dtype)
    t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
}

// Shared by both architectures: xc = x - b_dec and pre = xc @ W_enc + b_enc.
void encode_dense(const Parameters& p, const torch::Tensor& x, torch::Tensor& xc, torch::Tensor& pre) {
  const int64_t B = x.size(0), d_in = x.size(1), d_sae = p.W_dec.size(0);
  ensure(xc, {B, d_in});
  ensure(pre, {B, d_sae});
  for_chunks(B, [&](int64_t, int64_t r0, int64_t r1) {
    kernels::subtract_bias_rows(fptr(xc), fptr(x), fptr(p.b_dec), d_in, r0, r1);
  });
  at::addmm_out(pre, p.b_enc, xc, p.W_enc_t.t());
}

// e = x_hat - x in place; returns sum e^2 and the column sums of e.
double reconstruction_error(torch::Tensor& x_hat, const torch::Tensor& x, ColumnSums& colsum_e) {
  const int64_t B = x.size(0), d_in = x.size(1);
  colsum_e.reset(d_in);
  std::array<double, kChunks> sse{};
  for_chunks(B, [&](int64_t c, int64_t r0, int64_t r1) {
    sse[c] = kernels::error_rows(fptr(x_hat), fptr(x), d_in, r0, r1, colsum_e.chunk(c));
  });
  double total = 0;
  for (double s : sse) total += s;
  return total;
}

// db_dec = colsum(dL/dx_hat) - W_enc @ db_enc: x_hat depends on b_dec directly and through xc = x - b_dec.
// The second term is a GEMV where autograd would spend a full GEMM on dL/dxc.
torch::Tensor b_dec_gradient(const Parameters& p, const torch::Tensor& colsum_grad_out, const torch::Tensor& db_enc) {
  return colsum_grad_out - torch::mv(p.W_enc_t.t(), db_enc);
}

// ReLU SAE with the L1 penalty weighted by decoder-row norms (SAELens "standard").
class StandardArchitecture final : public Architecture {
 public:
  std::string name() const override { return "standard"; }
  double decoder_init_norm() const override { return 0.1; }

  StepResult step(const Parameters& p, const torch::Tensor& x, double l1c, const torch::Tensor&,
                  Parameters* grads) override {
    const int64_t B = x.size(0), d_in = x.size(1), d_sae = p.W_dec.size(0);
    ensure(norms_, {d_sae});
    at::parallel_for(0, d_sae, 256, [&](int64_t r0, int64_t r1) {
      kernels::row_norms(fptr(p.W_dec), d_in, r0, r1, fptr(norms_));
    });
    encode_dense(p, x, xc_, f_);
    colsum_f_.reset(d_sae);
    std::array<int64_t, kChunks> active{};
    for_chunks(B, [&](int64_t c, int64_t r0, int64_t r1) {
      active[c] = kernels::relu_rows(fptr(f_), d_sae, r0, r1, colsum_f_.chunk(c));
    });
    auto colsum_f = colsum_f_.total();
    ensure(x_hat_, {B, d_in});
    at::addmm_out(x_hat_, p.b_dec, f_, p.W_dec);
    double sse = reconstruction_error(x_hat_, x, colsum_e_);

    StepResult out;
    out.mse = sse / double(B);
    out.l1 = (colsum_f.to(torch::kFloat64) * norms_.to(torch::kFloat64)).sum().item<double>() / double(B);
    out.loss = out.mse + l1c * out.l1;
    for (int64_t a : active) out.active += a;
    out.fired = colsum_f > 0;
    if (!grads) return out;

    const double g_scale = 2.0 / double(B);  // dL/dx_hat = g_scale * e
    at::addmm_out(grads->W_dec, grads->W_dec, f_.t(), x_hat_, /*beta=*/0.0, /*alpha=*/g_scale);
    // L1 through the decoder norms: d/dW_dec_i = l1c/B * colsum(f)_i * W_dec_i / ||W_dec_i||, applied in Adam.
    row_decay_ = (colsum_f.to(torch::kFloat64) * (l1c / double(B)) / norms_.to(torch::kFloat64).clamp_min(1e-12))
                     .to(torch::kFloat32);
    ensure(df_, {B, d_sae});
    at::addmm_out(df_, df_, x_hat_, p.W_dec.t(), /*beta=*/0.0, /*alpha=*/g_scale);
    auto l1_grad = (norms_ * float(l1c / double(B))).contiguous();
    colsum_dpre_.reset(d_sae);
    for_chunks(B, [&](int64_t c, int64_t r0, int64_t r1) {
      kernels::relu_backward_rows(fptr(df_), fptr(f_), fptr(l1_grad), d_sae, r0, r1, colsum_dpre_.chunk(c));
    });
    grads->b_enc.copy_(colsum_dpre_.total());
    at::addmm_out(grads->W_enc_t, grads->W_enc_t, df_.t(), xc_, /*beta=*/0.0, /*alpha=*/1.0);
    grads->b_dec.copy_(b_dec_gradient(p, colsum_e_.total(g_scale), grads->b_enc));
    return out;
  }

  torch::Tensor decoder_row_decay() const override { return row_decay_; }

 private:
  torch::Tensor norms_, xc_, f_, x_hat_, df_, row_decay_;
  ColumnSums colsum_f_, colsum_e_, colsum_dpre_;
};

// Codes grouped by latent, built by a counting sort of (row, slot) entries on latent id.
struct LatentCsr {
  std::vector<int64_t> offsets;
  std::vector<int32_t> row;
  std::vector<float> val, dval;
  void build(const int32_t* idx, const float* v, const float* dv, int64_t B, int64_t k, int64_t d_sae) {
    offsets.assign(size_t(d_sae + 1), 0);
    for (int64_t q = 0; q < B * k; ++q)
      if (v[q] > 0.0f) ++offsets[size_t(idx[q]) + 1];
    for (int64_t j = 0; j < d_sae; ++j) offsets[j + 1] += offsets[j];
    int64_t total = offsets[d_sae];
    row.resize(size_t(total));
    val.resize(size_t(total));
    dval.resize(size_t(total));
    std::vector<int64_t> cursor(offsets.begin(), offsets.end() - 1);
    for (int64_t q = 0; q < B * k; ++q) {
      if (!(v[q] > 0.0f)) continue;
      int64_t at = cursor[size_t(idx[q])]++;
      row[at] = int32_t(q / k);
      val[at] = v[q];
      dval[at] = dv[q];
    }
  }
  kernels::LatentEntries view() const { return {offsets.data(), row.data(), val.data(), dval.data()}; }
};

// TopK SAE (Gao et al. 2024) with unit-norm decoder rows and the AuxK loss on dead latents.
class TopKArchitecture final : public Architecture {
 public:
  TopKArchitecture(int64_t k, int64_t aux_k, double aux_coefficient)
      : k_(k), aux_k_(aux_k), aux_coefficient_(aux_coefficient) {}
  std::string name() const override { return "topk"; }
  double decoder_init_norm() const override { return 1.0; }

  StepResult step(const Parameters& p, const torch::Tensor& x, double, const torch::Tensor& dead,
                  Parameters* grads) override {
    const int64_t B = x.size(0), d_in = x.size(1), d_sae = p.W_dec.size(0);
    if (k_ > d_sae) fail("topk SAE: k = {} exceeds d_sae = {}", k_, d_sae);
    encode_dense(p, x, xc_, pre_);
    ensure(idx_, {B, k_}, torch::kInt32);
    ensure(val_, {B, k_});
    for_chunks(B, [&](int64_t, int64_t r0, int64_t r1) {
      kernels::topk_rows(fptr(pre_), nullptr, 0, d_sae, k_, r0, r1, idx_.data_ptr<int32_t>(), fptr(val_));
    });
    ensure(x_hat_, {B, d_in});
    for_chunks(B, [&](int64_t, int64_t r0, int64_t r1) {
      kernels::sparse_decode_rows(idx_.data_ptr<int32_t>(), fptr(val_), k_, fptr(p.W_dec), fptr(p.b_dec), d_in, r0, r1,
                                  fptr(x_hat_));
    });
    double sse = reconstruction_error(x_hat_, x, colsum_e_);

    StepResult out;
    out.mse = sse / double(B);
    auto positive = val_ > 0;
    out.active = positive.sum().item<int64_t>();
    out.fired = torch::zeros({d_sae}, torch::kBool);
    out.fired.index_put_({idx_.masked_select(positive).to(torch::kInt64)}, true);

    // AuxK: the top aux_k dead latents reconstruct the residual x - x_hat (detached).
    const int64_t n_dead = dead.defined() ? dead.numel() : 0;
    const int64_t aux_k = std::min(aux_k_ > 0 ? aux_k_ : d_in / 2, n_dead);
    double aux_scale = 0.0;
    if (aux_k > 0 && aux_coefficient_ > 0) {
      const int64_t target_k = aux_k_ > 0 ? aux_k_ : d_in / 2;
      aux_scale = aux_coefficient_ * std::min(1.0, double(n_dead) / double(target_k));
      auto dead_ids = dead.to(torch::kInt32).contiguous();
      ensure(aux_idx_, {B, aux_k}, torch::kInt32);
      ensure(aux_val_, {B, aux_k});
      ensure(aux_out_, {B, d_in});
      for_chunks(B, [&](int64_t, int64_t r0, int64_t r1) {
        kernels::topk_rows(fptr(pre_), dead_ids.data_ptr<int32_t>(), n_dead, d_sae, aux_k, r0, r1,
                           aux_idx_.data_ptr<int32_t>(), fptr(aux_val_));
        kernels::sparse_decode_rows(aux_idx_.data_ptr<int32_t>(), fptr(aux_val_), aux_k, fptr(p.W_dec), nullptr, d_in,
                                    r0, r1, fptr(aux_out_));
      });
      aux_out_ += x_hat_;  // aux reconstruction - residual = aux + (x_hat - x)
      out.aux = aux_scale * aux_out_.square().sum().item<double>() / double(B);
    }
    out.loss = out.mse + out.aux;
    if (!grads) return out;

    const float g_scale = float(2.0 / double(B));
    ensure(dval_, {B, k_});
    for_chunks(B, [&](int64_t, int64_t r0, int64_t r1) {
      kernels::sparse_dot_rows(idx_.data_ptr<int32_t>(), fptr(val_), k_, fptr(p.W_dec), fptr(x_hat_), g_scale, d_in,
                               r0, r1, fptr(dval_));
    });
    main_.build(idx_.data_ptr<int32_t>(), fptr(val_), fptr(dval_), B, k_, d_sae);
    grads->W_dec.zero_();
    grads->W_enc_t.zero_();
    grads->b_enc.zero_();
    auto accumulate = [&](const LatentCsr& csr, const torch::Tensor& target, float dec_scale) {
      at::parallel_for(0, d_sae, 64, [&](int64_t j0, int64_t j1) {
        kernels::accumulate_latents(csr.view(), fptr(target), dec_scale, fptr(xc_), d_in, j0, j1, fptr(grads->W_dec),
                                    fptr(grads->W_enc_t), fptr(grads->b_enc));
      });
    };
    accumulate(main_, x_hat_, g_scale);
    if (out.aux > 0) {
      const int64_t aux_k_used = aux_idx_.size(1);
      const float aux_g_scale = float(2.0 * aux_scale / double(B));
      ensure(aux_dval_, {B, aux_k_used});
      for_chunks(B, [&](int64_t, int64_t r0, int64_t r1) {
        kernels::sparse_dot_rows(aux_idx_.data_ptr<int32_t>(), fptr(aux_val_), aux_k_used, fptr(p.W_dec),
                                 fptr(aux_out_), aux_g_scale, d_in, r0, r1, fptr(aux_dval_));
      });
      aux_.build(aux_idx_.data_ptr<int32_t>(), fptr(aux_val_), fptr(aux_dval_), B, aux_k_used, d_sae);
      accumulate(aux_, aux_out_, aux_g_scale);
    }
    // Unit-norm decoder rows: only the gradient component tangent to the sphere is kept.
    at::parallel_for(0, d_sae, 256, [&](int64_t r0, int64_t r1) {
      kernels::project_out_parallel_rows(fptr(grads->W_dec), fptr(p.W_dec), d_in, r0, r1);
    });
    grads->b_dec.copy_(b_dec_gradient(p, colsum_e_.total(g_scale), grads->b_enc));
    return out;
  }

  void after_update(Parameters& p) override {
    at::parallel_for(0, p.W_dec.size(0), 256, [&](int64_t r0, int64_t r1) {
      kernels::normalize_rows(fptr(p.W_dec), p.W_dec.size(1), r0, r1);
    });
  }

 private:
  int64_t k_, aux_k_;
  double aux_coefficient_;
  torch::Tensor xc_, pre_, idx_, val_, dval_, x_hat_, aux_idx_, aux_val_, aux_dval_, aux_out_;
  ColumnSums colsum_e_;
  LatentCsr main_, aux_;
};

// ---------------------------------------------------------------- portable path (LibTorch ops, any device)

// sum e^2, the L1 sum and the active count in one host transfer (one device synchronisation per step).
struct StepStats {
  double sse, l1, active;
};
StepStats fetch_stats(const torch::Tensor& sse, const torch::Tensor& l1, const torch::Tensor& active) {
  const torch::Tensor host = torch::stack({sse, l1, active.to(torch::kFloat64)}).to(torch::kCPU);
  const auto a = host.accessor<double, 1>();
  return {a[0], a[1], a[2]};
}

// g -= (g . W_row) / ||W_row||^2 * W_row for every row with a nonzero norm.
void project_out_parallel(torch::Tensor& g, const torch::Tensor& W) {
  const torch::Tensor ww = W.square().sum(1, /*keepdim=*/true);
  const torch::Tensor gw = (g * W).sum(1, /*keepdim=*/true);
  g.sub_(torch::where(ww > 0, gw / ww.clamp_min(std::numeric_limits<float>::min()), torch::zeros_like(ww)) * W);
}

// The ReLU SAE of StandardArchitecture, same formulas.
class PortableStandardArchitecture final : public Architecture {
 public:
  std::string name() const override { return "standard"; }
  double decoder_init_norm() const override { return 0.1; }

  StepResult step(const Parameters& p, const torch::Tensor& x, double l1c, const torch::Tensor&,
                  Parameters* grads) override {
    const int64_t B = x.size(0);
    const torch::Tensor norms = p.W_dec.norm(2, {1});
    const torch::Tensor xc = x - p.b_dec;
    const torch::Tensor f = torch::addmm(p.b_enc, xc, p.W_enc_t.t()).relu_();
    const torch::Tensor e = torch::addmm(p.b_dec, f, p.W_dec).sub_(x);  // x_hat - x
    const torch::Tensor colsum_f = f.sum(0);
    const StepStats st = fetch_stats(e.square().sum(torch::kFloat64),
                                     (colsum_f.to(torch::kFloat64) * norms.to(torch::kFloat64)).sum(), (f > 0).sum());
    StepResult out;
    out.mse = st.sse / double(B);
    out.l1 = st.l1 / double(B);
    out.loss = out.mse + l1c * out.l1;
    out.active = int64_t(st.active);
    out.fired = (colsum_f > 0).to(torch::kCPU);
    if (!grads) return out;

    const double g_scale = 2.0 / double(B);  // dL/dx_hat = g_scale * e
    at::addmm_out(grads->W_dec, grads->W_dec, f.t(), e, /*beta=*/0.0, /*alpha=*/g_scale);
    row_decay_ = (colsum_f.to(torch::kFloat64) * (l1c / double(B)) / norms.to(torch::kFloat64).clamp_min(1e-12))
                     .to(torch::kFloat32);
    torch::Tensor df = torch::mm(e, p.W_dec.t()).mul_(g_scale);
    df.add_(norms * float(l1c / double(B))).masked_fill_(f <= 0, 0.0f);
    grads->b_enc.copy_(df.sum(0));
    at::addmm_out(grads->W_enc_t, grads->W_enc_t, df.t(), xc, /*beta=*/0.0, /*alpha=*/1.0);
    grads->b_dec.copy_(b_dec_gradient(p, e.sum(0).mul_(g_scale), grads->b_enc));
    return out;
  }

  torch::Tensor decoder_row_decay() const override { return row_decay_; }

 private:
  torch::Tensor row_decay_;
};

// The TopK SAE of TopKArchitecture with dense code matrices [B, d_sae] (zero outside the top k).
class PortableTopKArchitecture final : public Architecture {
 public:
  PortableTopKArchitecture(int64_t k, int64_t aux_k, double aux_coefficient)
      : k_(k), aux_k_(aux_k), aux_coefficient_(aux_coefficient) {}
  std::string name() const override { return "topk"; }
  double decoder_init_norm() const override { return 1.0; }

  StepResult step(const Parameters& p, const torch::Tensor& x, double, const torch::Tensor& dead,
                  Parameters* grads) override {
    const int64_t B = x.size(0), d_in = x.size(1), d_sae = p.W_dec.size(0);
    if (k_ > d_sae) fail("topk SAE: k = {} exceeds d_sae = {}", k_, d_sae);
    const torch::Tensor xc = x - p.b_dec;
    const torch::Tensor pre = torch::addmm(p.b_enc, xc, p.W_enc_t.t());
    const torch::Tensor codes = top_codes(pre, k_, {});
    const torch::Tensor e = torch::addmm(p.b_dec, codes, p.W_dec).sub_(x);  // x_hat - x

    // AuxK: the top aux_k dead latents reconstruct the residual x - x_hat (detached).
    const int64_t n_dead = dead.defined() ? dead.numel() : 0;
    const int64_t aux_k = std::min(aux_k_ > 0 ? aux_k_ : d_in / 2, n_dead);
    double aux_scale = 0.0;
    torch::Tensor aux_codes, aux_out, aux_sum = torch::zeros({}, pre.options().dtype(torch::kFloat64));
    if (aux_k > 0 && aux_coefficient_ > 0) {
      const int64_t target_k = aux_k_ > 0 ? aux_k_ : d_in / 2;
      aux_scale = aux_coefficient_ * std::min(1.0, double(n_dead) / double(target_k));
      aux_codes = top_codes(pre, aux_k, dead.to(pre.device(), torch::kInt64));
      aux_out = torch::addmm(e, aux_codes, p.W_dec);  // aux reconstruction - residual = aux + (x_hat - x)
      aux_sum = aux_out.square().sum(torch::kFloat64);
    }
    const torch::Tensor positive = codes > 0;
    const StepStats st = fetch_stats(e.square().sum(torch::kFloat64), aux_sum, positive.sum());
    StepResult out;
    out.mse = st.sse / double(B);
    out.aux = aux_scale * st.l1 / double(B);
    out.loss = out.mse + out.aux;
    out.active = int64_t(st.active);
    out.fired = positive.any(0).to(torch::kCPU);
    if (!grads) return out;

    const double g_scale = 2.0 / double(B);
    // d loss / d pre on the support of the codes; the decoder gradient codes^T (g_scale e).
    torch::Tensor dpre = torch::mm(e, p.W_dec.t()).mul_(g_scale).masked_fill_(codes <= 0, 0.0f);
    at::addmm_out(grads->W_dec, grads->W_dec, codes.t(), e, /*beta=*/0.0, /*alpha=*/g_scale);
    if (out.aux > 0) {
      const double aux_g_scale = 2.0 * aux_scale / double(B);
      dpre.add_(torch::mm(aux_out, p.W_dec.t()).mul_(aux_g_scale).masked_fill_(aux_codes <= 0, 0.0f));
      at::addmm_out(grads->W_dec, grads->W_dec, aux_codes.t(), aux_out, /*beta=*/1.0, /*alpha=*/aux_g_scale);
    }
    at::addmm_out(grads->W_enc_t, grads->W_enc_t, dpre.t(), xc, /*beta=*/0.0, /*alpha=*/1.0);
    grads->b_enc.copy_(dpre.sum(0));
    // Unit-norm decoder rows: only the gradient component tangent to the sphere is kept.
    project_out_parallel(grads->W_dec, p.W_dec);
    grads->b_dec.copy_(b_dec_gradient(p, e.sum(0).mul_(g_scale), grads->b_enc));
    return out;
  }

  void after_update(Parameters& p) override {
    const torch::Tensor norms = p.W_dec.norm(2, {1}, /*keepdim=*/true);
    p.W_dec.div_(norms.masked_fill(norms <= 0, 1.0f));
  }

 private:
  // Dense [B, d_sae] codes: max(pre, 0) at the top `k` latents of each row (among `candidates`, I64
  // latent ids, when given), zero elsewhere.
  static torch::Tensor top_codes(const torch::Tensor& pre, int64_t k, const torch::Tensor& candidates) {
    const torch::Tensor pool = candidates.defined() ? pre.index_select(1, candidates) : pre;
    auto [values, positions] = pool.topk(k, 1, /*largest=*/true, /*sorted=*/false);
    const torch::Tensor latents =
        candidates.defined() ? candidates.index_select(0, positions.reshape({-1})).view_as(positions) : positions;
    return torch::zeros_like(pre).scatter_(1, latents, values.clamp_min(0.0f));
  }

  int64_t k_, aux_k_;
  double aux_coefficient_;
};

}  // namespace

Parameters to_device(const Parameters& p, torch::Device device) {
  auto move = [&](const torch::Tensor& t) { return t.defined() ? t.to(device).contiguous() : t; };
  return {move(p.W_enc_t), move(p.b_enc), move(p.W_dec), move(p.b_dec)};
}

void Adam::init(const Parameters& p, runtime::KernelPath kernel_path) {
  path = kernel_path;
  t = 0;
  m = {torch::zeros_like(p.W_enc_t), torch::zeros_like(p.b_enc), torch::zeros_like(p.W_dec), torch::zeros_like(p.b_dec)};
  v = {torch::zeros_like(p.W_enc_t), torch::zeros_like(p.b_enc), torch::zeros_like(p.W_dec), torch::zeros_like(p.b_dec)};
}

void Adam::update(Parameters& p, const Parameters& g, const torch::Tensor& W_dec_row_decay, double lr, double beta1,
                  double beta2, double eps) {
  ++t;
  const double bc1 = 1.0 - std::pow(beta1, double(t)), bc2 = 1.0 - std::pow(beta2, double(t));
  const kernels::AdamStep step{float(beta1), float(beta2), float(eps), float(lr / bc1), float(std::sqrt(bc2))};
  auto apply = [&](torch::Tensor& param, const torch::Tensor& grad, torch::Tensor& mm, torch::Tensor& vv,
                   const torch::Tensor& decay) {
    if (path == runtime::KernelPath::portable) {
      const torch::Tensor gg = decay.defined() ? grad + decay.unsqueeze(1) * param : grad;
      mm.mul_(step.beta1).add_(gg, 1.0f - step.beta1);
      vv.mul_(step.beta2).addcmul_(gg, gg, 1.0f - step.beta2);
      param.addcdiv_(mm, vv.sqrt().mul_(1.0f / step.bias_correction2_sqrt).add_(step.eps), -step.step_size);
      return;
    }
    const int64_t rows = param.dim() == 2 ? param.size(0) : 1, cols = param.dim() == 2 ? param.size(1) : param.numel();
    const float* decay_ptr = decay.defined() ? fptr(decay) : nullptr;
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / cols), [&](int64_t r0, int64_t r1) {
      kernels::adam_rows(fptr(param), fptr(grad), fptr(mm), fptr(vv), decay_ptr, cols, r0, r1, step);
    });
  };
  apply(p.W_enc_t, g.W_enc_t, m.W_enc_t, v.W_enc_t, {});
  apply(p.b_enc, g.b_enc, m.b_enc, v.b_enc, {});
  apply(p.W_dec, g.W_dec, m.W_dec, v.W_dec, W_dec_row_decay);
  apply(p.b_dec, g.b_dec, m.b_dec, v.b_dec, {});
}

void for_chunks(int64_t rows, const std::function<void(int64_t, int64_t, int64_t)>& fn) {
  at::parallel_for(0, kChunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t r0 = rows * c / kChunks, r1 = rows * (c + 1) / kChunks;
      if (r1 > r0) fn(c, r0, r1);
    }
  });
}

void Architecture::init_parameters(Parameters& p, int64_t d_in, int64_t d_sae, uint64_t seed) const {
  auto gen = at::detail::createCPUGenerator(seed);
  // Kaiming-uniform directions, rescaled to the architecture's decoder-row norm; the encoder starts as
  // the decoder's transpose (Anthropic's April 2024 update, SAELens' default).
  double bound = std::sqrt(6.0 / double(d_in));
  p.W_dec = torch::rand({d_sae, d_in}, gen) * (2 * bound) - bound;
  p.W_dec = p.W_dec / p.W_dec.norm(2, {1}, true).clamp_min(1e-12) * decoder_init_norm();
  p.W_dec = p.W_dec.contiguous();
  p.W_enc_t = p.W_dec.clone();
  p.b_enc = torch::zeros({d_sae});
  if (!p.b_dec.defined()) p.b_dec = torch::zeros({d_in});
}

std::unique_ptr<Architecture> make_architecture(const TrainOptions& o, runtime::KernelPath path) {
  const bool portable = path == runtime::KernelPath::portable;
  if (o.architecture == "standard" || o.architecture == "relu") {
    if (portable) return std::make_unique<PortableStandardArchitecture>();
    return std::make_unique<StandardArchitecture>();
  }
  if (o.architecture == "topk") {
    if (o.k <= 0) fail("topk SAE needs k > 0 (got {})", o.k);
    if (portable) return std::make_unique<PortableTopKArchitecture>(o.k, o.aux_k, o.aux_coefficient);
    return std::make_unique<TopKArchitecture>(o.k, o.aux_k, o.aux_coefficient);
  }
  fail("unknown SAE architecture '{}': use standard (relu) or topk", o.architecture);
}

}  // namespace strata::sae
