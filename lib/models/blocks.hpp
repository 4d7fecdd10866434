// Internal: the shared building blocks every architecture is wired from. Each takes the parameters it
// needs explicitly, works on [rows, features] or [B, heads, T, head_dim] tensors, and follows the
// numerics of the corresponding Hugging Face module. `inplace` (only when autograd is off) lets a block
// overwrite buffers it allocated itself; parameters and inputs are never written.
#pragma once
#include <torch/torch.h>

#include "core/runtime.hpp"
#include "models/spec.hpp"

namespace strata::models::detail {

// y = x @ W + b for Conv1D weights stored [in, out]; y = x @ W^T + b for nn.Linear weights [out, in].
// One GEMM (addmm reads the transposed view directly). `bias` may be undefined.
torch::Tensor linear(const torch::Tensor& x2d, const torch::Tensor& weight, const torch::Tensor& bias, bool conv1d);

// LayerNorm (biased variance) or Gemma's RMSNorm x * rsqrt(mean(x^2) + eps) * (1 + w), computed in fp32.
torch::Tensor norm(NormKind kind, const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                   double eps);

torch::Tensor activate(Activation activation, torch::Tensor x, bool inplace);

// cos and sin tables [T, rotary_dims] for positions 0..T-1, computed in fp32 as HF does, then cast.
struct RotaryTables {
  torch::Tensor cos, sin;
};
RotaryTables rotary_tables(int64_t rotary_dims, double base, int64_t seq_len, torch::ScalarType dtype,
                           torch::Device device);
// rotate_half RoPE on the first rotary_dims of each head of x [B, heads, T, head_dim]; the rest passes.
torch::Tensor apply_rotary(const torch::Tensor& x, const RotaryTables& tables);

// Additive attention mask [B, 1, T, T] in fp32: 0 where key <= query and the key is a real token,
// finfo(float32).min elsewhere (as HF). attention_mask [B, T] (1 real, 0 padding) or undefined.
torch::Tensor additive_attention_mask(const torch::Tensor& attention_mask, int64_t batch, int64_t seq_len,
                                      torch::Device device);

// softmax(q k^T * scale + mask) v for q [B, heads, T, hd], k/v [B, kv_heads, T, hd] (KV head j serves
// query heads [j*g, (j+1)*g)). Scores and softmax in fp32. Returns [B*T, heads*hd].
// Two implementations: the native one (CPU, fp32, inference only) runs one task per (sequence, head) from
// OpenMP threads; the portable one is a batched matmul over all heads (one kernel per product on a GPU,
// where per-head GEMMs would be ~1e5 launches per batch for phi-2). `path` picks; it defaults to
// runtime::kernel_path(q.device()).
torch::Tensor scaled_dot_product_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                           const torch::Tensor& additive_mask, double scale, bool inplace);
torch::Tensor scaled_dot_product_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                           const torch::Tensor& additive_mask, double scale, bool inplace,
                                           runtime::KernelPath path);

}  // namespace strata::models::detail
