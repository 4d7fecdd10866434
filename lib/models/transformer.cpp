#include "models/transformer.hpp"

#include <fmt/ranges.h>
#include <torch/version.h>

#include <cmath>
#include <set>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "io/checkpoint.hpp"
#include "io/safetensors.hpp"
#include "models/architecture.hpp"
#include "models/blocks.hpp"

namespace strata::models {
namespace fs = std::filesystem;
using detail::QkvLayout;

namespace {

// The canonical tensor names of one block ("" where the spec has no such tensor).
struct BlockNames {
  std::string ln1_w, ln1_b, ln2_w, ln2_b;
  std::string qkv_w, qkv_b, q_w, q_b, k_w, k_b, v_w, v_b, attn_out_w, attn_out_b;
  std::string mlp_in_w, mlp_in_b, mlp_gate_w, mlp_gate_b, mlp_up_w, mlp_up_b, mlp_out_w, mlp_out_b;
};

struct ModelNames {
  std::string embed, position_embed, final_norm_w, final_norm_b, lm_head_w, lm_head_b;
  std::vector<BlockNames> blocks;
};

ModelNames model_names(const ModelSpec& spec) {
  const detail::WeightNames& w = detail::architecture_for(spec.model_type, "model spec").names;
  const bool layer_norm = spec.norm == NormKind::LayerNorm;
  ModelNames out;
  out.embed = w.embed;
  if (spec.positions == PositionKind::Learned) out.position_embed = w.position_embed;
  out.final_norm_w = w.final_norm + ".weight";
  if (layer_norm) out.final_norm_b = w.final_norm + ".bias";
  if (!spec.tie_word_embeddings) out.lm_head_w = w.lm_head + ".weight";
  if (spec.lm_head_bias) out.lm_head_b = w.lm_head + ".bias";
  for (int64_t i = 0; i < spec.n_layers; ++i) {
    const std::string prefix = fmt::format(fmt::runtime(w.layer_prefix), i);
    auto weight = [&](const std::string& module) { return module.empty() ? "" : prefix + module + ".weight"; };
    auto bias = [&](const std::string& module, bool present) {
      return module.empty() || !present ? "" : prefix + module + ".bias";
    };
    BlockNames b;
    b.ln1_w = weight(w.ln1);
    b.ln1_b = bias(w.ln1, layer_norm);
    if (spec.residual != ResidualKind::ParallelSharedNorm) {
      b.ln2_w = weight(w.ln2);
      b.ln2_b = bias(w.ln2, layer_norm);
    }
    if (w.qkv_layout == QkvLayout::Separate) {
      b.q_w = weight(w.q), b.q_b = bias(w.q, spec.attention_bias);
      b.k_w = weight(w.k), b.k_b = bias(w.k, spec.attention_bias);
      b.v_w = weight(w.v), b.v_b = bias(w.v, spec.attention_bias);
    } else {
      b.qkv_w = weight(w.qkv), b.qkv_b = bias(w.qkv, spec.attention_bias);
    }
    b.attn_out_w = weight(w.attn_out), b.attn_out_b = bias(w.attn_out, spec.attention_bias);
    if (spec.mlp == MlpKind::Gated) {
      b.mlp_gate_w = weight(w.mlp_gate), b.mlp_gate_b = bias(w.mlp_gate, spec.mlp_bias);
      b.mlp_up_w = weight(w.mlp_up), b.mlp_up_b = bias(w.mlp_up, spec.mlp_bias);
    } else {
      b.mlp_in_w = weight(w.mlp_in), b.mlp_in_b = bias(w.mlp_in, spec.mlp_bias);
    }
    b.mlp_out_w = weight(w.mlp_out), b.mlp_out_b = bias(w.mlp_out, spec.mlp_bias);
    out.blocks.push_back(std::move(b));
  }
  return out;
}

const torch::Tensor& lookup(const std::map<std::string, torch::Tensor>& params, const std::string& name) {
  static const torch::Tensor undefined;
  if (name.empty()) return undefined;
  auto it = params.find(name);
  if (it == params.end()) fail("model parameters lack '{}'", name);
  return it->second;
}

std::string shape_str(c10::IntArrayRef shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

std::string dims_summary(const ModelSpec& s) {
  return fmt::format("hidden_size {}, {} layers, {} heads ({} kv) of dim {}, intermediate_size {}, vocab_size {}",
                     s.hidden_size, s.n_layers, s.n_heads, s.n_kv_heads, s.head_dim, s.intermediate_size,
                     s.vocab_size);
}

// Checks that `params` holds exactly the spec's parameters with the right shapes.
void check_parameters(const ModelSpec& spec, const std::map<std::string, torch::Tensor>& params,
                      const std::string& source) {
  const auto expected = Transformer::parameter_shapes(spec);
  std::vector<std::string> missing, unexpected;
  for (const auto& [name, shape] : expected) {
    auto it = params.find(name);
    if (it == params.end()) {
      missing.push_back(name);
      continue;
    }
    if (!it->second.defined()) fail("{}: parameter '{}' is an undefined tensor", source, name);
    if (it->second.sizes() != c10::IntArrayRef(shape))
      fail("{}: tensor '{}' has shape {} but the config ({}) implies {}; config.json does not describe these "
           "weights",
           source, name, shape_str(it->second.sizes()), dims_summary(spec), shape_str(shape));
    if (!it->second.is_floating_point())
      fail("{}: tensor '{}' has non-floating dtype {}", source, name, c10::toString(it->second.scalar_type()));
  }
  for (const auto& [name, tensor] : params)
    if (!expected.count(name)) unexpected.push_back(name);
  if (!missing.empty())
    fail("{}: {} {} tensor(s) missing for the config ({}): {}", source, missing.size(), spec.model_type,
         dims_summary(spec), fmt::join(missing.begin(), missing.begin() + std::min<size_t>(missing.size(), 8), ", "));
  if (!unexpected.empty())
    fail("{}: {} tensor(s) not used by a {} model with this config ({}): {}", source, unexpected.size(),
         spec.model_type, dims_summary(spec),
         fmt::join(unexpected.begin(), unexpected.begin() + std::min<size_t>(unexpected.size(), 8), ", "));
}

}  // namespace

std::map<std::string, std::vector<int64_t>> Transformer::parameter_shapes(const ModelSpec& s) {
  const auto& arch = detail::architecture_for(s.model_type, "model spec");
  const bool conv1d = arch.names.conv1d;
  const int64_t H = s.hidden_size, q_width = s.n_heads * s.head_dim, kv_width = s.n_kv_heads * s.head_dim;
  auto matrix = [&](int64_t in, int64_t out) {  // storage layout of a projection in -> out
    return conv1d ? std::vector<int64_t>{in, out} : std::vector<int64_t>{out, in};
  };
  const ModelNames names = model_names(s);
  std::map<std::string, std::vector<int64_t>> shapes;
  auto put = [&](const std::string& name, std::vector<int64_t> shape) {
    if (!name.empty()) shapes[name] = std::move(shape);
  };
  put(names.embed, {s.vocab_size, H});
  put(names.position_embed, {s.max_positions, H});
  put(names.final_norm_w, {H});
  put(names.final_norm_b, {H});
  put(names.lm_head_w, {s.vocab_size, H});
  put(names.lm_head_b, {s.vocab_size});
  if (arch.names.qkv_layout != QkvLayout::Separate && s.n_kv_heads != s.n_heads)
    fail("{}: a fused QKV projection needs as many key/value heads as query heads", s.model_type);
  for (const BlockNames& b : names.blocks) {
    put(b.ln1_w, {H}), put(b.ln1_b, {H}), put(b.ln2_w, {H}), put(b.ln2_b, {H});
    put(b.qkv_w, matrix(H, q_width + 2 * kv_width)), put(b.qkv_b, {q_width + 2 * kv_width});
    put(b.q_w, matrix(H, q_width)), put(b.q_b, {q_width});
    put(b.k_w, matrix(H, kv_width)), put(b.k_b, {kv_width});
    put(b.v_w, matrix(H, kv_width)), put(b.v_b, {kv_width});
    put(b.attn_out_w, matrix(q_width, H)), put(b.attn_out_b, {H});
    put(b.mlp_in_w, matrix(H, s.intermediate_size)), put(b.mlp_in_b, {s.intermediate_size});
    put(b.mlp_gate_w, matrix(H, s.intermediate_size)), put(b.mlp_gate_b, {s.intermediate_size});
    put(b.mlp_up_w, matrix(H, s.intermediate_size)), put(b.mlp_up_b, {s.intermediate_size});
    put(b.mlp_out_w, matrix(s.intermediate_size, H)), put(b.mlp_out_b, {H});
  }
  return shapes;
}

Transformer Transformer::load(const fs::path& checkpoint_dir, torch::ScalarType dtype, torch::Device device) {
  if (!c10::isFloatingType(dtype)) fail("compute dtype must be floating point, got {}", c10::toString(dtype));
  const fs::path dir = io::resolve_checkpoint(checkpoint_dir.string());
#if TORCH_VERSION_MAJOR < 2
  if (dtype == torch::kFloat16 && device.is_cpu())
    fail("{}: compute dtype f16 needs a CUDA device with this LibTorch ({}): its CPU kernels have no f16 LayerNorm "
         "or matmul; compute in bf16 or f32 on the CPU",
         dir.string(), TORCH_VERSION);
#endif
  const fs::path config_path = dir / "config.json";
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(read_text_file(config_path));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON ({})", config_path.string(), e.what());
  }
  ModelSpec spec = parse_config(config, config_path.string());
  const auto& names = detail::architecture_for(spec.model_type, config_path.string()).names;
  const auto expected = parameter_shapes(spec);
  const std::string tied_head = names.lm_head + ".weight";

