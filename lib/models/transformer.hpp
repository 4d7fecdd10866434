// The decoder-only transformer of the four supported families, with Hugging Face's exact forward
// semantics (fp32 reference within 5e-5 + 1e-5*|ref| of transformers 4.40), batched with right padding.
//
// Parameters use the canonical HF tensor names of each family (what `save_pretrained` reads back):
//   gpt2:     wte.weight, wpe.weight, h.{i}.ln_1.*, h.{i}.attn.c_attn.*, h.{i}.attn.c_proj.*, h.{i}.ln_2.*,
//             h.{i}.mlp.c_fc.*, h.{i}.mlp.c_proj.*, ln_f.*  (Conv1D weights [in, out]; no `transformer.`
//             prefix; lm_head.weight only when untied)
//   gpt_neox: gpt_neox.embed_in.weight, gpt_neox.layers.{i}.{input_layernorm,post_attention_layernorm}.*,
//             ...attention.{query_key_value,dense}.*, ...mlp.{dense_h_to_4h,dense_4h_to_h}.*,
//             gpt_neox.final_layer_norm.*, embed_out.weight
//   phi:      model.embed_tokens.weight, model.layers.{i}.input_layernorm.*,
//             ...self_attn.{q_proj,k_proj,v_proj,dense}.*, ...mlp.{fc1,fc2}.*, model.final_layernorm.*,
//             lm_head.{weight,bias}
//   gemma:    model.embed_tokens.weight, model.layers.{i}.{input_layernorm,post_attention_layernorm}.weight,
//             ...self_attn.{q,k,v,o}_proj.weight, ...mlp.{gate,up,down}_proj.weight, model.norm.weight
// Loading also accepts the variants real files carry (GPT-2 `transformer.` prefix, a tied lm_head.weight
// copy, causal-mask / masked_bias / rotary inv_freq buffers) and drops them.
#pragma once
#include <torch/torch.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "models/spec.hpp"

namespace strata::models {

struct ForwardRequest {
  std::vector<int> blocks;   // 0-based block indices whose output (resid_post, never final-normed) to return
  bool embed = false;        // hidden state entering block 0
  bool final_norm = false;   // final norm of the last block's output (runs every block)
  bool logits = false;       // LM head (runs every block)
};

struct ForwardOutput {
  torch::Tensor embed;                       // [B, T, H]
  std::map<int, torch::Tensor> resid_post;   // block -> [B, T, H]
  torch::Tensor final_norm;                  // [B, T, H]
  torch::Tensor logits;                      // [B, T, V]
};

class Transformer {
 public:
  // Reads config.json and the safetensors weights (single file or sharded), upcasting/downcasting
  // every parameter to `dtype` (kFloat32 default; kBFloat16/kFloat16 where LibTorch CPU supports them).
  // Errors: pickle-only checkpoints, missing/unexpected tensors, shapes disagreeing with config.json.
  static Transformer load(const std::filesystem::path& checkpoint_dir, torch::ScalarType dtype = torch::kFloat32,
                          torch::Device device = torch::kCPU);
  // From parameters with the canonical names above (checked against the spec). The forward pass is
  // differentiable w.r.t. them: no in-place ops touch parameters, and tensors are read from the map
  // at every call, so optimizer updates (in place or by replacing map entries) are always seen.
  static Transformer from_parameters(ModelSpec spec, std::map<std::string, torch::Tensor> params);
  // HF-style init (normal(0, initializer_range) for matrices and embeddings, zeros for biases, ones
  // for LayerNorm weights, zeros for Gemma's (1+w) RMSNorm weights), fp32, deterministic from `seed`.
  static std::map<std::string, torch::Tensor> init_parameters(const ModelSpec& spec, uint64_t seed);
  // Canonical parameter names and shapes for a spec (what load/from_parameters expect).
  static std::map<std::string, std::vector<int64_t>> parameter_shapes(const ModelSpec& spec);

  const ModelSpec& spec() const { return spec_; }
  std::map<std::string, torch::Tensor>& parameters() { return params_; }
  const std::map<std::string, torch::Tensor>& parameters() const { return params_; }

  // input_ids: [B, T] int64 (any integer dtype accepted). attention_mask: [B, T] with 1 = real token,
  // 0 = padding (right padding); undefined = all real. Positions are 0..T-1 in every row, as HF.
  // Stops after the deepest block needed by `request`. Under NoGradGuard intermediate buffers are
  // reused in place; with grad enabled the pass is fully autograd-safe.
  ForwardOutput forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                        const ForwardRequest& request) const;

  // io::checkpoint_sha256 of the directory this was loaded from (computed on first call); "" when
  // built from parameters.
  std::string checkpoint_sha256() const;
  const std::filesystem::path& checkpoint_dir() const { return checkpoint_dir_; }

 private:
  ModelSpec spec_;
  std::map<std::string, torch::Tensor> params_;
  std::filesystem::path checkpoint_dir_;
  mutable std::string checkpoint_sha256_;
};

// Compute dtypes by their config names: "f32" | "bf16" | "f16". Anything else fails naming `where` and the
// choices. (The activation store's dtype is a separate setting: io::parse_store_dtype.)
torch::ScalarType parse_compute_dtype(const std::string& name, const std::string& where);
std::string compute_dtype_name(torch::ScalarType dtype);

// Writes an HF checkpoint dir: config.json (spec.config, pretty-printed) + model.safetensors (params
// as given, contiguous, sorted by name, with {"format": "pt"} metadata). Both files atomic.
void save_checkpoint(const std::filesystem::path& dir, const ModelSpec& spec,
                     const std::map<std::string, torch::Tensor>& params);

}  // namespace strata::models
