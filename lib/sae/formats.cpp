#include "sae/formats.hpp"

#include <torch/torch.h>

#include <fmt/ranges.h>

#include <regex>
#include <set>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"
#include "io/checkpoint.hpp"
#include "io/safetensors.hpp"

namespace strata::sae {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Sane limits on what a published file may claim (the largest public SAEs are ~2^20 wide on 2^14-dim
// streams); anything above is an error before any allocation.
constexpr int64_t kMaxDIn = int64_t(1) << 17;
constexpr int64_t kMaxDSae = int64_t(1) << 24;
constexpr int64_t kMaxElements = int64_t(1) << 32;

json read_cfg(const fs::path& file) {
  json cfg = json::parse(read_text_file(file), nullptr, false);
  if (cfg.is_discarded() || !cfg.is_object()) fail("{}: not a JSON object", file.string());
  return cfg;
}

// An integer field within [lo, hi], or nullopt when absent/null.
std::optional<int64_t> int_field(const json& cfg, const char* key, const fs::path& file, int64_t lo, int64_t hi) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (!it->is_number_integer() && !(it->is_number_float() && it->get<double>() == std::floor(it->get<double>())))
    fail("{}: field '{}' must be an integer, got {}", file.string(), key, it->dump());
  double value = it->get<double>();
  if (value < double(lo) || value > double(hi))
    fail("{}: field '{}' = {} is out of range [{}, {}]", file.string(), key, it->dump(), lo, hi);
  return static_cast<int64_t>(value);
}

bool bool_field(const json& cfg, const char* key, bool fallback, const fs::path& file) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) fail("{}: field '{}' must be true or false, got {}", file.string(), key, it->dump());
  return it->get<bool>();
}

std::string string_field(const json& cfg, const char* key, const std::string& fallback, const fs::path& file) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return fallback;
  if (!it->is_string()) fail("{}: field '{}' must be a string, got {}", file.string(), key, it->dump());
  return it->get<std::string>();
}

// A tensor of exactly `shape`, converted to f32, finite. The shape is checked from the header first.
torch::Tensor load_tensor(const io::SafetensorsFile& file, const std::string& name, std::vector<int64_t> shape) {
  if (!file.contains(name)) fail("{}: missing tensor '{}'", file.path().string(), name);
  const io::TensorInfo& info = file.info(name);
  if (info.shape != shape)
    fail("{}: tensor '{}' has shape [{}], expected [{}]", file.path().string(), name, fmt::join(info.shape, ", "),
         fmt::join(shape, ", "));
  switch (info.dtype) {
    case io::DType::F32: case io::DType::F16: case io::DType::BF16: case io::DType::F64: break;
    default: fail("{}: tensor '{}' has dtype {}; an SAE's weights are floating point", file.path().string(), name,
                  io::dtype_name(info.dtype));
  }
  torch::Tensor t = file.load(name, torch::kFloat32);
  if (!torch::isfinite(t).all().item<bool>())
    fail("{}: tensor '{}' holds NaN or Inf values", file.path().string(), name);
  return t;
}

// d_in / d_sae from a 2-D tensor's header, bounded before anything is read.
std::pair<int64_t, int64_t> matrix_dims(const io::SafetensorsFile& file, const std::string& name) {
  if (!file.contains(name)) fail("{}: missing tensor '{}'", file.path().string(), name);
  const auto& shape = file.info(name).shape;
  if (shape.size() != 2) fail("{}: tensor '{}' must be 2-D, has {} dimensions", file.path().string(), name, shape.size());
  return {shape[0], shape[1]};
}

void check_dims(int64_t d_in, int64_t d_sae, const fs::path& file) {
  if (d_in < 1 || d_in > kMaxDIn) fail("{}: d_in = {} is out of range [1, {}]", file.string(), d_in, kMaxDIn);
  if (d_sae < 1 || d_sae > kMaxDSae) fail("{}: d_sae = {} is out of range [1, {}]", file.string(), d_sae, kMaxDSae);
  if (d_in * d_sae > kMaxElements)
    fail("{}: d_in x d_sae = {} x {} exceeds {} weights", file.string(), d_in, d_sae, kMaxElements);
}

void reject_extra_tensors(const io::SafetensorsFile& file, const std::set<std::string>& known, const std::string& why) {
  for (const auto& name : file.names())
    if (!known.count(name))
      fail("{}: tensor '{}' is not part of {}; strata does not know how it changes the encoding, so it refuses the "
           "SAE rather than ignore it",
           file.path().string(), name, why);
}

