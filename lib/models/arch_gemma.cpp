// Gemma 1 (GemmaForCausalLM, e.g. google/gemma-2b): embedding scaled by sqrt(hidden_size), RMSNorm with
// (1 + w) in fp32, full rotary, head_dim from the config, grouped / multi-query KV heads, GeGLU MLP
// (hidden_activation, default gelu tanh; hidden_act is ignored as in HF), no biases, tied LM head.
#include "core/error.hpp"
#include "models/architecture.hpp"

namespace strata::models::detail {
namespace {

void parse_gemma(const ConfigReader& c, ModelSpec& s) {
  // GemmaConfig defaults (transformers 4.40).
  s.hidden_size = c.integer("hidden_size", 3072);
  s.n_layers = c.integer("num_hidden_layers", 28);
  s.n_heads = c.integer("num_attention_heads", 16);
  s.n_kv_heads = c.integer("num_key_value_heads", 16);
  s.head_dim = c.integer("head_dim", 256);
  s.intermediate_size = c.integer("intermediate_size", 24576);
  s.vocab_size = c.integer("vocab_size", 256000);
  s.max_positions = c.integer("max_position_embeddings", 8192);
  s.norm = NormKind::RMSNormOnePlus;
  s.norm_eps = c.number("rms_norm_eps", 1e-6);
  // GemmaMLP uses hidden_activation and falls back to gelu_pytorch_tanh when it is null or absent.
  s.activation = c.activation("hidden_activation", "gelu_pytorch_tanh");
  s.mlp = MlpKind::Gated;
  s.residual = ResidualKind::Sequential;
  s.positions = PositionKind::Rotary;
  s.rotary_dims = s.head_dim;
  s.rotary_base = c.number("rope_theta", 10000.0);
  c.require_absent("rope_scaling", "only plain rotary embeddings are implemented");
  s.attention_bias = c.boolean("attention_bias", false);
  s.mlp_bias = false;
  s.lm_head_bias = false;
  s.tie_word_embeddings = c.boolean("tie_word_embeddings", true);
  s.scale_embedding = true;
  s.initializer_range = c.number("initializer_range", 0.02);
  s.pad_token_id = c.integer("pad_token_id", 0);
}

}  // namespace

const Architecture kGemma{
    "gemma",
    parse_gemma,
    WeightNames{
        .embed = "model.embed_tokens.weight",
        .layer_prefix = "model.layers.{}.",
        .ln1 = "input_layernorm",
        .ln2 = "post_attention_layernorm",
        .qkv_layout = QkvLayout::Separate,
        .q = "self_attn.q_proj",
        .k = "self_attn.k_proj",
        .v = "self_attn.v_proj",
        .attn_out = "self_attn.o_proj",
        .mlp_gate = "mlp.gate_proj",
        .mlp_up = "mlp.up_proj",
        .mlp_out = "mlp.down_proj",
        .final_norm = "model.norm",
        .lm_head = "lm_head",
        .ignored_suffixes = {".rotary_emb.inv_freq"},
    },
};

}  // namespace strata::models::detail
