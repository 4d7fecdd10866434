#include "io/store_meta.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>

#include "core/error.hpp"
#include "core/read_bounded.hpp"

namespace strata::io {
namespace {

using nlohmann::json;

bool is_int64(const json& v) {
  return v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX));
}

// A non-negative 64-bit integer at most `hi`, or nullopt when absent. Floats (1e300) and integers that
// do not fit are errors, never conversions.
std::optional<int64_t> count_field(const json& doc, const char* key, const std::string& path, int64_t hi = INT64_MAX) {
  const auto it = doc.find(key);
  if (it == doc.end()) return std::nullopt;
  if (!is_int64(*it) || it->get<int64_t>() < 0)
    fail("{}: \"{}\" = {} is not a non-negative 64-bit integer", path, key, shown(*it));
  if (it->get<int64_t>() > hi) fail("{}: \"{}\" = {} is out of range [0, {}]", path, key, shown(*it), hi);
  return it->get<int64_t>();
}

std::optional<std::string> string_field(const json& doc, const char* key, const std::string& path) {
  const auto it = doc.find(key);
  if (it == doc.end()) return std::nullopt;
  if (!it->is_string()) fail("{}: \"{}\" = {} is not a string", path, key, shown(*it));
  return it->get<std::string>();
}

}  // namespace

StoreMeta parse_store_meta(std::string_view text, const std::string& path) {
  if (text.size() > kMaxStoreMetaBytes)
    fail("{}: {} bytes; an activation store meta.json is at most {} bytes", path, text.size(), kMaxStoreMetaBytes);
  StoreMeta meta;
  meta.doc = json::parse(text.begin(), text.end(), nullptr, false);
  if (meta.doc.is_discarded() || !meta.doc.is_object() || !meta.doc.contains("shards") ||
      !meta.doc["shards"].is_array())
    fail("{} is not a valid activation store meta.json (no \"shards\" list)", path);
  const json& doc = meta.doc;
  const auto& shard_names = doc["shards"];
  if (shard_names.empty()) fail("{}: \"shards\" is empty; the store holds no rows", path);
  if (shard_names.size() > kMaxStoreShards)
    fail("{}: \"shards\" lists {} files; the limit is {}", path, shard_names.size(), kMaxStoreShards);
  for (size_t i = 0; i < shard_names.size(); ++i) {
    // A shard name is a plain file name beside the meta.json: never a path out of the store's directory.
    const auto& name = shard_names[i];
    const std::string file = name.is_string() ? name.get<std::string>() : std::string();
    const bool control =
        std::any_of(file.begin(), file.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20; });
    if (file.empty() || file == "." || file == ".." || file.find('/') != std::string::npos || control ||
        file.size() > 255)
      fail("{}: shards[{}] = {} is not a plain file name beside the meta.json", path, i, shown(name));
    meta.shards.push_back(file);
  }
  meta.rows = count_field(doc, "rows", path);
  meta.dim = count_field(doc, "dim", path);
  if (doc.contains("shard_rows")) {
    const auto& listed = doc["shard_rows"];
    if (!listed.is_array() || listed.size() != meta.shards.size())
      fail("{}: \"shard_rows\" must list one row count per shard ({} shards)", path, meta.shards.size());
    std::vector<int64_t> counts;
    for (size_t i = 0; i < listed.size(); ++i) {
      if (!is_int64(listed[i]) || listed[i].get<int64_t>() < 0)
        fail("{}: shard_rows[{}] = {} is not a non-negative 64-bit integer", path, i, shown(listed[i]));
      counts.push_back(listed[i].get<int64_t>());
    }
    meta.shard_rows = std::move(counts);
  }
  meta.store_dtype = string_field(doc, "store_dtype", path);
  if (meta.store_dtype && *meta.store_dtype != "f32" && *meta.store_dtype != "f16" && *meta.store_dtype != "bf16")
    fail("{}: \"store_dtype\" = {} is not f32, f16 or bf16", path, shown(doc["store_dtype"]));
  meta.model = string_field(doc, "model", path);
  meta.layer = count_field(doc, "layer", path, kMaxStoreLayer);
  meta.n_layers = count_field(doc, "n_layers", path, kMaxStoreLayer);
  meta.hidden_size = count_field(doc, "hidden_size", path);
  meta.nonfinite_count = count_field(doc, "nonfinite_count", path);
  meta.nonfinite_rows = count_field(doc, "nonfinite_rows", path);
  for (const char* key : {"mean", "std"}) {
    if (!doc.contains(key)) continue;
    const auto& values = doc[key];
    if (!values.is_array() || (meta.dim && values.size() != static_cast<uint64_t>(*meta.dim)) ||
        !std::all_of(values.begin(), values.end(), [](const json& v) { return v.is_number(); }))
      fail("{}: \"{}\" must list one number per dimension{}", path, key,
           meta.dim ? fmt::format(" (dim = {})", *meta.dim) : std::string());
  }
  return meta;
}

void check_store_meta_counts(const StoreMeta& meta, const std::string& path, const std::vector<int64_t>& shard_rows,
                             int64_t total_rows, int64_t dim) {
  if (meta.rows && *meta.rows != total_rows)
    fail("{}: \"rows\" = {} but its shards hold {} rows; the store is truncated or was edited", path, *meta.rows,
         total_rows);
  if (meta.dim && *meta.dim != dim) fail("{}: \"dim\" = {} but its shards are {} wide", path, *meta.dim, dim);
  if (meta.shard_rows) {
    const auto& listed = *meta.shard_rows;
    if (listed.size() != shard_rows.size())
      fail("{}: \"shard_rows\" must list one row count per shard ({} shards)", path, shard_rows.size());
    for (size_t i = 0; i < shard_rows.size(); ++i)
      if (listed[i] != shard_rows[i])
        fail("{}: shard_rows[{}] = {} but shard {} holds {} rows", path, i, listed[i], i, shard_rows[i]);
  }
}

}  // namespace strata::io
