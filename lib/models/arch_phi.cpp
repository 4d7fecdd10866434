// Phi (native PhiForCausalLM, e.g. microsoft/phi-2): partial rotary (partial_rotary_factor of each head),
// separate q/k/v projections with biases, one shared LayerNorm feeding attention and MLP in parallel,
// gelu_new, untied lm_head with a bias.
#include "core/error.hpp"
#include "models/architecture.hpp"

namespace strata::models::detail {
namespace {

void parse_phi(const ConfigReader& c, ModelSpec& s) {
  // PhiConfig defaults (transformers 4.40).
  s.hidden_size = c.integer("hidden_size", 2048);
  s.n_layers = c.integer("num_hidden_layers", 24);
  s.n_heads = c.integer("num_attention_heads", 32);
  s.n_kv_heads = c.integer("num_key_value_heads", s.n_heads);
  if (s.n_heads <= 0 || s.hidden_size % s.n_heads != 0)
    fail("{}: hidden_size {} is not a multiple of num_attention_heads {}", c.source(), s.hidden_size, s.n_heads);
  s.head_dim = s.hidden_size / s.n_heads;
  s.intermediate_size = c.integer("intermediate_size", 8192);
  s.vocab_size = c.integer("vocab_size", 51200);
  s.max_positions = c.integer("max_position_embeddings", 2048);
  s.norm = NormKind::LayerNorm;
  s.norm_eps = c.number("layer_norm_eps", 1e-5);
  s.activation = c.activation("hidden_act", "gelu_new");
  s.mlp = MlpKind::Plain;
  s.residual = ResidualKind::ParallelSharedNorm;
  s.positions = PositionKind::Rotary;
  s.rotary_dims = static_cast<int64_t>(c.number("partial_rotary_factor", 0.5) * static_cast<double>(s.head_dim));
  s.rotary_base = c.number("rope_theta", 10000.0);
  c.require_absent("rope_scaling", "only plain rotary embeddings are implemented");
  c.require_absent("qk_layernorm", "Phi's optional q/k LayerNorm is not implemented");
  s.attention_bias = s.mlp_bias = s.lm_head_bias = true;
  s.tie_word_embeddings = c.boolean("tie_word_embeddings", false);
  s.initializer_range = c.number("initializer_range", 0.02);
}

}  // namespace

const Architecture kPhi{
    "phi",
    parse_phi,
    WeightNames{
        .embed = "model.embed_tokens.weight",
        .layer_prefix = "model.layers.{}.",
        .ln1 = "input_layernorm",
        .qkv_layout = QkvLayout::Separate,
        .q = "self_attn.q_proj",
        .k = "self_attn.k_proj",
        .v = "self_attn.v_proj",
        .attn_out = "self_attn.dense",
        .mlp_in = "mlp.fc1",
        .mlp_out = "mlp.fc2",
        .final_norm = "model.final_layernorm",
        .lm_head = "lm_head",
        .ignored_suffixes = {".rotary_emb.inv_freq"},
    },
};

}  // namespace strata::models::detail
