#include "models/blocks.hpp"

#include <limits>

namespace strata::models::detail {

torch::Tensor linear(const torch::Tensor& x2d, const torch::Tensor& weight, const torch::Tensor& bias, bool conv1d) {
  const torch::Tensor w = conv1d ? weight : weight.t();
  return bias.defined() ? torch::addmm(bias, x2d, w) : torch::mm(x2d, w);
}

torch::Tensor norm(NormKind kind, const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                   double eps) {
  if (kind == NormKind::LayerNorm) return torch::layer_norm(x, {x.size(-1)}, weight, bias, eps);
  // GemmaRMSNorm: everything in fp32, then back to the activation dtype.
  const torch::Tensor xf = x.to(torch::kFloat32);
  torch::Tensor out = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  out = out * (1.0 + weight.to(torch::kFloat32));
  return out.to(x.scalar_type());
}

torch::Tensor activate(Activation activation, torch::Tensor x, bool inplace) {
  switch (activation) {
    case Activation::GeluExact:
      return inplace ? at::gelu_(x, "none") : at::gelu(x, "none");
    case Activation::GeluTanh:
      return inplace ? at::gelu_(x, "tanh") : at::gelu(x, "tanh");
    case Activation::Relu:
      return inplace ? x.relu_() : x.relu();
    case Activation::Silu:
      return inplace ? at::silu_(x) : at::silu(x);
  }
  return x;
}

RotaryTables rotary_tables(int64_t rotary_dims, double base, int64_t seq_len, torch::ScalarType dtype,
                           torch::Device device) {
  auto f32 = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  // inv_freq = 1 / base^(arange(0, rot, 2) / rot), positions 0..T-1, freqs = outer(t, inv_freq).
  torch::Tensor exponents = torch::arange(0, rotary_dims, 2, f32.dtype(torch::kInt64)).to(torch::kFloat32) /
                            static_cast<float>(rotary_dims);
  torch::Tensor inv_freq = 1.0 / torch::pow(base, exponents);
  torch::Tensor t = torch::arange(seq_len, f32.dtype(torch::kInt64)).to(torch::kFloat32);
  torch::Tensor freqs = torch::outer(t, inv_freq);
  torch::Tensor emb = torch::cat({freqs, freqs}, -1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

torch::Tensor apply_rotary(const torch::Tensor& x, const RotaryTables& tables) {
  const int64_t rot = tables.cos.size(-1), head_dim = x.size(-1), half = rot / 2;
  const torch::Tensor x_rot = rot == head_dim ? x : x.narrow(-1, 0, rot);
  const torch::Tensor rotated = torch::cat({-x_rot.narrow(-1, half, half), x_rot.narrow(-1, 0, half)}, -1);
  torch::Tensor out = x_rot * tables.cos + rotated * tables.sin;
  if (rot == head_dim) return out;
  return torch::cat({out, x.narrow(-1, rot, head_dim - rot)}, -1);
}

torch::Tensor additive_attention_mask(const torch::Tensor& attention_mask, int64_t batch, int64_t seq_len,
                                      torch::Device device) {
  auto opts = torch::TensorOptions().device(device);
  const float lowest = std::numeric_limits<float>::lowest();
  torch::Tensor blocked = torch::ones({seq_len, seq_len}, opts.dtype(torch::kBool)).triu(1).view({1, 1, seq_len, seq_len});
  if (attention_mask.defined())
    blocked = blocked.logical_or(attention_mask.to(device).eq(0).view({batch, 1, 1, seq_len}));
  else
    blocked = blocked.expand({batch, 1, seq_len, seq_len});
  return torch::zeros({batch, 1, seq_len, seq_len}, opts.dtype(torch::kFloat32)).masked_fill(blocked, lowest);
}

namespace {

// Inference path: one task per (sequence, head), each running its two small GEMMs single-threaded
// inside the parallel region (OpenBLAS runs serially there), with a [T, T] score buffer per task and
// the context written straight into its [B, T, heads, hd] slot. Many tiny multi-threaded BLAS calls
// (what bmm does) spend most of their time synchronising threads.
torch::Tensor attention_per_head(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                 const torch::Tensor& additive_mask, double scale) {
  const int64_t B = q.size(0), heads = q.size(1), T = q.size(2), hd = q.size(3), group = heads / k.size(1);
  torch::Tensor out = torch::empty({B, T, heads, hd}, q.options());
  at::parallel_for(0, B * heads, 1, [&](int64_t begin, int64_t end) {
    torch::NoGradGuard no_grad;
    torch::Tensor scores = torch::empty({T, T}, q.options());
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / heads, h = i % heads;
      const torch::Tensor qi = q.select(0, b).select(0, h), ki = k.select(0, b).select(0, h / group),
                          vi = v.select(0, b).select(0, h / group);
      at::addmm_out(scores, additive_mask.select(0, b).select(0, 0), qi, ki.t(), /*beta=*/1.0, /*alpha=*/scale);
      at::_softmax_out(scores, scores, 1, false);
      torch::Tensor oi = out.select(0, b).select(1, h);
      at::mm_out(oi, scores, vi);
    }
  });
  return out.view({B * T, heads * hd});
}

}  // namespace

torch::Tensor scaled_dot_product_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                           const torch::Tensor& additive_mask, double scale, bool inplace) {
  return scaled_dot_product_attention(q, k, v, additive_mask, scale, inplace, runtime::kernel_path(q.device()));
}

torch::Tensor scaled_dot_product_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                           const torch::Tensor& additive_mask, double scale, bool inplace,
                                           runtime::KernelPath path) {
  if (path == runtime::KernelPath::native && inplace && q.scalar_type() == torch::kFloat32 && q.device().is_cpu())
    return attention_per_head(q, k, v, additive_mask, scale);
  const int64_t B = q.size(0), heads = q.size(1), T = q.size(2), hd = q.size(3), kv_heads = k.size(1);
  torch::Tensor keys = k, values = v;
  if (kv_heads != heads) {  // repeat_interleave: KV head j serves query heads [j*g, (j+1)*g)
    const int64_t group = heads / kv_heads;
    keys = k.unsqueeze(2).expand({B, kv_heads, group, T, hd}).reshape({B, heads, T, hd});
    values = v.unsqueeze(2).expand({B, kv_heads, group, T, hd}).reshape({B, heads, T, hd});
  }
  const auto compute = q.scalar_type();
  torch::Tensor q3 = q.reshape({B * heads, T, hd}).to(torch::kFloat32);
  torch::Tensor k3t = keys.reshape({B * heads, T, hd}).to(torch::kFloat32).transpose(1, 2);
  torch::Tensor scores = (torch::bmm(q3, k3t) * scale).view({B, heads, T, T}) + additive_mask;
  torch::Tensor probs = torch::softmax(scores.view({B * heads, T, T}), -1).to(compute);
  torch::Tensor context = torch::bmm(probs, values.reshape({B * heads, T, hd}));
  return context.view({B, heads, T, hd}).transpose(1, 2).reshape({B * T, heads * hd});
}

}  // namespace strata::models::detail
