// Reads a small text file from elsewhere (a JSON index, meta.json, cfg.json) after checking its size
// against a cap, so that a corrupt or hostile file is an error naming it, not an allocation of its size.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <system_error>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace strata {

inline std::string read_bounded_text_file(const std::filesystem::path& file, uint64_t max_bytes) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(file, ec);
  if (!ec && size > max_bytes)
    fail("{}: {} bytes; a file of this kind is at most {} bytes, so it is corrupt or not what it claims to be",
         file.string(), size, max_bytes);
  return read_text_file(file);  // names the file when it cannot be opened
}

}  // namespace strata