// ------------------------------------------------------------------------------------------- SAELens

std::optional<std::string> saelens_hook(const json& cfg) {
  for (const char* key : {"hook_name", "hook_point"})
    if (cfg.contains(key) && cfg[key].is_string()) return cfg[key].get<std::string>();
  for (const char* block : {"meta", "metadata"})
    if (cfg.contains(block) && cfg[block].is_object() && cfg[block].contains("hook_name") &&
        cfg[block]["hook_name"].is_string())
      return cfg[block]["hook_name"].get<std::string>();
  return std::nullopt;
}

LoadedSae load_saelens(const fs::path& dir) {
  const fs::path cfg_path = dir / "cfg.json", weights_path = dir / "sae_weights.safetensors";
  if (!fs::is_regular_file(cfg_path) || !fs::is_regular_file(weights_path))
    fail("{} is not a SAELens SAE directory: it needs cfg.json and sae_weights.safetensors", dir.string());
  LoadedSae out;
  out.format = "saelens";
  out.dir = dir;
  out.files = {cfg_path, weights_path};
  Sae& sae = out.sae;
  sae.origin = dir.string();
  sae.cfg = read_cfg(cfg_path);
  const json& cfg = sae.cfg;
  out.hook_name = saelens_hook(cfg);

  // Architecture, with the pre-6.0 spelling (architecture "standard" + activation_fn_str "topk").
  sae.architecture = string_field(cfg, "architecture", "standard", cfg_path);
  if (sae.architecture == "gated")
    fail("{}: field 'architecture' = \"gated\" is not supported by strata (standard, topk, jumprelu)", cfg_path.string());
  if (sae.architecture == "batchtopk" || sae.architecture == "matryoshka_batchtopk")
    fail("{}: field 'architecture' = \"{}\" is SAELens's training form; load the inference SAE it saves "
         "(architecture jumprelu with a threshold)",
         cfg_path.string(), sae.architecture);
  if (sae.architecture != "standard" && sae.architecture != "topk" && sae.architecture != "jumprelu")
    fail("{}: field 'architecture' = \"{}\" is not supported (standard, topk, jumprelu)", cfg_path.string(), sae.architecture);
  for (const char* key : {"activation_fn", "activation_fn_str"}) {
    if (!cfg.contains(key) || cfg[key].is_null()) continue;
    const std::string fn = string_field(cfg, key, "relu", cfg_path);
    if (fn == "topk" && sae.architecture == "standard") {
      sae.architecture = "topk";
    } else if (fn != "relu" && !(fn == "topk" && sae.architecture == "topk")) {
      fail("{}: field '{}' = \"{}\" is not supported (relu, or topk with activation_fn_kwargs.k)", cfg_path.string(), key, fn);
    }
  }

  auto [d_in, d_sae] = matrix_dims(io::SafetensorsFile(weights_path), "W_enc");
  check_dims(d_in, d_sae, weights_path);
  if (auto v = int_field(cfg, "d_in", cfg_path, 1, kMaxDIn); v && *v != d_in)
    fail("{}: field 'd_in' = {} disagrees with W_enc [{}, {}] in {}", cfg_path.string(), *v, d_in, d_sae, weights_path.string());
  if (auto v = int_field(cfg, "d_sae", cfg_path, 1, kMaxDSae); v && *v != d_sae)
    fail("{}: field 'd_sae' = {} disagrees with W_enc [{}, {}] in {}", cfg_path.string(), *v, d_in, d_sae, weights_path.string());

  if (sae.architecture == "topk") {
    std::optional<int64_t> k = int_field(cfg, "k", cfg_path, 1, d_sae);
    if (!k && cfg.contains("activation_fn_kwargs") && cfg["activation_fn_kwargs"].is_object())
      k = int_field(cfg["activation_fn_kwargs"], "k", cfg_path, 1, d_sae);
    if (!k) fail("{}: a topk SAE needs field 'k' (or activation_fn_kwargs.k) in [1, d_sae = {}]", cfg_path.string(), d_sae);
    sae.k = *k;
  }
  sae.apply_b_dec_to_input = bool_field(cfg, "apply_b_dec_to_input", true, cfg_path);  // SAELens's default
  if (cfg.contains("normalize_activations") && cfg["normalize_activations"].is_boolean()) {
    // SAELens before 3.x: true meant what is now expected_average_only_in.
    sae.normalize_activations = cfg["normalize_activations"].get<bool>() ? "expected_average_only_in" : "none";
  } else {
    sae.normalize_activations = string_field(cfg, "normalize_activations", "none", cfg_path);
  }
  if (sae.normalize_activations != "none" && sae.normalize_activations != "expected_average_only_in" &&
      sae.normalize_activations != "constant_norm_rescale" && sae.normalize_activations != "layer_norm")
    fail("{}: field 'normalize_activations' = \"{}\" is not supported (none, expected_average_only_in, "
         "constant_norm_rescale, layer_norm)",
         cfg_path.string(), sae.normalize_activations);
  // Fields that change the encoding in ways strata does not implement.
  if (bool_field(cfg, "finetuning_scaling_factor", false, cfg_path))
    fail("{}: field 'finetuning_scaling_factor' = true is not supported", cfg_path.string());
  if (bool_field(cfg, "rescale_acts_by_decoder_norm", false, cfg_path))
    fail("{}: field 'rescale_acts_by_decoder_norm' = true is not supported", cfg_path.string());
  if (const std::string reshape = string_field(cfg, "reshape_activations", "none", cfg_path); reshape != "none")
    fail("{}: field 'reshape_activations' = \"{}\" is not supported (strata's cells are residual streams)",
         cfg_path.string(), reshape);
  for (const char* key : {"hook_head_index", "hook_point_head_index"})
    if (cfg.contains(key) && !cfg[key].is_null())
      fail("{}: field '{}' = {} is not supported (a per-head SAE; strata's cells are residual streams)", cfg_path.string(),
           key, cfg[key].dump());
  if (cfg.contains("meta") && cfg["meta"].is_object() && cfg["meta"].contains("hook_head_index") &&
      !cfg["meta"]["hook_head_index"].is_null())
    fail("{}: field 'meta.hook_head_index' = {} is not supported (a per-head SAE)", cfg_path.string(),
         cfg["meta"]["hook_head_index"].dump());

  io::SafetensorsFile file(weights_path);
  sae.W_enc = load_tensor(file, "W_enc", {d_in, d_sae});
  sae.W_dec = load_tensor(file, "W_dec", {d_sae, d_in});
  sae.b_enc = load_tensor(file, "b_enc", {d_sae});
  sae.b_dec = load_tensor(file, "b_dec", {d_in});
  std::set<std::string> known = {"W_enc", "W_dec", "b_enc", "b_dec"};
  if (sae.architecture == "jumprelu") {
    if (file.contains("threshold")) {
      sae.threshold = load_tensor(file, "threshold", {d_sae});
      known.insert("threshold");
    } else if (file.contains("log_threshold")) {  // a SAELens training checkpoint
      sae.threshold = load_tensor(file, "log_threshold", {d_sae}).exp();
      known.insert("log_threshold");
    } else {
      fail("{}: a jumprelu SAE needs tensor 'threshold' [{}]", weights_path.string(), d_sae);
    }
  }
  // SAELens wrote an all-ones `scaling_factor` for a while and drops it on load; anything else scales
  // the latents and is refused.
  if (file.contains("scaling_factor")) {
    torch::Tensor s = load_tensor(file, "scaling_factor", {d_sae});
    if (!torch::equal(s, torch::ones_like(s)))
      fail("{}: tensor 'scaling_factor' (a fine-tuning scaling factor) is not all ones; not supported",
           weights_path.string());
    known.insert("scaling_factor");
  }
  reject_extra_tensors(file, known, "a SAELens " + sae.architecture + " SAE");
  return out;
}

