#include "sae/formats.hpp"

#include <torch/torch.h>

#include <fmt/ranges.h>

#include <set>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"
#include "core/read_bounded.hpp"
#include "io/checkpoint.hpp"
#include "io/safetensors.hpp"
#include "sae/cfg.hpp"

namespace strata::sae {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// cfg.json, bounded in size before it is read, through the format's parser (sae/cfg.hpp).
SaeCfg read_cfg(const fs::path& file, SaeCfg (*parse)(std::string_view, const std::string&)) {
  return parse(read_bounded_text_file(file, kMaxCfgBytes), file.string());
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

void reject_extra_tensors(const io::SafetensorsFile& file, const std::set<std::string>& known, const std::string& why) {
  for (const auto& name : file.names())
    if (!known.count(name))
      fail("{}: tensor '{}' is not part of {}; strata does not know how it changes the encoding, so it refuses the "
           "SAE rather than ignore it",
           file.path().string(), name, why);
}

// ------------------------------------------------------------------------------------------- SAELens

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
  SaeCfg cfg = read_cfg(cfg_path, parse_saelens_cfg);
  out.hook_name = cfg.hook_name;
  sae.architecture = cfg.architecture;
  sae.apply_b_dec_to_input = cfg.apply_b_dec_to_input;
  sae.normalize_activations = cfg.normalize_activations;
  sae.cfg = std::move(cfg.doc);

  auto [d_in, d_sae] = matrix_dims(io::SafetensorsFile(weights_path), "W_enc");
  check_sae_dims(d_in, d_sae, weights_path.string());
  if (cfg.d_in && *cfg.d_in != d_in)
    fail("{}: field 'd_in' = {} disagrees with W_enc [{}, {}] in {}", cfg_path.string(), *cfg.d_in, d_in, d_sae,
         weights_path.string());
  if (cfg.d_sae && *cfg.d_sae != d_sae)
    fail("{}: field 'd_sae' = {} disagrees with W_enc [{}, {}] in {}", cfg_path.string(), *cfg.d_sae, d_in, d_sae,
         weights_path.string());
  if (sae.architecture == "topk") {
    if (*cfg.k > d_sae) fail("{}: field 'k' = {} is out of range [1, {}]", cfg_path.string(), *cfg.k, d_sae);
    sae.k = *cfg.k;
  }

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
  SaeCfg cfg = read_cfg(cfg_path, parse_sparsify_cfg);
  const int64_t d_in = *cfg.d_in, d_sae = *cfg.d_sae;

  io::SafetensorsFile file(weights_path);
  Sae& sae = out.sae;
  sae.origin = dir.string();
  sae.architecture = "topk";
  sae.k = *cfg.k;
  sae.apply_b_dec_to_input = cfg.apply_b_dec_to_input;
  sae.normalize_activations = cfg.normalize_activations;
  sae.W_enc = load_tensor(file, "encoder.weight", {d_sae, d_in}).t().contiguous();
  sae.b_enc = load_tensor(file, "encoder.bias", {d_sae});
  sae.W_dec = load_tensor(file, "W_dec", {d_sae, d_in});
  sae.b_dec = load_tensor(file, "b_dec", {d_in});
  reject_extra_tensors(file, {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}, "a sparsify TopK SAE");
  sae.cfg = {{"sparsify_cfg", std::move(cfg.doc)}};
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
