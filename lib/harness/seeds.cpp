#include "harness/seeds.hpp"

#include <fmt/format.h>

#include "core/hash.hpp"

namespace strata::harness {

uint64_t derive_seed(uint64_t master, std::string_view step, std::string_view model, int64_t layer) {
  std::string material = fmt::format("strata-seed-v1\n{}\n{}\n{}\n{}", master, step, model, layer);
  std::string hex = sha256_hex(material);
  uint64_t value = std::stoull(hex.substr(0, 16), nullptr, 16);
  return value & 0x7fffffffffffffffULL;
}

std::string seed_key(std::string_view step, std::string_view model, int64_t layer) {
  return fmt::format("{}/{}/{}", step, model.empty() ? "-" : model, layer < 0 ? std::string("-") : std::to_string(layer));
}

}  // namespace strata::harness
