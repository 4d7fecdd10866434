#include "io/safetensors_header.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.hpp"
#include "core/read_bounded.hpp"

namespace strata::io {
namespace {

struct DTypeRow {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeRow kDTypes[] = {
    {DType::F64, "F64", 8}, {DType::F32, "F32", 4}, {DType::F16, "F16", 2}, {DType::BF16, "BF16", 2},
    {DType::I64, "I64", 8}, {DType::I32, "I32", 4}, {DType::I16, "I16", 2}, {DType::I8, "I8", 1},
    {DType::U8, "U8", 1},   {DType::BOOL, "BOOL", 1},
};

const DTypeRow& row(DType dtype) {
  for (const auto& r : kDTypes)
    if (r.dtype == dtype) return r;
  fail("internal: unknown dtype");
}

// A name from the file for an error message: in single quotes, cut to 200 bytes at a UTF-8 boundary;
// as an escaped JSON string when it holds control characters (a newline would forge a second line).
std::string named(const std::string& name) {
  if (std::any_of(name.begin(), name.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20; }))
    return shown(nlohmann::json(name));
  if (name.size() <= 200) return "'" + name + "'";
  size_t cut = 197;
  while (cut > 0 && (static_cast<unsigned char>(name[cut]) & 0xC0) == 0x80) --cut;
  return "'" + name.substr(0, cut) + "...'";
}

// Parses `text`, noting the first key that repeats within one object at depth 1 (the safetensors header)
// or at depth 2 under `nested` (the index's weight_map): JSON parsers keep the last of duplicate keys
// silently, and two readers could then disagree on which tensor a file holds.
nlohmann::json parse_unique_keys(std::string_view text, const std::string& path, const char* what,
                                 const char* nested, std::string* duplicate) {
  std::set<std::string> top, inner;
  std::string current;
  auto callback = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    if (event != nlohmann::json::parse_event_t::key || !duplicate->empty()) return true;
    const std::string& key = parsed.get_ref<const std::string&>();
    if (depth == 1) {
      current = key;
      if (!top.insert(key).second) *duplicate = key;
    } else if (depth == 2 && nested && current == nested) {
      if (!inner.insert(key).second) *duplicate = key;
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), callback);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: {}not valid JSON ({})", path, what, e.what());
  }
}

}  // namespace

size_t dtype_size(DType dtype) { return row(dtype).size; }
const char* dtype_name(DType dtype) { return row(dtype).name; }
std::optional<DType> parse_dtype_name(std::string_view name) {
  for (const auto& r : kDTypes)
    if (name == r.name) return r.dtype;
  return std::nullopt;
}

