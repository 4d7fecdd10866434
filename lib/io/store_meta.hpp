// An activation store's <base>.meta.json (io/activation_store.hpp), parsed and validated without
// LibTorch so that a libFuzzer target (fuzz/fuzz_store_meta.cpp) can reach it. ActivationStore::open
// reads meta.json only through parse_store_meta and check_store_meta_counts.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace strata::io {

inline constexpr uint64_t kMaxStoreMetaBytes = 64ull << 20;  // mean/std of a 2^20-wide store fit easily
inline constexpr size_t kMaxStoreShards = 1u << 16;
inline constexpr int64_t kMaxStoreLayer = 1 << 16;

// The fields strata reads from a meta.json, each checked for type and range; absent fields are nullopt.
// `doc` is the whole document (the capture's provenance and mask policy are passed on as they are).
struct StoreMeta {
  std::vector<std::string> shards;                 // plain file names beside the meta.json, at least one
  std::optional<int64_t> rows, dim;                // >= 0
  std::optional<std::vector<int64_t>> shard_rows;  // one count >= 0 per shard
  std::optional<std::string> store_dtype;          // "f32", "f16" or "bf16"
  std::optional<std::string> model;
  std::optional<int64_t> layer, n_layers;          // [0, kMaxStoreLayer]
  std::optional<int64_t> hidden_size;              // >= 0
  std::optional<int64_t> nonfinite_count, nonfinite_rows;  // >= 0
  nlohmann::json doc = nlohmann::json::object();
};

// Throws strata::Error naming `path`, the field and its value.
StoreMeta parse_store_meta(std::string_view text, const std::string& path);

// The counts meta.json states (rows, dim, shard_rows) against those of the shards themselves, whose
// sizes the safetensors reader has checked against the file sizes.
void check_store_meta_counts(const StoreMeta& meta, const std::string& path, const std::vector<int64_t>& shard_rows,
                             int64_t total_rows, int64_t dim);

}  // namespace strata::io
