// GPT-NeoX / Pythia (GPTNeoXForCausalLM): partial rotary (rotary_pct of each head), fused QKV interleaved
// per head, LayerNorm, parallel residual with two norms of the block input (or sequential), exact GELU,
// untied embed_out.
#include "core/error.hpp"
#include "models/architecture.hpp"

namespace strata::models::detail {
namespace {

void parse_gpt_neox(const ConfigReader& c, ModelSpec& s) {
  // GPTNeoXConfig defaults (transformers 4.40).
  s.hidden_size = c.integer("hidden_size", 6144);
  s.n_layers = c.integer("num_hidden_layers", 44);
  s.n_heads = c.integer("num_attention_heads", 64);
  s.n_kv_heads = s.n_heads;
  if (s.n_heads <= 0 || s.hidden_size % s.n_heads != 0)
    fail("{}: hidden_size {} is not a multiple of num_attention_heads {}", c.source(), s.hidden_size, s.n_heads);
  s.head_dim = s.hidden_size / s.n_heads;
  s.intermediate_size = c.integer("intermediate_size", 24576);
  s.vocab_size = c.integer("vocab_size", 50432);
  s.max_positions = c.integer("max_position_embeddings", 2048);
  s.norm = NormKind::LayerNorm;
  s.norm_eps = c.number("layer_norm_eps", 1e-5);
  s.activation = c.activation("hidden_act", "gelu");
  s.mlp = MlpKind::Plain;
  s.residual = c.boolean("use_parallel_residual", true) ? ResidualKind::ParallelTwoNorms : ResidualKind::Sequential;
  s.positions = PositionKind::Rotary;
  s.rotary_dims = static_cast<int64_t>(static_cast<double>(s.head_dim) * c.number("rotary_pct", 0.25));
  s.rotary_base = c.number("rotary_emb_base", 10000.0);
  c.require_absent("rope_scaling", "only plain rotary embeddings are implemented");
  s.attention_bias = c.boolean("attention_bias", true);
  s.mlp_bias = true;
  s.lm_head_bias = false;
  s.tie_word_embeddings = c.boolean("tie_word_embeddings", false);
  s.initializer_range = c.number("initializer_range", 0.02);
}

}  // namespace

const Architecture kGptNeox{
    "gpt_neox",
    parse_gpt_neox,
    WeightNames{
        .embed = "gpt_neox.embed_in.weight",
        .layer_prefix = "gpt_neox.layers.{}.",
        .ln1 = "input_layernorm",
        .ln2 = "post_attention_layernorm",
        .qkv_layout = QkvLayout::FusedInterleavedPerHead,
        .qkv = "attention.query_key_value",
        .attn_out = "attention.dense",
        .mlp_in = "mlp.dense_h_to_4h",
        .mlp_out = "mlp.dense_4h_to_h",
        .final_norm = "gpt_neox.final_layer_norm",
        .lm_head = "embed_out",
        .ignored_suffixes = {".attention.bias", ".attention.masked_bias", ".attention.rotary_emb.inv_freq"},
    },
};

}  // namespace strata::models::detail