  io::CheckpointWeights weights(dir);
  std::map<std::string, torch::Tensor> params;
  std::vector<std::string> unexpected;
  for (const std::string& stored : weights.names()) {
    std::string name = stored;
    for (const auto& prefix : names.strip_prefixes)
      if (name.starts_with(prefix) && !expected.count(name)) name = name.substr(prefix.size());
    bool ignored = false;
    for (const auto& suffix : names.ignored_suffixes) ignored |= name.ends_with(suffix);
    // A tied head stored anyway (older GPT-2 files): HF ties it to the embedding and ignores the copy.
    if (spec.tie_word_embeddings && name == tied_head) ignored = true;
    auto it = expected.find(name);
    if (it == expected.end()) {
      if (!ignored) unexpected.push_back(stored);
      continue;
    }
    if (params.count(name)) fail("{}: tensor '{}' is stored twice (also as '{}')", dir.string(), name, stored);
    const io::TensorInfo& info = weights.info(stored);
    if (info.shape != it->second)
      fail("{}: tensor '{}' has shape {} but {} ({}) implies {}; config.json does not describe these weights",
           dir.string(), stored, shape_str(info.shape), config_path.string(), dims_summary(spec),
           shape_str(it->second));
    if (info.dtype != io::DType::F32 && info.dtype != io::DType::F16 && info.dtype != io::DType::BF16 &&
        info.dtype != io::DType::F64)
      fail("{}: tensor '{}' has dtype {}; parameters must be F32, F16, BF16 or F64", dir.string(), stored,
           io::dtype_name(info.dtype));
    params[name] = weights.load(stored, dtype).to(device);
  }
  if (!unexpected.empty())
    fail("{}: {} tensor(s) not used by a {} model with this config ({}): {}", dir.string(), unexpected.size(),
         spec.model_type, dims_summary(spec),
         fmt::join(unexpected.begin(), unexpected.begin() + std::min<size_t>(unexpected.size(), 8), ", "));
  check_parameters(spec, params, dir.string());
  Transformer model;
  model.spec_ = std::move(spec);
  model.params_ = std::move(params);
  model.checkpoint_dir_ = dir;
  return model;
}

Transformer Transformer::from_parameters(ModelSpec spec, std::map<std::string, torch::Tensor> params) {
  check_parameters(spec, params, fmt::format("{} parameters", spec.model_type));
  Transformer model;
  model.spec_ = std::move(spec);
  model.params_ = std::move(params);
  return model;
}

std::map<std::string, torch::Tensor> Transformer::init_parameters(const ModelSpec& spec, uint64_t seed) {
  const ModelNames names = model_names(spec);
  std::set<std::string> norm_weights{names.final_norm_w};
  for (const auto& b : names.blocks) {
    norm_weights.insert(b.ln1_w);
    if (!b.ln2_w.empty()) norm_weights.insert(b.ln2_w);
  }
  auto generator = at::detail::createCPUGenerator(seed);
  const double std_dev = spec.initializer_range;
  // GPT-2 scales the residual projections by 1/sqrt(2 * n_layer) (GPT2PreTrainedModel._init_weights).
  const double residual_std = std_dev / std::sqrt(2.0 * static_cast<double>(spec.n_layers));
  std::map<std::string, torch::Tensor> params;
  for (const auto& [name, shape] : parameter_shapes(spec)) {
    torch::Tensor t;
    if (norm_weights.count(name))
      t = spec.norm == NormKind::LayerNorm ? torch::ones(shape) : torch::zeros(shape);  // Gemma: (1 + w), w = 0
    else if (name.ends_with(".bias"))
      t = torch::zeros(shape);
    else if (spec.model_type == "gpt2" && name.ends_with("c_proj.weight"))
      t = torch::randn(shape, generator) * residual_std;
    else
      t = torch::randn(shape, generator) * std_dev;
    if (name == names.embed && spec.pad_token_id >= 0 && spec.pad_token_id < spec.vocab_size)
      t[spec.pad_token_id].zero_();
    params[name] = t;
  }
  return params;
}

std::string Transformer::checkpoint_sha256() const {
  if (checkpoint_dir_.empty()) return "";
  if (checkpoint_sha256_.empty()) checkpoint_sha256_ = io::checkpoint_sha256(checkpoint_dir_);
  return checkpoint_sha256_;
}

ForwardOutput Transformer::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                   const ForwardRequest& request) const {
  const ModelSpec& s = spec_;
  if (!input_ids.defined() || input_ids.dim() != 2 || input_ids.is_floating_point())
    fail("forward: input_ids must be an integer tensor [batch, seq_len]");
  const int64_t B = input_ids.size(0), T = input_ids.size(1), H = s.hidden_size;
  if (B == 0 || T == 0) fail("forward: empty batch [{}, {}]", B, T);
  if (attention_mask.defined() && attention_mask.sizes() != input_ids.sizes())
    fail("forward: attention_mask shape {} differs from input_ids {}", shape_str(attention_mask.sizes()),
         shape_str(input_ids.sizes()));
  if (s.positions == PositionKind::Learned && T > s.max_positions)
    fail("forward: sequence length {} exceeds the model's {} learned positions", T, s.max_positions);
  int last_block = -1;
  for (int b : request.blocks) {
    if (b < 0 || b >= s.n_layers)
      fail("forward: block {} does not exist; the model has {} blocks (0..{})", b, s.n_layers, s.n_layers - 1);
    last_block = std::max(last_block, b);
  }
  if (request.final_norm || request.logits) last_block = static_cast<int>(s.n_layers) - 1;

  const ModelNames names = model_names(s);
  auto P = [&](const std::string& name) -> const torch::Tensor& { return lookup(params_, name); };
  const torch::Tensor& embed_weight = P(names.embed);
  const torch::Device device = embed_weight.device();
  const torch::ScalarType dtype = embed_weight.scalar_type();
  const torch::Tensor ids = input_ids.to(device, torch::kLong);
  {
    const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    if (lo < 0 || hi >= s.vocab_size)
      fail("forward: token id {} is outside the model's vocabulary [0, {})", lo < 0 ? lo : hi, s.vocab_size);
  }
  const bool inplace = !torch::GradMode::is_enabled();
  const bool conv1d = detail::architecture_for(s.model_type, "model spec").names.conv1d;
  const auto layout = detail::architecture_for(s.model_type, "model spec").names.qkv_layout;

  ForwardOutput out;
  torch::Tensor x = torch::embedding(embed_weight, ids);  // [B, T, H]
  if (s.positions == PositionKind::Learned) x = x + P(names.position_embed).narrow(0, 0, T);
  if (s.scale_embedding)  // HF: torch.tensor(hidden_size**0.5, dtype=activation dtype)
    x = x * torch::scalar_tensor(std::sqrt(static_cast<double>(H)), x.options());
  if (request.embed) out.embed = x;
  if (last_block < 0) return out;

  const torch::Tensor mask = detail::additive_attention_mask(attention_mask, B, T, device);
  detail::RotaryTables rotary;
  if (s.positions == PositionKind::Rotary && s.rotary_dims > 0)
    rotary = detail::rotary_tables(s.rotary_dims, s.rotary_base, T, dtype, device);
  const std::set<int> wanted(request.blocks.begin(), request.blocks.end());
  const int64_t N = B * T, heads = s.n_heads, kv_heads = s.n_kv_heads, hd = s.head_dim;

  auto attention = [&](const BlockNames& b, const torch::Tensor& h2, int layer) {
    torch::Tensor q, k, v;  // [B, heads, T, hd]
    if (layout == QkvLayout::Separate) {
      q = detail::linear(h2, P(b.q_w), P(b.q_b), conv1d).view({B, T, heads, hd}).transpose(1, 2);
      k = detail::linear(h2, P(b.k_w), P(b.k_b), conv1d).view({B, T, kv_heads, hd}).transpose(1, 2);
      v = detail::linear(h2, P(b.v_w), P(b.v_b), conv1d).view({B, T, kv_heads, hd}).transpose(1, 2);
    } else {
      const torch::Tensor qkv = detail::linear(h2, P(b.qkv_w), P(b.qkv_b), conv1d);
      // FusedBlocks: [q | k | v] of heads*hd each; interleaved: per head [q k v] of hd each.
      const torch::Tensor split = layout == QkvLayout::FusedBlocks ? qkv.view({B, T, 3, heads, hd}).transpose(2, 3)
                                                                   : qkv.view({B, T, heads, 3, hd});
      q = split.select(3, 0).transpose(1, 2);
      k = split.select(3, 1).transpose(1, 2);
      v = split.select(3, 2).transpose(1, 2);
    }
    if (rotary.cos.defined()) {
      q = detail::apply_rotary(q, rotary);
      k = detail::apply_rotary(k, rotary);
    }
    double scale = s.scale_attention ? 1.0 / std::sqrt(static_cast<double>(hd)) : 1.0;
    if (s.scale_attention_by_inverse_layer) scale /= static_cast<double>(layer + 1);
    const torch::Tensor context = detail::scaled_dot_product_attention(q, k, v, mask, scale, inplace);
    return detail::linear(context, P(b.attn_out_w), P(b.attn_out_b), conv1d);
  };
  auto mlp = [&](const BlockNames& b, const torch::Tensor& h2) {
    torch::Tensor hidden;
    if (s.mlp == MlpKind::Gated) {
      torch::Tensor gate = detail::activate(s.activation, detail::linear(h2, P(b.mlp_gate_w), P(b.mlp_gate_b), conv1d),
                                            inplace);
      torch::Tensor up = detail::linear(h2, P(b.mlp_up_w), P(b.mlp_up_b), conv1d);
      hidden = inplace ? gate.mul_(up) : gate * up;
    } else {
      hidden = detail::activate(s.activation, detail::linear(h2, P(b.mlp_in_w), P(b.mlp_in_b), conv1d), inplace);
    }
    return detail::linear(hidden, P(b.mlp_out_w), P(b.mlp_out_b), conv1d);
  };
  auto norm = [&](const torch::Tensor& t, const std::string& w, const std::string& bias) {
    return detail::norm(s.norm, t, P(w), P(bias), s.norm_eps);
  };

  x = x.reshape({N, H});
  for (int i = 0; i <= last_block; ++i) {
    const BlockNames& b = names.blocks[static_cast<size_t>(i)];
    switch (s.residual) {
      case ResidualKind::Sequential: {
        const torch::Tensor after_attention = attention(b, norm(x, b.ln1_w, b.ln1_b), i) + x;
        x = mlp(b, norm(after_attention, b.ln2_w, b.ln2_b)) + after_attention;
        break;
      }
      case ResidualKind::ParallelTwoNorms: {  // HF NeoX: mlp_output + attn_output + residual
        const torch::Tensor attn = attention(b, norm(x, b.ln1_w, b.ln1_b), i);
        x = mlp(b, norm(x, b.ln2_w, b.ln2_b)) + attn + x;
        break;
      }
      case ResidualKind::ParallelSharedNorm: {  // HF Phi: attn_outputs + feed_forward + residual
        const torch::Tensor h = norm(x, b.ln1_w, b.ln1_b);
        const torch::Tensor attn = attention(b, h, i);
        x = attn + mlp(b, h) + x;
        break;
      }
    }
    if (wanted.count(i)) out.resid_post[i] = x.view({B, T, H});
  }
  if (request.final_norm || request.logits) {
    const torch::Tensor normed = norm(x, names.final_norm_w, names.final_norm_b);
    if (request.final_norm) out.final_norm = normed.view({B, T, H});
    if (request.logits) {
      const torch::Tensor& head = s.tie_word_embeddings ? embed_weight : P(names.lm_head_w);
      out.logits = detail::linear(normed, head, P(names.lm_head_b), /*conv1d=*/false).view({B, T, s.vocab_size});
    }
  }
  return out;
}

torch::ScalarType parse_compute_dtype(const std::string& name, const std::string& where) {
  if (name == "f32") return torch::kFloat32;
  if (name == "bf16") return torch::kBFloat16;
  if (name == "f16") return torch::kFloat16;
  fail("{}: compute dtype \"{}\" is not one of f32, bf16, f16", where, name);
}

std::string compute_dtype_name(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat32:
      return "f32";
    case torch::kBFloat16:
      return "bf16";
    case torch::kFloat16:
      return "f16";
    default:
      fail("compute dtype {} is not one of f32, bf16, f16", c10::toString(dtype));
  }
}

void save_checkpoint(const fs::path& dir, const ModelSpec& spec, const std::map<std::string, torch::Tensor>& params) {
  if (!spec.config.is_object() || !spec.config.contains("model_type"))
    fail("save_checkpoint: the spec carries no config json; build specs with parse_config");
  check_parameters(spec, params, fmt::format("save_checkpoint {}", dir.string()));
  fs::create_directories(dir);
  io::save_safetensors(dir / "model.safetensors", params, {{"format", "pt"}});
  atomic_write_text(dir / "config.json", spec.config.dump(2) + "\n");
}

}  // namespace strata::models
