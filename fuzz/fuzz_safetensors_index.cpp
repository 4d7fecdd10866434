// model.safetensors.index.json (io/safetensors_header.hpp) on arbitrary bytes: every shard it accepts
// must be a plain file name inside the checkpoint directory.
#include "core/error.hpp"
#include "io/safetensors_header.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto index = strata::io::parse_safetensors_index(
        std::string_view(reinterpret_cast<const char*>(data), size), "model.safetensors.index.json");
    if (index.weight_map.empty() || index.files.empty()) __builtin_trap();
    for (const auto& file : index.files)
      if (file.empty() || file == "." || file.find('/') != std::string::npos || file.find("..") != std::string::npos ||
          file.find('\0') != std::string::npos)
        __builtin_trap();
  } catch (const strata::Error&) {
  }
  return 0;
}