// ------------------------------------------------------------------------------------------ sparsify

LoadedSae load_sparsify(const fs::path& dir) {
  const fs::path cfg_path = dir / "cfg.json", weights_path = dir / "sae.safetensors";
  if (!fs::is_regular_file(cfg_path) || !fs::is_regular_file(weights_path))
    fail("{} is not a sparsify SAE directory: it needs cfg.json and sae.safetensors", dir.string());
  LoadedSae out;
  out.format = "sparsify";
  out.dir = dir;
  out.files = {cfg_path, weights_path};
  // sparsify names each SAE's directory after its hookpoint (e.g. layers.6).
  std::string dir_name = fs::path(dir).lexically_normal().filename().string();
  if (dir_name.empty()) dir_name = fs::path(dir).lexically_normal().parent_path().filename().string();
  if (!dir_name.empty()) out.hook_name = dir_name;
  json cfg = read_cfg(cfg_path);

  const std::string activation = string_field(cfg, "activation", "topk", cfg_path);
  if (activation != "topk")
    fail("{}: field 'activation' = \"{}\" is not supported (topk)", cfg_path.string(), activation);
  for (const char* key : {"transcode", "skip_connection", "signed"})
    if (bool_field(cfg, key, false, cfg_path))
      fail("{}: field '{}' = true is not supported (strata reads sparse autoencoders: TopK(ReLU(encoder(x - b_dec))))",
           cfg_path.string(), key);
  if (!cfg.contains("d_in")) fail("{}: missing field 'd_in'", cfg_path.string());
  const int64_t d_in = *int_field(cfg, "d_in", cfg_path, 1, kMaxDIn);
  int64_t d_sae = int_field(cfg, "num_latents", cfg_path, 0, kMaxDSae).value_or(0);
  if (d_sae == 0) {
    auto expansion = int_field(cfg, "expansion_factor", cfg_path, 1, kMaxDSae);
    if (!expansion) fail("{}: needs field 'num_latents' > 0 or 'expansion_factor'", cfg_path.string());
    d_sae = *expansion * d_in;
  }
  check_dims(d_in, d_sae, cfg_path);
  auto k = int_field(cfg, "k", cfg_path, 1, d_sae);
  if (!k) fail("{}: missing field 'k' (latents kept per token)", cfg_path.string());

  io::SafetensorsFile file(weights_path);
  Sae& sae = out.sae;
  sae.origin = dir.string();
  sae.architecture = "topk";
  sae.k = *k;
  sae.apply_b_dec_to_input = true;
  sae.normalize_activations = "none";
  sae.W_enc = load_tensor(file, "encoder.weight", {d_sae, d_in}).t().contiguous();
  sae.b_enc = load_tensor(file, "encoder.bias", {d_sae});
  sae.W_dec = load_tensor(file, "W_dec", {d_sae, d_in});
  sae.b_dec = load_tensor(file, "b_dec", {d_in});
  reject_extra_tensors(file, {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}, "a sparsify TopK SAE");
  sae.cfg = {{"sparsify_cfg", cfg}};
  return out;
}

}  // namespace

