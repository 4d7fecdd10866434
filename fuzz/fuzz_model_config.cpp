// config.json -> ModelSpec on arbitrary bytes: depths, widths, heads and vocabularies must be bounded (and
// fit their types) before anything loops over them.
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "models/spec.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto config = nlohmann::json::parse(data, data + size, nullptr, false);
  if (config.is_discarded()) return 0;
  try {
    const auto spec = strata::models::parse_config(config, "config.json");
    // What the loader does next: one block per layer, tables of vocab x hidden.
    if (spec.n_layers > 1024 || spec.hidden_size * spec.vocab_size > (int64_t(1) << 39)) __builtin_trap();
  } catch (const strata::Error&) {
  }
  return 0;
}
