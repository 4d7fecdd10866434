// An SAE's cfg.json (sae/cfg.hpp) on arbitrary bytes, through the SAELens parser (which also reads
// strata's own SAEs) and the sparsify parser; the hook name it yields (and the raw input) through
// layer_of_hook. Whatever a parser accepts must be within the limits that size the weights.
#include "core/error.hpp"
#include "sae/cfg.hpp"

namespace {

void check(const strata::sae::SaeCfg& cfg) {
  using namespace strata::sae;
  if (cfg.architecture != "standard" && cfg.architecture != "topk" && cfg.architecture != "jumprelu") __builtin_trap();
  if (cfg.d_in && (*cfg.d_in < 1 || *cfg.d_in > kMaxDIn)) __builtin_trap();
  if (cfg.d_sae && (*cfg.d_sae < 1 || *cfg.d_sae > kMaxDSae)) __builtin_trap();
  if (cfg.architecture == "topk" && (!cfg.k || *cfg.k < 1 || *cfg.k > cfg.d_sae.value_or(kMaxDSae))) __builtin_trap();
  if (cfg.normalize_activations != "none" && cfg.normalize_activations != "expected_average_only_in" &&
      cfg.normalize_activations != "constant_norm_rescale" && cfg.normalize_activations != "layer_norm")
    __builtin_trap();
  if (cfg.hook_name) {
    try {
      const auto layer = layer_of_hook(*cfg.hook_name);
      if (layer && (*layer < 0 || *layer > 1000001)) __builtin_trap();
    } catch (const strata::Error&) {
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    check(strata::sae::parse_saelens_cfg(text, "saelens/cfg.json"));
  } catch (const strata::Error&) {
  }
  try {
    const auto cfg = strata::sae::parse_sparsify_cfg(text, "sparsify/cfg.json");
    if (!cfg.d_in || !cfg.d_sae || *cfg.d_in * *cfg.d_sae > strata::sae::kMaxElements) __builtin_trap();
    check(cfg);
  } catch (const strata::Error&) {
  }
  try {
    strata::sae::layer_of_hook(std::string(text));
  } catch (const strata::Error&) {
  }
  return 0;
}
