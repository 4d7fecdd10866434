// ModelSpec: everything the forward pass needs to know about a decoder-only transformer, parsed from a
// Hugging Face config.json with HF's defaults for absent keys. Supported model_type: gpt2, gpt_neox,
// phi, gemma (Gemma 1). The zoo builds specs the same way: write a config json, call parse_config.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace strata::models {

enum class NormKind { LayerNorm, RMSNormOnePlus };  // RMSNormOnePlus: x * rsqrt(mean(x^2)+eps) * (1 + w), fp32
enum class Activation { GeluExact, GeluTanh, Relu, Silu };
enum class MlpKind { Plain, Gated };  // Plain: out(act(in(x))); Gated: down(act(gate(x)) * up(x))
enum class ResidualKind {
  Sequential,          // x += attn(ln1(x)); x += mlp(ln2(x))          (GPT-2, Gemma)
  ParallelTwoNorms,    // x + attn(ln1(x)) + mlp(ln2(x))                 (NeoX use_parallel_residual)
  ParallelSharedNorm,  // x + attn(ln(x)) + mlp(ln(x)), one norm         (Phi)
};
enum class PositionKind { Learned, Rotary };  // Learned: wpe added to the embedding; Rotary: rotate_half RoPE

struct ModelSpec {
  std::string model_type;
  int64_t hidden_size = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, intermediate_size = 0,
          vocab_size = 0, max_positions = 0;

  // Wiring.
  NormKind norm = NormKind::LayerNorm;
  double norm_eps = 1e-5;
  Activation activation = Activation::GeluTanh;
  MlpKind mlp = MlpKind::Plain;
  ResidualKind residual = ResidualKind::Sequential;
  PositionKind positions = PositionKind::Learned;
  int64_t rotary_dims = 0;      // leading dims of each q/k head that are rotated (<= head_dim, even)
  double rotary_base = 10000.0;
  bool attention_bias = true;   // q/k/v/out projections carry biases
  bool mlp_bias = true;
  bool lm_head_bias = false;    // Phi
  bool tie_word_embeddings = true;
  bool scale_embedding = false; // Gemma: embed * sqrt(hidden_size), rounded to the compute dtype
  bool scale_attention = true;  // scores * 1/sqrt(head_dim) (GPT-2 scale_attn_weights may turn it off)
  bool scale_attention_by_inverse_layer = false;  // GPT-2 scale_attn_by_inverse_layer_idx: also / (i + 1)
  double initializer_range = 0.02;  // std of the HF init (init_parameters)
  int64_t pad_token_id = -1;        // Gemma's embedding zeroes this row at init; -1 = none

  nlohmann::json config;        // the config.json this spec came from (written back by save_checkpoint)
};

// Throws strata::Error naming `source_for_errors` (e.g. the config.json path) for an unsupported
// model_type (listing the supported ones), missing required keys or inconsistent sizes.
ModelSpec parse_config(const nlohmann::json& config, const std::string& source_for_errors);

std::vector<std::string> supported_model_types();

}  // namespace strata::models
