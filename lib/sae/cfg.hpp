// The cfg.json of a published or strata-trained SAE, parsed and validated without LibTorch so that a
// libFuzzer target (fuzz/fuzz_sae_cfg.cpp) can reach it. sae/formats.cpp reads cfg.json only through
// these parsers: one per format. strata's own SAEs are written in the SAELens layout (Sae::save) and
// are read by parse_saelens_cfg.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace strata::sae {

// Sane limits on what a published file may claim (the largest public SAEs are ~2^20 wide on 2^14-dim
// streams); anything above is an error before any allocation.
inline constexpr int64_t kMaxDIn = int64_t(1) << 17;
inline constexpr int64_t kMaxDSae = int64_t(1) << 24;
inline constexpr int64_t kMaxElements = int64_t(1) << 32;
inline constexpr uint64_t kMaxCfgBytes = 16ull << 20;
inline constexpr size_t kMaxHookNameBytes = 256;

// Every field that changes the encoding, as the format states it.
struct SaeCfg {
  std::string architecture = "standard";  // "standard", "topk" or "jumprelu"
  // SAELens: as stated, when stated (the loader checks them against W_enc); sparsify: always set.
  std::optional<int64_t> d_in, d_sae;
  // topk only: in [1, kMaxDSae] and <= d_sae when d_sae is stated (SAELens: the loader checks it against
  // W_enc's d_sae).
  std::optional<int64_t> k;
  bool apply_b_dec_to_input = true;
  std::string normalize_activations = "none";  // none, expected_average_only_in, constant_norm_rescale, layer_norm
  std::optional<std::string> hook_name;       // SAELens hook_name / hook_point / meta.hook_name
  nlohmann::json doc = nlohmann::json::object();  // the whole cfg.json
};

// Throw strata::Error naming `path` and the field for anything malformed, out of range or unsupported
// (gated, tanh-relu, transcoders, skip connections, hook_z reshaping, fine-tuning scaling factors, ...).
SaeCfg parse_saelens_cfg(std::string_view text, const std::string& path);
SaeCfg parse_sparsify_cfg(std::string_view text, const std::string& path);

// d_in x d_sae within the limits above; the error names `path`.
void check_sae_dims(int64_t d_in, int64_t d_sae, const std::string& path);

// strata's layer (the residual stream after block L; 0 = embeddings) of a published hook:
//   blocks.{N}.hook_resid_post -> N+1, blocks.{N}.hook_resid_pre -> N (TransformerLens / SAELens);
//   [...]layers.{N} or h.{N} (a sparsify hookpoint: the output of block N) -> N+1.
// Returns nullopt for a name that is not one of these; throws for a hook that is clearly not the
// residual stream (e.g. blocks.3.hook_mlp_out, layers.3.mlp), a name over kMaxHookNameBytes, or a
// block number over 10^6.
std::optional<int64_t> layer_of_hook(const std::string& hook);

}  // namespace strata::sae