SafetensorsHeader parse_safetensors_header(std::string_view prefix, uint64_t file_size, const std::string& path) {
  if (prefix.size() > file_size)
    fail("{}: internal: {} leading bytes given for a file of {} bytes", path, prefix.size(), file_size);
  if (file_size < 8)
    fail("{}: truncated safetensors file ({} bytes, the header length alone needs 8)", path, file_size);
  if (prefix.size() < 8) fail("{}: internal: the first 8 bytes of the file were not read", path);
  const auto* bytes = reinterpret_cast<const uint8_t*>(prefix.data());
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
  // A pickle renamed to .safetensors would otherwise read as an absurd header length. torch.save writes
  // a zip archive (PK\3\4) holding a pickle, or (before torch 1.6) a bare pickle whose first byte is the
  // PROTO opcode 0x80 followed by protocol 2..5. Only a file that is not valid safetensors is judged by
  // these bytes (a real header of 640 bytes also starts 0x80 0x02, but its JSON follows at byte 8).
  const bool valid_start = header_len <= kMaxSafetensorsHeaderBytes && header_len <= file_size - 8 &&
                           prefix.size() > 8 && bytes[8] == '{';
  const bool zip = bytes[0] == 'P' && bytes[1] == 'K' && bytes[2] == 3 && bytes[3] == 4;
  const bool bare_pickle = bytes[0] == 0x80 && bytes[1] >= 2 && bytes[1] <= 5;
  if (!valid_start && (zip || bare_pickle))
    fail("{}: this is a {} (the PyTorch torch.save format), not safetensors. strata never loads pickles, "
         "because loading one runs arbitrary code from the file; convert it to safetensors once in a trusted "
         "Python (save_pretrained(out_dir, safe_serialization=True))",
         path, zip ? "zip archive holding a pickle" : "pickle");
  if (header_len > kMaxSafetensorsHeaderBytes)
    fail("{}: header length {} exceeds the {} byte cap; the file is corrupt or not safetensors", path, header_len,
         kMaxSafetensorsHeaderBytes);
  if (header_len > file_size - 8)
    fail("{}: header length {} runs past the end of the file ({} bytes); the file is truncated or corrupt", path,
         header_len, file_size);
  if (header_len > prefix.size() - 8)
    fail("{}: internal: only {} of the header's {} bytes were read", path, prefix.size() - 8, header_len);

  SafetensorsHeader out;
  out.header_bytes = header_len;
  out.data_bytes = file_size - 8 - header_len;
  std::string duplicate;
  const nlohmann::json header = parse_unique_keys(prefix.substr(8, header_len), path, "header is ", nullptr, &duplicate);
  if (!header.is_object()) fail("{}: header is not a JSON object", path);
  if (!duplicate.empty())
    fail("{}: tensor {} appears twice in the header; the file is corrupt or ambiguous", path, named(duplicate));

  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (it->is_object())
        for (auto m = it->begin(); m != it->end(); ++m)
          if (m->is_string()) out.metadata[m.key()] = m->get<std::string>();
      continue;
    }
    const auto& entry = *it;
    const std::string tname = named(it.key());
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
      fail("{}: tensor {} lacks dtype, shape or data_offsets", path, tname);
    TensorEntry te;
    te.name = it.key();
    TensorInfo& info = te.info;
    const std::string dtype = entry["dtype"].is_string() ? entry["dtype"].get<std::string>() : shown(entry["dtype"]);
    const auto parsed = parse_dtype_name(dtype);
    if (!parsed) fail("{}: tensor {} has unsupported dtype {}", path, tname, named(dtype));
    info.dtype = *parsed;
    const auto& shape = entry["shape"];
    if (!shape.is_array()) fail("{}: tensor {} shape {} is not an array", path, tname, shown(shape));
    if (shape.size() > kMaxTensorRank)
      fail("{}: tensor {} has {} dimensions; the limit is {}", path, tname, shape.size(), kMaxTensorRank);
    uint64_t numel = 1;
    for (const auto& dim : shape) {
      if (!dim.is_number_unsigned())
        fail("{}: tensor {} has a negative or non-integer dimension {}", path, tname, shown(dim));
      const uint64_t d = dim.get<uint64_t>();
      if (d > kMaxTensorDim || (d && numel > kMaxTensorElements / d))
        fail("{}: tensor {} shape {} is implausibly large (limit {} elements)", path, tname, shown(shape),
             kMaxTensorElements);
      numel *= d;
      info.shape.push_back(static_cast<int64_t>(d));
    }
    const auto& off = entry["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail("{}: tensor {} data_offsets {} must be two non-negative integers", path, tname, shown(off));
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (end < begin) fail("{}: tensor {} data_offsets [{}, {}] are reversed", path, tname, begin, end);
    if (end > out.data_bytes)
      fail("{}: tensor {} data [{}, {}) lies past the end of the data section ({} bytes); the file is truncated",
           path, tname, begin, end, out.data_bytes);
    const uint64_t need = numel * dtype_size(info.dtype);  // <= 2^46 * 8: no overflow
    if (end - begin != need)
      fail("{}: tensor {} is {} bytes but dtype {} and shape {} need {}", path, tname, end - begin, dtype,
           shown(shape), need);
    info.begin = static_cast<size_t>(begin);
    info.end = static_cast<size_t>(end);
    if (end > begin) ranges.emplace_back(begin, end);
    out.tensors.push_back(std::move(te));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second)
      fail("{}: tensor data ranges overlap at byte {}; the file is corrupt", path, ranges[i].first);
  // nlohmann keeps object keys sorted, so the tensors already are; stated, not assumed.
  std::sort(out.tensors.begin(), out.tensors.end(),
            [](const TensorEntry& a, const TensorEntry& b) { return a.name < b.name; });
  return out;
}

SafetensorsIndex parse_safetensors_index(std::string_view text, const std::string& path) {
  if (text.size() > kMaxIndexBytes)
    fail("{}: {} bytes; an index is at most {} bytes", path, text.size(), kMaxIndexBytes);
  std::string duplicate;
  const nlohmann::json doc = parse_unique_keys(text, path, "", "weight_map", &duplicate);
  if (!doc.is_object() || !doc.contains("weight_map") || !doc["weight_map"].is_object())
    fail("{}: lacks the 'weight_map' object {{tensor name: shard file}}", path);
  if (!duplicate.empty())
    fail("{}: key {} appears twice (at the top level or in weight_map); the index is ambiguous", path,
         named(duplicate));
  const auto& map = doc["weight_map"];
  if (map.empty()) fail("{}: weight_map is empty", path);
  if (map.size() > kMaxIndexEntries)
    fail("{}: weight_map has {} entries; the limit is {}", path, map.size(), kMaxIndexEntries);
  SafetensorsIndex out;
  std::set<std::string> files;
  for (auto it = map.begin(); it != map.end(); ++it) {
    if (!it->is_string()) fail("{}: weight_map[{}] = {} is not a file name", path, named(it.key()), shown(*it));
    const std::string& file = it->get_ref<const std::string&>();
    // '/' or a control character anywhere, or "..": not a plain name (a loop: GCC 12 misjudges find() here).
    const bool bad_char = std::any_of(file.begin(), file.end(), [](char c) {
      return c == '/' || static_cast<unsigned char>(c) < 0x20;
    });
    if (file.empty() || file == "." || bad_char || file.find("..") != std::string::npos || file.size() > 255)
      fail("{}: weight_map[{}] = {} is not a plain file name in the checkpoint directory", path, named(it.key()),
           named(file));
    out.weight_map.emplace_back(it.key(), file);
    files.insert(file);
  }
  out.files.assign(files.begin(), files.end());
  return out;
}

}  // namespace strata::io
