#include "sae/sae.hpp"

#include <torch/torch.h>

#include <cmath>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "io/safetensors.hpp"
#include "sae/formats.hpp"

namespace strata::sae {
namespace fs = std::filesystem;

namespace {

constexpr double kLayerNormEps = 1e-5;  // SAELens run_time_activation_ln_in

std::string name_of(const Sae& sae) { return sae.origin.empty() ? std::string("SAE") : "SAE " + sae.origin; }

// Per-token statistics of the two per-token normalisations.
struct TokenStats {
  torch::Tensor scale, mean;  // x_in = (x - mean) * scale; output = out / scale + mean
};

TokenStats token_stats(const Sae& sae, const torch::Tensor& x) {
  TokenStats s;
  if (sae.normalize_activations == "constant_norm_rescale") {
    s.scale = std::sqrt(double(sae.d_in())) / x.norm(2, {-1}, true);
  } else {  // layer_norm
    s.mean = x.mean({-1}, true);
    torch::Tensor sd = (x - s.mean).std({-1}, /*unbiased=*/true, /*keepdim=*/true);
    s.scale = 1.0 / (sd + kLayerNormEps);
  }
  return s;
}

}  // namespace

bool Sae::decode_needs_input() const {
  return normalize_activations == "constant_norm_rescale" || normalize_activations == "layer_norm";
}

torch::Tensor Sae::pre_activation(const torch::Tensor& x) const {
  torch::Tensor in = x;
  if (normalize_activations == "expected_average_only_in")
    fail("{} uses normalize_activations = expected_average_only_in: its scaling factor sqrt(d_in)/E||x|| must be "
         "estimated from the activations and folded in first (Sae::fold_norm_scaling_factor)",
         name_of(*this));
  if (decode_needs_input()) {
    TokenStats s = token_stats(*this, x);
    in = s.mean.defined() ? (x - s.mean) * s.scale : x * s.scale;
  } else if (normalize_activations != "none") {
    fail("{}: normalize_activations '{}' is not supported", name_of(*this), normalize_activations);
  }
  if (apply_b_dec_to_input) in = in - b_dec;
  return torch::addmm(b_enc, in, W_enc);
}

torch::Tensor TopKCodes::dense() const {
  auto shape = values.sizes().vec();
  shape.back() = d_sae;
  return torch::zeros(shape, values.options()).scatter_(-1, indices, values);
}

TopKCodes top_k_of_relu(const torch::Tensor& pre, int64_t k) {
  auto [values, indices] = pre.topk(k, /*dim=*/-1);
  return {torch::relu(values), indices, pre.size(-1)};
}

TopKCodes Sae::encode_topk(const torch::Tensor& x) const {
  if (architecture != "topk") fail("{}: encode_topk needs a topk SAE (architecture is '{}')", name_of(*this), architecture);
  return top_k_of_relu(pre_activation(x), k);
}

torch::Tensor Sae::decode(const TopKCodes& f, const torch::Tensor& x) const {
  if (f.d_sae != d_sae()) fail("{}: TopK codes over {} latents, but the SAE has {}", name_of(*this), f.d_sae, d_sae());
  const int64_t n = f.values.size(0), k_used = f.values.size(1);
  // A sum-mode embedding bag is the gather-and-weight of k decoder rows per token, on every device.
  torch::Tensor offsets = torch::arange(0, n * k_used, k_used, f.indices.options());
  torch::Tensor out = std::get<0>(torch::embedding_bag(W_dec, f.indices.reshape(-1), offsets, false, /*mode=sum*/ 0,
                                                       false, f.values.reshape(-1)));
  return denormalized(out + b_dec, x);
}

torch::Tensor Sae::denormalized(const torch::Tensor& out, const torch::Tensor& x) const {
  if (!decode_needs_input()) return out;
  TokenStats s = token_stats(*this, x);
  return s.mean.defined() ? out / s.scale + s.mean : out / s.scale;
}

torch::Tensor Sae::encode(const torch::Tensor& x) const {
  if (architecture == "topk") return encode_topk(x).dense();
  torch::Tensor pre = pre_activation(x);
  torch::Tensor f = torch::relu(pre);
  if (architecture == "jumprelu") {
    f = f * (pre > threshold).to(f.scalar_type());
  } else if (architecture != "standard") {
    fail("{}: architecture '{}' is not supported (standard, topk or jumprelu)", name_of(*this), architecture);
  }
  return f;
}

torch::Tensor Sae::decode(const torch::Tensor& f) const {
  if (decode_needs_input())
    fail("{} normalises each input (normalize_activations = {}): its reconstruction needs the input; call "
         "decode(f, x) or reconstruct(x)",
         name_of(*this), normalize_activations);
  return torch::addmm(b_dec, f, W_dec);
}

torch::Tensor Sae::decode(const torch::Tensor& f, const torch::Tensor& x) const {
  return denormalized(torch::addmm(b_dec, f, W_dec), x);
}

double Sae::estimate_norm_scaling_factor(const torch::Tensor& x) {
  if (x.dim() != 2 || x.size(0) == 0) fail("estimating the norm scaling factor needs a non-empty [rows, d_in] sample");
  double mean_norm = x.to(torch::kFloat64).norm(2, {1}).mean().item<double>();
  if (!(mean_norm > 0) || !std::isfinite(mean_norm))
    fail("estimating the norm scaling factor: the mean activation norm is {} (need a finite positive value)", mean_norm);
  return std::sqrt(double(x.size(1))) / mean_norm;
}

void Sae::fold_norm_scaling_factor(double scaling_factor) {
  if (normalize_activations != "expected_average_only_in")
    fail("{}: only an expected_average_only_in SAE has a norm scaling factor to fold (mode is '{}')", name_of(*this),
         normalize_activations);
  if (!(scaling_factor > 0) || !std::isfinite(scaling_factor))
    fail("{}: norm scaling factor {} must be finite and positive", name_of(*this), scaling_factor);
  W_enc = W_enc * scaling_factor;
  W_dec = W_dec / scaling_factor;
  b_dec = b_dec / scaling_factor;
  normalize_activations = "none";
  cfg["folded_norm_scaling_factor"] = scaling_factor;
}

Sae Sae::load(const fs::path& dir, const std::string& format) { return load_sae(dir, format).sae; }

Sae Sae::to(const torch::Device& device) const {
  Sae out = *this;
  for (torch::Tensor* t : {&out.W_enc, &out.W_dec, &out.b_enc, &out.b_dec, &out.threshold})
    if (t->defined()) *t = t->to(device);
  return out;
}

void Sae::save(const fs::path& dir) const {
  fs::create_directories(dir);
  nlohmann::json out = cfg;
  out["architecture"] = architecture;
  out["d_in"] = d_in();
  out["d_sae"] = d_sae();
  if (architecture == "topk") {
    out["k"] = k;
  } else {
    out.erase("k");
  }
  out["apply_b_dec_to_input"] = apply_b_dec_to_input;
  out["normalize_activations"] = normalize_activations;
  std::map<std::string, torch::Tensor> tensors = {
      {"W_enc", W_enc.to(torch::kFloat32).contiguous()}, {"W_dec", W_dec.to(torch::kFloat32).contiguous()},
      {"b_enc", b_enc.to(torch::kFloat32).contiguous()}, {"b_dec", b_dec.to(torch::kFloat32).contiguous()}};
  if (architecture == "jumprelu") tensors.emplace("threshold", threshold.to(torch::kFloat32).contiguous());
  io::save_safetensors(dir / "sae_weights.safetensors", tensors);
  atomic_write_text(dir / "cfg.json", out.dump(2));
}

}  // namespace strata::sae
