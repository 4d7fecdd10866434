// An activation store's meta.json (io/store_meta.hpp) on arbitrary bytes, then the count check against
// shards that agree with it and shards that do not. Accepted shard names must be plain file names.
#include "core/error.hpp"
#include "io/store_meta.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = "m_layer1_activations.meta.json";
  try {
    const auto meta = strata::io::parse_store_meta(std::string_view(reinterpret_cast<const char*>(data), size), path);
    if (meta.shards.empty() || meta.shards.size() > strata::io::kMaxStoreShards) __builtin_trap();
    for (const auto& file : meta.shards)
      if (file.empty() || file == "." || file == ".." || file.find('/') != std::string::npos ||
          file.find('\0') != std::string::npos)
        __builtin_trap();
    if (meta.shard_rows && meta.shard_rows->size() != meta.shards.size()) __builtin_trap();
    std::vector<int64_t> rows = meta.shard_rows.value_or(std::vector<int64_t>(meta.shards.size(), 1));
    int64_t total = 0;
    for (int64_t r : rows) {
      if (r < 0) __builtin_trap();
      if (__builtin_add_overflow(total, r, &total)) total = 0;  // the shards of a real store never sum past 2^63
    }
    try {
      strata::io::check_store_meta_counts(meta, path, rows, total, meta.dim.value_or(1));
    } catch (const strata::Error&) {
    }
    rows.back() += rows.back() == INT64_MAX ? -1 : 1;  // a shard that disagrees: must be an error when shard_rows is listed
    bool failed = false;
    try {
      strata::io::check_store_meta_counts(meta, path, rows, total, meta.dim.value_or(1));
    } catch (const strata::Error&) {
      failed = true;
    }
    if (meta.shard_rows && !failed) __builtin_trap();
  } catch (const strata::Error&) {
  }
  return 0;
}
