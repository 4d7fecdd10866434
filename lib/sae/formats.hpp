// Published SAEs: the on-disk formats strata reads, each mapped to one sae::Sae with explicit
// pre-processing (README "Using published SAEs", docs/sae.md).
//
//   saelens   <dir>/cfg.json + <dir>/sae_weights.safetensors (strata's own SAEs are this format).
//             Architectures standard, topk, jumprelu; apply_b_dec_to_input; normalize_activations
//             (none, expected_average_only_in, constant_norm_rescale, layer_norm; legacy booleans);
//             pre-6.0 field names (activation_fn_str + activation_fn_kwargs.k, hook_point).
//   sparsify  <dir>/cfg.json + <dir>/sae.safetensors (EleutherAI sparsify / sae, one directory per
//             hookpoint): encoder.weight [M, d_in], encoder.bias [M], W_dec [M, d_in], b_dec [d_in];
//             f = TopK_k(ReLU(encoder(x - b_dec))), x_hat = f @ W_dec + b_dec.
// Weights in f16 / bf16 / f64 are converted to f32. A cfg field or tensor that changes the encoding and
// that strata does not implement (gated, tanh-relu, transcoders, skip connections, hook_z reshaping,
// fine-tuning scaling factors, groupmax, ...) is an error naming the file and the field.
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "sae/cfg.hpp"
#include "sae/sae.hpp"

namespace strata::sae {

struct LoadedSae {
  Sae sae;
  std::string format;                     // "saelens" or "sparsify"
  std::filesystem::path dir;
  std::optional<std::string> hook_name;   // as published (SAELens hook_name, sparsify hookpoint dir name)
  std::vector<std::filesystem::path> files;  // cfg.json and the weights file
};

// "saelens" or "sparsify" from the files present in `dir`; an error listing what it found otherwise.
std::string detect_format(const std::filesystem::path& dir);

// Loads `dir` in `format` ("auto", "saelens" or "sparsify").
LoadedSae load_sae(const std::filesystem::path& dir, const std::string& format = "auto");

// Writes `sae` in `format`: "saelens" (Sae::save) or "sparsify" (cfg.json + sae.safetensors; only an SAE
// sparsify can express: topk, or standard as top-d_sae, with b_dec subtracted and no normalisation).
void save_sae(const Sae& sae, const std::filesystem::path& dir, const std::string& format,
              const std::string& hook_name = "");

// SHA-256 over the SAE's files: sha256 of "<file name>  <sha256 of the file>\n" for each, in order.
std::string sae_sha256(const LoadedSae& sae);

// A local directory, or hf://org/name[@revision]/sub/dir from the offline Hugging Face cache (resolved
// like checkpoints, io::resolve_hub_path). Throws naming what it looked for.
std::filesystem::path resolve_sae_source(const std::string& spec);

// layer_of_hook (a published hook name -> strata's layer) is declared in sae/cfg.hpp.

// Checks that a published SAE's hook (when it has one) is strata layer `layer`; the error names both.
void check_hook_layer(const LoadedSae& sae, int64_t layer, const std::string& cell);

}  // namespace strata::sae
