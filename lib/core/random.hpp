// Platform-independent random draws: std:: distributions differ between standard libraries, so every
// seeded draw that must reproduce bit for bit (batch order, permutation tests) goes through these.
#pragma once
#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace strata {

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
