// Internal: how one architecture family is declared. Each family (arch_<type>.cpp) is a small table:
// its config.json keys with HF defaults (parse) and the tensor names of its checkpoints (WeightNames).
// The forward pass (transformer.cpp) and blocks (blocks.hpp) are shared by all of them.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "models/spec.hpp"

namespace strata::models::detail {

enum class QkvLayout {
  FusedBlocks,              // one [q | k | v] projection, each block heads*head_dim wide (GPT-2 c_attn)
  FusedInterleavedPerHead,  // one projection viewed [.., heads, 3*head_dim]: per head q, k, v (NeoX)
  Separate,                 // q_proj, k_proj, v_proj (Phi, Gemma; k/v may have fewer heads)
};

struct WeightNames {
  std::string embed, position_embed;  // position_embed "" unless learned positions
  std::string layer_prefix;           // fmt pattern with the block index, e.g. "h.{}."
  std::string ln1, ln2;               // norm modules inside a block; ln2 "" for a shared-norm parallel block
  QkvLayout qkv_layout = QkvLayout::Separate;
  std::string qkv, q, k, v, attn_out; // attention modules inside a block
  std::string mlp_in, mlp_gate, mlp_up, mlp_out;  // Plain: in/out; Gated: gate/up/out
  std::string final_norm, lm_head;
  bool conv1d = false;                       // weights stored [in, out] (GPT-2 Conv1D), else nn.Linear [out, in]
  std::vector<std::string> strip_prefixes;   // name variants accepted on load, e.g. "transformer."
  std::vector<std::string> ignored_suffixes; // buffers real files carry that are not parameters
};

class ConfigReader;

struct Architecture {
  const char* model_type;
  // Fills `spec` from config.json with HF's defaults (the config class's __init__ defaults).
  void (*parse)(const ConfigReader& config, ModelSpec& spec);
  WeightNames names;
};

const std::vector<const Architecture*>& architectures();
const Architecture& architecture_for(const std::string& model_type, const std::string& source_for_errors);

// Typed access to config.json with defaults; a null value counts as absent (as in HF's config classes).
class ConfigReader {
 public:
  ConfigReader(const nlohmann::json& config, std::string source) : config_(config), source_(std::move(source)) {}
  const std::string& source() const { return source_; }
  bool has(const std::string& key) const;
  int64_t integer(const std::string& key, int64_t fallback) const;
  int64_t integer(const std::string& key) const;  // required
  double number(const std::string& key, double fallback) const;
  bool boolean(const std::string& key, bool fallback) const;
  std::string string(const std::string& key, const std::string& fallback) const;
  // An HF activation name (ACT2FN key) to the activation; unsupported names are an error.
  Activation activation(const std::string& key, const std::string& fallback) const;
  // Errors if `key` holds anything but null/absent (options strata does not implement, e.g. rope_scaling).
  void require_absent(const std::string& key, const std::string& why) const;

 private:
  const nlohmann::json* find(const std::string& key) const;
  const nlohmann::json& config_;
  std::string source_;
};

extern const Architecture kGpt2;
extern const Architecture kGptNeox;
extern const Architecture kPhi;
extern const Architecture kGemma;

}  // namespace strata::models::detail