std::string detect_format(const fs::path& dir) {
  if (!fs::is_directory(dir)) fail("{}: SAE directory not found", dir.string());
  const bool has_cfg = fs::is_regular_file(dir / "cfg.json");
  const bool saelens = fs::is_regular_file(dir / "sae_weights.safetensors");
  const bool sparsify = fs::is_regular_file(dir / "sae.safetensors");
  if (has_cfg && saelens && !sparsify) return "saelens";
  if (has_cfg && sparsify && !saelens) return "sparsify";
  if (saelens && sparsify)
    fail("{} holds both sae_weights.safetensors (SAELens) and sae.safetensors (sparsify); name the format explicitly",
         dir.string());
  std::vector<std::string> found;
  for (const auto& entry : fs::directory_iterator(dir)) found.push_back(entry.path().filename().string());
  std::sort(found.begin(), found.end());
  if (found.size() > 12) found.resize(12), found.push_back("...");
  fail("{} is not an SAE directory: expected cfg.json with sae_weights.safetensors (SAELens / strata) or "
       "sae.safetensors (sparsify); found: {}",
       dir.string(), found.empty() ? std::string("nothing") : fmt::format("{}", fmt::join(found, ", ")));
}

LoadedSae load_sae(const fs::path& dir, const std::string& format) {
  const std::string chosen = format == "auto" ? detect_format(dir) : format;
  if (chosen == "saelens") return load_saelens(dir);
  if (chosen == "sparsify") return load_sparsify(dir);
  fail("SAE format '{}' is not one of auto, saelens, sparsify", format);
}

