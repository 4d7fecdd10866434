// The parts of a safetensors file that come from untrusted bytes, parsed and validated without LibTorch
// (so that the libFuzzer targets in fuzz/ can compile them): the header of one file, and the
// model.safetensors.index.json of a sharded checkpoint. io/safetensors.hpp and io/checkpoint.hpp read
// files through these functions; there is no second parser.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace strata::io {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);
std::optional<DType> parse_dtype_name(std::string_view name);  // "F32" -> F32; nullopt for others

struct TensorInfo {
  DType dtype;
  std::vector<int64_t> shape;
  size_t begin = 0, end = 0;  // byte offsets relative to the data section
};

struct TensorEntry {
  std::string name;
  TensorInfo info;
};

// Limits on what a header may claim, checked before anything is sized from it.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;  // the format's own cap is 100 MB
inline constexpr size_t kMaxTensorRank = 16;
inline constexpr uint64_t kMaxTensorDim = 1ull << 40;
inline constexpr uint64_t kMaxTensorElements = 1ull << 46;

struct SafetensorsHeader {
  uint64_t header_bytes = 0;  // the JSON header's length; the data section starts at 8 + header_bytes
  uint64_t data_bytes = 0;    // file_size - 8 - header_bytes
  std::vector<TensorEntry> tensors;  // sorted by name, names unique
  std::map<std::string, std::string> metadata;  // "__metadata__" (string values only)
};

// Parses and validates the header of a safetensors file of `file_size` bytes whose leading bytes are
// `prefix` (the whole file, or at least its 8-byte length and JSON header). Every tensor's dtype, shape
// and data offsets are checked against each other, against the data section and against the limits
// above; ranges must not overlap; duplicate names are refused. A zip archive or pickle renamed to
// .safetensors is named as such. Throws strata::Error naming `path`, the tensor and the value.
SafetensorsHeader parse_safetensors_header(std::string_view prefix, uint64_t file_size, const std::string& path);

// model.safetensors.index.json: {"weight_map": {tensor name: shard file name}, "metadata": {...}}.
inline constexpr size_t kMaxIndexEntries = 1u << 20;
inline constexpr uint64_t kMaxIndexBytes = 64ull << 20;

struct SafetensorsIndex {
  std::vector<std::pair<std::string, std::string>> weight_map;  // (tensor, shard file), sorted by tensor
  std::vector<std::string> files;                                // the distinct shard files, sorted
};

// Parses and validates an index: every shard is a plain file name in the checkpoint directory (no '/',
// no "..", no control characters), tensor names are unique, the map is not empty. Throws strata::Error
// naming `path`.
// Text over kMaxIndexBytes is refused.
SafetensorsIndex parse_safetensors_index(std::string_view text, const std::string& path);

}  // namespace strata::io
