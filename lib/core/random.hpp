// Platform-independent random draws: std:: distributions differ between standard libraries, so every
// seeded draw that must reproduce bit for bit (batch order, permutation tests) goes through these.
//
// Seeds: every seed in strata comes from derive(seed, tag...), the one derivation (docs/harness.md).
#pragma once
#include <fmt/format.h>

#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/hash.hpp"

namespace strata {

namespace detail {
inline void append_seed_tag(std::string& material, std::string_view tag) {
  material += '\n';
  material += tag;
}
template <class Integer>
  requires std::is_integral_v<Integer>
inline void append_seed_tag(std::string& material, Integer tag) {
  material += '\n';
  material += fmt::format("{}", tag);
}
}  // namespace detail

// The one seed derivation: the first 8 bytes (big-endian) of SHA-256("strata-seed-v1\n<seed>\n<tag1>\n<tag2>..."),
// masked to 63 bits so the value survives every signed-64-bit consumer. Tags are strings or integers
// (printed in decimal). Independent streams for independent purposes: give each purpose its own string
// tag ("transfer/null", "zoo/member", ...). harness::derive_seed(master, step, model, layer) is
// derive(master, step, model, layer), so the seeds recorded in manifests are these. Cost ~1 us per call:
// derive once per stream, never per draw.
template <class... Tags>
uint64_t derive(uint64_t seed, const Tags&... tags) {
  std::string material = fmt::format("strata-seed-v1\n{}", seed);
  (detail::append_seed_tag(material, tags), ...);
  const std::string hex = sha256_hex(material);
  return std::stoull(hex.substr(0, 16), nullptr, 16) & 0x7fffffffffffffffULL;
}

// A uniform double in [0, 1) determined by (seed, tags): 53 of derive()'s bits.
template <class... Tags>
double derive_unit(uint64_t seed, const Tags&... tags) {
  return static_cast<double>(derive(seed, tags...) >> 10) * 0x1.0p-53;
}

// Uniform integer in [0, n) without modulo bias (Lemire 2019: one 64x64->128 multiply, rarely two draws).
inline uint64_t uniform_below(std::mt19937_64& rng, uint64_t n) {
  unsigned __int128 m = static_cast<unsigned __int128>(rng()) * n;
  uint64_t low = static_cast<uint64_t>(m);
  if (low < n) {
    const uint64_t threshold = (0 - n) % n;
    while (low < threshold) {
      m = static_cast<unsigned __int128>(rng()) * n;
      low = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

// Fisher-Yates, from the back.
template <class T>
void shuffle(std::vector<T>& v, std::mt19937_64& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[uniform_below(rng, i)]);
}

}  // namespace strata
