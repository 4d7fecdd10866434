#include "sae/sae.hpp"

#include <torch/torch.h>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "io/safetensors.hpp"

namespace strata::sae {
namespace fs = std::filesystem;

torch::Tensor Sae::pre_activation(const torch::Tensor& x) const {
  return torch::addmm(b_enc, x - b_dec, W_enc);
}

torch::Tensor Sae::encode(const torch::Tensor& x) const {
  torch::Tensor f = torch::relu(pre_activation(x));
  if (architecture == "topk") {
    auto [values, indices] = f.topk(k, /*dim=*/-1);
    f = torch::zeros_like(f).scatter_(-1, indices, values);
  }
  return f;
}

torch::Tensor Sae::decode(const torch::Tensor& f) const { return torch::addmm(b_dec, f, W_dec); }

Sae Sae::load(const fs::path& dir) {
  fs::path cfg_path = dir / "cfg.json", weights_path = dir / "sae_weights.safetensors";
  if (!fs::exists(cfg_path) || !fs::exists(weights_path))
    fail("{} is not an SAE directory: it needs cfg.json and sae_weights.safetensors", dir.string());
  Sae sae;
  sae.cfg = nlohmann::json::parse(read_text_file(cfg_path), nullptr, false);
  if (sae.cfg.is_discarded() || !sae.cfg.is_object()) fail("{}: not valid JSON", cfg_path.string());
  sae.architecture = sae.cfg.value("architecture", "standard");
  if (sae.architecture != "standard" && sae.architecture != "topk")
    fail("{}: architecture '{}' is not supported (standard or topk)", cfg_path.string(), sae.architecture);
  sae.k = sae.cfg.value("k", int64_t{0});
  if (sae.architecture == "topk" && sae.k <= 0) fail("{}: topk SAE needs k > 0", cfg_path.string());
  io::SafetensorsFile file(weights_path);
  for (const char* name : {"W_enc", "W_dec", "b_enc", "b_dec"})
    if (!file.contains(name)) fail("{}: missing tensor {}", weights_path.string(), name);
  sae.W_enc = file.load("W_enc", torch::kFloat32);
  sae.W_dec = file.load("W_dec", torch::kFloat32);
  sae.b_enc = file.load("b_enc", torch::kFloat32);
  sae.b_dec = file.load("b_dec", torch::kFloat32);
  int64_t d_in = sae.W_enc.size(0), d_sae = sae.W_enc.size(1);
  if (sae.W_dec.sizes() != torch::IntArrayRef{d_sae, d_in} || sae.b_enc.numel() != d_sae || sae.b_dec.numel() != d_in)
    fail("{}: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in] do not agree", weights_path.string());
  if (sae.cfg.contains("d_in") && sae.cfg["d_in"].get<int64_t>() != d_in)
    fail("{}: d_in {} disagrees with the weights ({})", cfg_path.string(), sae.cfg["d_in"].dump(), d_in);
  return sae;
}

void Sae::save(const fs::path& dir) const {
  fs::create_directories(dir);
  nlohmann::json out = cfg;
  out["architecture"] = architecture;
  out["d_in"] = d_in();
  out["d_sae"] = d_sae();
  if (architecture == "topk") out["k"] = k;
  io::save_safetensors(dir / "sae_weights.safetensors",
                       {{"W_enc", W_enc.contiguous()}, {"W_dec", W_dec.contiguous()}, {"b_enc", b_enc.contiguous()},
                        {"b_dec", b_dec.contiguous()}});
  atomic_write_text(dir / "cfg.json", out.dump(2));
}

}  // namespace strata::sae