void save_sae(const Sae& sae, const fs::path& dir, const std::string& format, const std::string& hook_name) {
  if (format == "saelens") {
    Sae copy = sae;
    if (!hook_name.empty()) copy.cfg["hook_name"] = hook_name;
    copy.save(dir);
    return;
  }
  if (format != "sparsify") fail("SAE format '{}' is not one of saelens, sparsify", format);
  if (sae.architecture != "topk" && sae.architecture != "standard")
    fail("{}: a {} SAE cannot be written in the sparsify format (TopK only)", sae.origin, sae.architecture);
  if (!sae.apply_b_dec_to_input || sae.normalize_activations != "none")
    fail("{}: the sparsify format always subtracts b_dec and never normalises (apply_b_dec_to_input = {}, "
         "normalize_activations = {})",
         sae.origin, sae.apply_b_dec_to_input, sae.normalize_activations);
  fs::create_directories(dir);
  // A ReLU SAE is the TopK SAE with k = d_sae: every positive latent is kept.
  const int64_t k = sae.architecture == "topk" ? sae.k : sae.d_sae();
  io::save_safetensors(dir / "sae.safetensors", {{"encoder.weight", sae.W_enc.t().contiguous()},
                                                 {"encoder.bias", sae.b_enc.contiguous()},
                                                 {"W_dec", sae.W_dec.contiguous()},
                                                 {"b_dec", sae.b_dec.contiguous()}});
  json cfg = {{"activation", "topk"}, {"expansion_factor", std::max<int64_t>(1, sae.d_sae() / sae.d_in())},
              {"normalize_decoder", false}, {"num_latents", sae.d_sae()}, {"k", k}, {"multi_topk", false},
              {"skip_connection", false}, {"transcode", false}, {"d_in", sae.d_in()}};
  atomic_write_text(dir / "cfg.json", cfg.dump());
}

std::string sae_sha256(const LoadedSae& sae) {
  std::string text;
  for (const auto& file : sae.files) text += file.filename().string() + "  " + sha256_file(file) + "\n";
  return sha256_hex(text);
}

fs::path resolve_sae_source(const std::string& spec) {
  if (spec.rfind("hf://", 0) == 0) return io::resolve_hub_path(spec);
  if (!fs::is_directory(spec)) fail("{}: SAE directory not found", spec);
  return spec;
}

std::optional<int64_t> layer_of_hook(const std::string& hook) {
  static const std::regex post(R"(blocks\.(\d+)\.hook_resid_post)"), pre(R"(blocks\.(\d+)\.hook_resid_pre)");
  static const std::regex block_output(R"((?:.*\.)?(?:layers|h)\.(\d+))");
  static const std::regex other_tl(R"(blocks\.\d+\..+|hook_.+)");
  static const std::regex inside_block(R"((?:.*\.)?(?:layers|h)\.\d+\..+)");
  std::smatch m;
  // strata's own layer-0 SAEs record hook_embed (sae::hook_name); equal to blocks.0.hook_resid_pre for
  // models without learned position embeddings.
  if (hook == "hook_embed" || hook == "blocks.0.hook_resid_pre") return 0;
  if (std::regex_match(hook, m, post)) return std::stoll(m[1]) + 1;
  if (std::regex_match(hook, m, pre)) return std::stoll(m[1]);
  if (std::regex_match(hook, m, block_output)) return std::stoll(m[1]) + 1;
  if (std::regex_match(hook, other_tl) || std::regex_match(hook, inside_block))
    fail("hook '{}' is not the residual stream (strata's cells are blocks.N.hook_resid_pre/post, or a sparsify "
         "hookpoint layers.N)",
         hook);
  return std::nullopt;
}

void check_hook_layer(const LoadedSae& sae, int64_t layer, const std::string& cell) {
  if (!sae.hook_name) return;
  std::optional<int64_t> hook_layer;
  try {
    hook_layer = layer_of_hook(*sae.hook_name);
  } catch (const Error& e) {
    fail("{} SAE {} for cell {}: {}", sae.format, sae.dir.string(), cell, e.what());
  }
  if (!hook_layer) {
    log::warn("{} SAE {}: hook '{}' names no residual-stream layer strata recognises; layer {} is not checked",
              sae.format, sae.dir.string(), *sae.hook_name, layer);
    return;
  }
  if (*hook_layer != layer) {
    const std::string expected = layer == 0 ? std::string("blocks.0.hook_resid_pre")
                                            : fmt::format("blocks.{}.hook_resid_post = blocks.{}.hook_resid_pre", layer - 1, layer);
    fail("{} SAE {} was trained on hook '{}' (strata layer {}), but it is given for layer {} (cell {}), which is {}",
         sae.format, sae.dir.string(), *sae.hook_name, *hook_layer, layer, cell, expected);
  }
}

}  // namespace strata::sae
