// config.json -> ModelSpec on arbitrary bytes, then the parameter table the spec implies (one entry per
// layer and projection): depths, widths, heads and vocabularies must be bounded before that loop.
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "models/spec.hpp"
#include "models/transformer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto config = nlohmann::json::parse(data, data + size, nullptr, false);
  if (config.is_discarded()) return 0;
  try {
    const auto spec = strata::models::parse_config(config, "config.json");
    strata::models::Transformer::parameter_shapes(spec);
  } catch (const strata::Error&) {
  }
  return 0;
}
