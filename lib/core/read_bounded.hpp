// Untrusted small text files (a JSON index, meta.json, cfg.json): read after checking the size against a
// cap, so that a corrupt or hostile file is an error naming it, not an allocation of its size; and their
// values quoted safely in error messages.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
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

// A JSON value from such a file, for an error message: short, and valid UTF-8 whatever the input held.
inline std::string shown(const nlohmann::json& value) {
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

// Any untrusted string (a token from merges.txt, a dataset spec, a field name) for an error message: quoted
// and escaped as JSON, invalid UTF-8 replaced, at most 80 characters. fmt 9's "{:?}" is not a substitute:
// it aborts the process on invalid UTF-8 (an assertion in its escaper; found by fuzz_tokenizer_load).
inline std::string shown_text(std::string_view text) { return shown(nlohmann::json(std::string(text))); }

}  // namespace strata
