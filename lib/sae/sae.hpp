// A trained sparse autoencoder in the SAELens layout, acting on RAW activations:
//   f     = act((x - b_dec) @ W_enc + b_enc)       act = ReLU ("standard") or ReLU-then-top-k ("topk")
//   x_hat = f @ W_dec + b_dec
// W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in].
// On disk: <dir>/cfg.json + <dir>/sae_weights.safetensors (loadable by SAELens / plain safetensors).
#pragma once
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <filesystem>
#include <string>

namespace strata::sae {

struct Sae {
  std::string architecture = "standard";  // "standard" (ReLU) or "topk"
  int64_t k = 0;                          // topk only
  torch::Tensor W_enc, W_dec, b_enc, b_dec;
  nlohmann::json cfg = nlohmann::json::object();  // everything else in cfg.json (metrics, provenance)

  int64_t d_in() const { return W_enc.size(0); }
  int64_t d_sae() const { return W_enc.size(1); }

  torch::Tensor pre_activation(const torch::Tensor& x) const;  // (x - b_dec) @ W_enc + b_enc
  torch::Tensor encode(const torch::Tensor& x) const;          // f, [n, d_sae]
  torch::Tensor decode(const torch::Tensor& f) const;          // x_hat, [n, d_in]
  torch::Tensor reconstruct(const torch::Tensor& x) const { return decode(encode(x)); }

  // Reads cfg.json (architecture, d_in, d_sae, k) and sae_weights.safetensors, checking shapes agree.
  static Sae load(const std::filesystem::path& dir);
  // Writes both files atomically; cfg.json gets architecture, d_in, d_sae, k plus `cfg`'s other keys.
  void save(const std::filesystem::path& dir) const;
};

}  // namespace strata::sae
