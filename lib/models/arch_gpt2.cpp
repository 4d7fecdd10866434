// GPT-2 (GPT2LMHeadModel): learned positions, sequential pre-LayerNorm blocks, fused [q|k|v] Conv1D
// attention (weights [in, out]), plain MLP with gelu_new, LM head tied to wte unless configured otherwise.
#include "core/error.hpp"
#include "models/architecture.hpp"

namespace strata::models::detail {
namespace {

void parse_gpt2(const ConfigReader& c, ModelSpec& s) {
  // GPT2Config defaults (transformers 4.40).
  s.hidden_size = c.integer("n_embd", 768);
  s.n_layers = c.integer("n_layer", 12);
  s.n_heads = c.integer("n_head", 12);
  s.n_kv_heads = s.n_heads;
  if (s.n_heads <= 0 || s.hidden_size % s.n_heads != 0)
    fail("{}: n_embd {} is not a multiple of n_head {}", c.source(), s.hidden_size, s.n_heads);
  s.head_dim = s.hidden_size / s.n_heads;
  s.intermediate_size = c.integer("n_inner", 4 * s.hidden_size);  // n_inner: null means 4 * n_embd
  s.vocab_size = c.integer("vocab_size", 50257);
  s.max_positions = c.integer("n_positions", 1024);
  s.norm = NormKind::LayerNorm;
  s.norm_eps = c.number("layer_norm_epsilon", 1e-5);
  s.activation = c.activation("activation_function", "gelu_new");
  s.mlp = MlpKind::Plain;
  s.residual = ResidualKind::Sequential;
  s.positions = PositionKind::Learned;
  s.attention_bias = s.mlp_bias = true;
  s.lm_head_bias = false;
  s.tie_word_embeddings = c.boolean("tie_word_embeddings", true);
  s.scale_attention = c.boolean("scale_attn_weights", true);
  s.scale_attention_by_inverse_layer = c.boolean("scale_attn_by_inverse_layer_idx", false);
  // reorder_and_upcast_attn only changes the order of fp16 operations; in fp32 it is the same math.
  s.initializer_range = c.number("initializer_range", 0.02);
}

}  // namespace

const Architecture kGpt2{
    "gpt2",
    parse_gpt2,
    WeightNames{
        .embed = "wte.weight",
        .position_embed = "wpe.weight",
        .layer_prefix = "h.{}.",
        .ln1 = "ln_1",
        .ln2 = "ln_2",
        .qkv_layout = QkvLayout::FusedBlocks,
        .qkv = "attn.c_attn",
        .attn_out = "attn.c_proj",
        .mlp_in = "mlp.c_fc",
        .mlp_out = "mlp.c_proj",
        .final_norm = "ln_f",
        .lm_head = "lm_head",
        .conv1d = true,
        .strip_prefixes = {"transformer."},
        .ignored_suffixes = {".attn.bias", ".attn.masked_bias"},
    },
};

}  // namespace strata::models::detail
