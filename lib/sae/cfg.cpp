#include "sae/cfg.hpp"

#include <fmt/format.h>

#include <cmath>
#include <regex>

#include "core/error.hpp"
#include "core/read_bounded.hpp"

namespace strata::sae {
namespace {

using nlohmann::json;

json parse_object(std::string_view text, const std::string& path) {
  if (text.size() > kMaxCfgBytes) fail("{}: {} bytes; an SAE cfg.json is at most {} bytes", path, text.size(), kMaxCfgBytes);
  json cfg = json::parse(text.begin(), text.end(), nullptr, false);
  if (cfg.is_discarded() || !cfg.is_object()) fail("{}: not a JSON object", path);
  return cfg;
}

// An integer field within [lo, hi], or nullopt when absent/null. A float with an integral value (4.0) is
// accepted, as Python writes them; the range check happens in double, before any conversion.
std::optional<int64_t> int_field(const json& cfg, const char* key, const std::string& path, int64_t lo, int64_t hi) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer() && !(it->is_number_float() && it->get<double>() == std::floor(it->get<double>())))
    fail("{}: field '{}' must be an integer, got {}", path, key, shown(*it));
  const double value = it->get<double>();
  if (!(value >= double(lo) && value <= double(hi)))
    fail("{}: field '{}' = {} is out of range [{}, {}]", path, key, shown(*it), lo, hi);
  return static_cast<int64_t>(value);
}

bool bool_field(const json& cfg, const char* key, bool fallback, const std::string& path) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) fail("{}: field '{}' must be true or false, got {}", path, key, shown(*it));
  return it->get<bool>();
}

std::string string_field(const json& cfg, const char* key, const std::string& fallback, const std::string& path) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return fallback;
  if (!it->is_string()) fail("{}: field '{}' must be a string, got {}", path, key, shown(*it));
  return it->get<std::string>();
}

std::optional<std::string> saelens_hook(const json& cfg, const std::string& path) {
  std::optional<std::string> hook;
  for (const char* key : {"hook_name", "hook_point"})
    if (!hook && cfg.contains(key) && cfg[key].is_string()) hook = cfg[key].get<std::string>();
  for (const char* block : {"meta", "metadata"})
    if (!hook && cfg.contains(block) && cfg[block].is_object() && cfg[block].contains("hook_name") &&
        cfg[block]["hook_name"].is_string())
      hook = cfg[block]["hook_name"].get<std::string>();
  if (hook && hook->size() > kMaxHookNameBytes)
    fail("{}: field 'hook_name' is {} bytes long; a hook name is at most {}", path, hook->size(), kMaxHookNameBytes);
  return hook;
}

// A block number from a hook name (digits only, as matched): bounded before conversion.
int64_t block_number(const std::string& digits, const std::string& hook) {
  if (digits.size() > 6) fail("hook '{}': block number {} is out of range", hook, digits);
  return std::stoll(digits);
}

}  // namespace

void check_sae_dims(int64_t d_in, int64_t d_sae, const std::string& path) {
  if (d_in < 1 || d_in > kMaxDIn) fail("{}: d_in = {} is out of range [1, {}]", path, d_in, kMaxDIn);
  if (d_sae < 1 || d_sae > kMaxDSae) fail("{}: d_sae = {} is out of range [1, {}]", path, d_sae, kMaxDSae);
  if (d_in * d_sae > kMaxElements)
    fail("{}: d_in x d_sae = {} x {} exceeds {} weights", path, d_in, d_sae, kMaxElements);
}

