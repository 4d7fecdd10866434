// Per-step seeds derived from the experiment's master seed by a stable hash, so that every (step, model,
// layer) gets its own reproducible stream, independent of run order, platform and which other steps ran.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace strata::harness {

// strata::derive(master, step, model, layer) (core/random.hpp): SHA-256 of
// "strata-seed-v1\n<master>\n<step>\n<model>\n<layer>", first 8 bytes,
// masked to 63 bits so the value survives every signed-64-bit consumer. model "" and layer -1 mean
// "not specific to a model / layer". Changing this function changes every recorded seed: never do.
uint64_t derive_seed(uint64_t master, std::string_view step, std::string_view model = "", int64_t layer = -1);

// The manifest key of a derived seed: "<step>/<model>/<layer>" ("-" for an absent model or layer).
std::string seed_key(std::string_view step, std::string_view model = "", int64_t layer = -1);

}  // namespace strata::harness
