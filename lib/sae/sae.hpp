// A sparse autoencoder in the SAELens layout, with SAELens's inference semantics made explicit:
//   x_in  = normalize(x)                                   normalize_activations (below)
//   pre   = (x_in - b_dec [if apply_b_dec_to_input]) @ W_enc + b_enc
//   f     = act(pre)      standard: ReLU | topk: ReLU then top-k (k) | jumprelu: ReLU(pre) * (pre > threshold)
//   x_hat = denormalize(f @ W_dec + b_dec)
// W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in], threshold [d_sae] (jumprelu).
// normalize_activations (SAELens): "none"; "expected_average_only_in" (x * s with s = sqrt(d_in) / E||x||
// estimated from the activations, undone on the output; strata folds s into the weights as SAELens's
// fold_activation_norm_scaling_factor does, after which the mode is "none"); "constant_norm_rescale"
// (per token x * sqrt(d_in) / ||x||, undone on the output); "layer_norm" (per token (x - mean) /
// (std + 1e-5) with the unbiased std, output * std + mean). The two per-token modes need the input to
// decode: use decode(f, x) or reconstruct(x); decode(f) refuses them.
// SAEs strata trains are "standard" or "topk" with apply_b_dec_to_input = true and "none".
// On disk: <dir>/cfg.json + <dir>/sae_weights.safetensors (loadable by SAELens / plain safetensors).
// Published SAEs in other layouts (sparsify) are read by sae/formats.hpp; Sae::load accepts both.
#pragma once
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <filesystem>
#include <string>

namespace strata::sae {

// A TopK SAE's codes without their zeros: row t's nonzeros are values[t, j] at latents indices[t, j] (a value
// may be 0 where fewer than k pre-activations were positive). dense() is what Sae::encode returns.
struct TopKCodes {
  torch::Tensor values;   // [n, k], the SAE's dtype
  torch::Tensor indices;  // I64 [n, k]
  int64_t d_sae = 0;
  torch::Tensor dense() const;  // [n, d_sae]
};

// The top k of ReLU(pre) along the last dimension of pre [n, d_sae], as TopK codes. Taken as the k largest
// pre-activations, then their ReLU: the same codes (ReLU is monotone; where fewer than k are positive, the rest
// are zeros either way) without a ReLU pass over all d_sae latents (half the time of the selection on a
// [4096, 16384] batch).
TopKCodes top_k_of_relu(const torch::Tensor& pre, int64_t k);

struct Sae {
  std::string architecture = "standard";  // "standard" (ReLU), "topk" or "jumprelu"
  int64_t k = 0;                          // topk only
  torch::Tensor W_enc, W_dec, b_enc, b_dec;
  torch::Tensor threshold;                // jumprelu only, [d_sae]
  bool apply_b_dec_to_input = true;
  std::string normalize_activations = "none";  // see above
  std::string origin;                     // where it was loaded from (for error messages); empty if built
  nlohmann::json cfg = nlohmann::json::object();  // everything else in cfg.json (metrics, provenance)

  int64_t d_in() const { return W_enc.size(0); }
  int64_t d_sae() const { return W_enc.size(1); }
  // True for the per-token normalisations, whose reconstruction needs the input (decode(f, x)).
  bool decode_needs_input() const;

  torch::Tensor pre_activation(const torch::Tensor& x) const;  // pre above, [n, d_sae]
  torch::Tensor encode(const torch::Tensor& x) const;          // f, [n, d_sae]
  torch::Tensor decode(const torch::Tensor& f) const;          // x_hat; refuses the per-token modes
  torch::Tensor decode(const torch::Tensor& f, const torch::Tensor& x) const;  // x_hat for any mode
  torch::Tensor reconstruct(const torch::Tensor& x) const { return decode(encode(x), x); }
  // TopK only: the same codes without materialising [n, d_sae] zeros, and their reconstruction as a weighted
  // sum of k decoder rows per token (n k d_in work instead of the dense decode's n d_sae d_in). Equal to
  // encode(x) and decode(encode(x), x) up to fp32 reassociation; the dense pair is the reference.
  TopKCodes encode_topk(const torch::Tensor& x) const;
  torch::Tensor decode(const TopKCodes& f, const torch::Tensor& x) const;

  // expected_average_only_in: s = sqrt(d_in) / mean_t ||x_t|| over the given rows (SAELens's
  // estimate_norm_scaling_factor), and folding it: W_enc *= s, W_dec /= s, b_dec /= s, mode "none",
  // cfg "folded_norm_scaling_factor" = s.
  static double estimate_norm_scaling_factor(const torch::Tensor& x);
  void fold_norm_scaling_factor(double scaling_factor);

  // Reads an SAE directory in any supported format (sae/formats.hpp: "auto" picks it from the files
  // present; "saelens" or "sparsify" forces one). Every encoding-relevant cfg field is honoured or
  // refused with an error naming the file and the field; shapes are checked against cfg and bounded.
  static Sae load(const std::filesystem::path& dir, const std::string& format = "auto");
  // The same SAE with its tensors on `device` (the loader reads to the host).
  Sae to(const torch::Device& device) const;
  // Writes cfg.json + sae_weights.safetensors (f32) atomically in the SAELens layout; cfg.json gets
  // architecture, d_in, d_sae, k, apply_b_dec_to_input, normalize_activations plus `cfg`'s other keys.
  void save(const std::filesystem::path& dir) const;

 private:
  torch::Tensor denormalized(const torch::Tensor& out, const torch::Tensor& x) const;  // undoes the per-token modes
};

}  // namespace strata::sae