SaeCfg parse_saelens_cfg(std::string_view text, const std::string& path) {
  SaeCfg out;
  out.doc = parse_object(text, path);
  const json& cfg = out.doc;
  out.hook_name = saelens_hook(cfg, path);

  // Architecture, with the pre-6.0 spelling (architecture "standard" + activation_fn_str "topk").
  out.architecture = string_field(cfg, "architecture", "standard", path);
  if (out.architecture == "gated")
    fail("{}: field 'architecture' = \"gated\" is not supported by strata (standard, topk, jumprelu)", path);
  if (out.architecture == "batchtopk" || out.architecture == "matryoshka_batchtopk")
    fail("{}: field 'architecture' = \"{}\" is SAELens's training form; load the inference SAE it saves "
         "(architecture jumprelu with a threshold)",
         path, out.architecture);
  if (out.architecture != "standard" && out.architecture != "topk" && out.architecture != "jumprelu")
    fail("{}: field 'architecture' = {} is not supported (standard, topk, jumprelu)", path, shown(cfg["architecture"]));
  for (const char* key : {"activation_fn", "activation_fn_str"}) {
    if (!cfg.contains(key) || cfg[key].is_null()) continue;
    const std::string fn = string_field(cfg, key, "relu", path);
    if (fn == "topk" && out.architecture == "standard") {
      out.architecture = "topk";
    } else if (fn != "relu" && !(fn == "topk" && out.architecture == "topk")) {
      fail("{}: field '{}' = {} is not supported (relu, or topk with activation_fn_kwargs.k)", path, key,
           shown(cfg[key]));
    }
  }
  out.d_in = int_field(cfg, "d_in", path, 1, kMaxDIn);
  out.d_sae = int_field(cfg, "d_sae", path, 1, kMaxDSae);
  if (out.d_in && out.d_sae) check_sae_dims(*out.d_in, *out.d_sae, path);
  if (out.architecture == "topk") {
    const int64_t k_max = out.d_sae.value_or(kMaxDSae);
    out.k = int_field(cfg, "k", path, 1, k_max);
    if (!out.k && cfg.contains("activation_fn_kwargs") && cfg["activation_fn_kwargs"].is_object())
      out.k = int_field(cfg["activation_fn_kwargs"], "k", path, 1, k_max);
    if (!out.k) fail("{}: a topk SAE needs field 'k' (or activation_fn_kwargs.k) in [1, d_sae]", path);
  }
  out.apply_b_dec_to_input = bool_field(cfg, "apply_b_dec_to_input", true, path);  // SAELens's default
  if (cfg.contains("normalize_activations") && cfg["normalize_activations"].is_boolean()) {
    // SAELens before 3.x: true meant what is now expected_average_only_in.
    out.normalize_activations = cfg["normalize_activations"].get<bool>() ? "expected_average_only_in" : "none";
  } else {
    out.normalize_activations = string_field(cfg, "normalize_activations", "none", path);
  }
  if (out.normalize_activations != "none" && out.normalize_activations != "expected_average_only_in" &&
      out.normalize_activations != "constant_norm_rescale" && out.normalize_activations != "layer_norm")
    fail("{}: field 'normalize_activations' = {} is not supported (none, expected_average_only_in, "
         "constant_norm_rescale, layer_norm)",
         path, shown(cfg["normalize_activations"]));
  // Fields that change the encoding in ways strata does not implement.
  if (bool_field(cfg, "finetuning_scaling_factor", false, path))
    fail("{}: field 'finetuning_scaling_factor' = true is not supported", path);
  if (bool_field(cfg, "rescale_acts_by_decoder_norm", false, path))
    fail("{}: field 'rescale_acts_by_decoder_norm' = true is not supported", path);
  if (const std::string reshape = string_field(cfg, "reshape_activations", "none", path); reshape != "none")
    fail("{}: field 'reshape_activations' = {} is not supported (strata's cells are residual streams)", path,
         shown(cfg["reshape_activations"]));
  for (const char* key : {"hook_head_index", "hook_point_head_index"})
    if (cfg.contains(key) && !cfg[key].is_null())
      fail("{}: field '{}' = {} is not supported (a per-head SAE; strata's cells are residual streams)", path, key,
           shown(cfg[key]));
  if (cfg.contains("meta") && cfg["meta"].is_object() && cfg["meta"].contains("hook_head_index") &&
      !cfg["meta"]["hook_head_index"].is_null())
    fail("{}: field 'meta.hook_head_index' = {} is not supported (a per-head SAE)", path,
         shown(cfg["meta"]["hook_head_index"]));
  return out;
}

SaeCfg parse_sparsify_cfg(std::string_view text, const std::string& path) {
  SaeCfg out;
  out.doc = parse_object(text, path);
  const json& cfg = out.doc;
  const std::string activation = string_field(cfg, "activation", "topk", path);
  if (activation != "topk")
    fail("{}: field 'activation' = {} is not supported (topk)", path, shown(cfg["activation"]));
  for (const char* key : {"transcode", "skip_connection", "signed"})
    if (bool_field(cfg, key, false, path))
      fail("{}: field '{}' = true is not supported (strata reads sparse autoencoders: TopK(ReLU(encoder(x - b_dec))))",
           path, key);
  out.d_in = int_field(cfg, "d_in", path, 1, kMaxDIn);
  if (!out.d_in) fail("{}: missing field 'd_in'", path);
  int64_t d_sae = int_field(cfg, "num_latents", path, 0, kMaxDSae).value_or(0);
  if (d_sae == 0) {
    const auto expansion = int_field(cfg, "expansion_factor", path, 1, kMaxDSae);
    if (!expansion) fail("{}: needs field 'num_latents' > 0 or 'expansion_factor'", path);
    d_sae = *expansion * *out.d_in;  // <= 2^24 * 2^17: no overflow; bounded next
  }
  check_sae_dims(*out.d_in, d_sae, path);
  out.d_sae = d_sae;
  out.k = int_field(cfg, "k", path, 1, d_sae);
  if (!out.k) fail("{}: missing field 'k' (latents kept per token)", path);
  out.architecture = "topk";
  out.apply_b_dec_to_input = true;
  out.normalize_activations = "none";
  return out;
}

std::optional<int64_t> layer_of_hook(const std::string& hook) {
  // std::regex matching recurses per character: the length is bounded first.
  if (hook.size() > kMaxHookNameBytes)
    fail("hook '{}...' is {} bytes long; a hook name is at most {}", hook.substr(0, 40), hook.size(), kMaxHookNameBytes);
  static const std::regex post(R"(blocks\.(\d+)\.hook_resid_post)"), pre(R"(blocks\.(\d+)\.hook_resid_pre)");
  static const std::regex block_output(R"((?:.*\.)?(?:layers|h)\.(\d+))");
  static const std::regex other_tl(R"(blocks\.\d+\..+|hook_.+)");
  static const std::regex inside_block(R"((?:.*\.)?(?:layers|h)\.\d+\..+)");
  std::smatch m;
  // strata's own layer-0 SAEs record hook_embed (sae::hook_name); equal to blocks.0.hook_resid_pre for
  // models without learned position embeddings.
  if (hook == "hook_embed" || hook == "blocks.0.hook_resid_pre") return 0;
  if (std::regex_match(hook, m, post)) return block_number(m[1], hook) + 1;
  if (std::regex_match(hook, m, pre)) return block_number(m[1], hook);
  if (std::regex_match(hook, m, block_output)) return block_number(m[1], hook) + 1;
  if (std::regex_match(hook, other_tl) || std::regex_match(hook, inside_block))
    fail("hook '{}' is not the residual stream (strata's cells are blocks.N.hook_resid_pre/post, or a sparsify "
         "hookpoint layers.N)",
         hook);
  return std::nullopt;
}

}  // namespace strata::sae
