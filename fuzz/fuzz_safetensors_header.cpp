// The safetensors header parser (io/safetensors_header.hpp) on arbitrary bytes. Input: 8 bytes (little
// endian) giving how many bytes the file holds beyond the rest of the input, then the file's leading
// bytes (its 8-byte header length and JSON header); so a seed is a header without the tensor data. Every
// entry the parser accepts must lie inside the data section, match its dtype and shape, and not overlap.
#include <cstring>

#include "core/error.hpp"
#include "io/safetensors_header.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  uint64_t beyond = 0;
  for (int i = 7; i >= 0; --i) beyond = (beyond << 8) | data[i];
  const std::string_view prefix(reinterpret_cast<const char*>(data + 8), size - 8);
  const uint64_t file_size = beyond > UINT64_MAX - prefix.size() ? UINT64_MAX : prefix.size() + beyond;
  try {
    const auto header = strata::io::parse_safetensors_header(prefix, file_size, "fuzz.safetensors");
    if (header.header_bytes > file_size - 8 || header.data_bytes != file_size - 8 - header.header_bytes)
      __builtin_trap();
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (size_t i = 0; i < header.tensors.size(); ++i) {
      const auto& [name, info] = header.tensors[i];
      if (i > 0 && !(header.tensors[i - 1].name < name)) __builtin_trap();  // sorted, unique
      if (info.shape.size() > strata::io::kMaxTensorRank) __builtin_trap();
      uint64_t numel = 1;
      for (int64_t d : info.shape) {
        if (d < 0 || uint64_t(d) > strata::io::kMaxTensorDim) __builtin_trap();
        if (__builtin_mul_overflow(numel, uint64_t(d), &numel)) __builtin_trap();
      }
      if (numel > strata::io::kMaxTensorElements) __builtin_trap();
      if (info.begin > info.end || info.end > header.data_bytes) __builtin_trap();
      if (info.end - info.begin != numel * strata::io::dtype_size(info.dtype)) __builtin_trap();
      if (info.end > info.begin) ranges.emplace_back(info.begin, info.end);
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i)
      if (ranges[i].first < ranges[i - 1].second) __builtin_trap();
  } catch (const strata::Error&) {
  }
  return 0;
}
