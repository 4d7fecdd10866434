#include "harness/seeds.hpp"

#include <fmt/format.h>

#include "core/random.hpp"

namespace strata::harness {

uint64_t derive_seed(uint64_t master, std::string_view step, std::string_view model, int64_t layer) {
  return derive(master, step, model, layer);
}

std::string seed_key(std::string_view step, std::string_view model, int64_t layer) {
  return fmt::format("{}/{}/{}", step, model.empty() ? "-" : model, layer < 0 ? std::string("-") : std::to_string(layer));
}

}  // namespace strata::harness
