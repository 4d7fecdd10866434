// PCRE2 regex (JIT, UTF, Unicode properties) with Rust-regex semantics for `\s` (internal).
#pragma once
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <array>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>

#include "core/error.hpp"
#include "core/read_bounded.hpp"
#include "text/unicode.hpp"

namespace strata::text {

// Rust's regex `\s` is Unicode White_Space; PCRE2's UCP `\s` is not quite (it lacks U+0085 and treats
// categories differently), so `\s`/`\S` are rewritten to this explicit class before compiling.
inline constexpr const char* kWhiteSpaceClass =
    "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

inline std::string translate_pattern(const std::string& pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      char d = pattern[i + 1];
      if (d == 's') {
        out += in_class ? std::string(kWhiteSpaceClass) : "[" + std::string(kWhiteSpaceClass) + "]";
      } else if (d == 'S' && !in_class) {
        out += "[^" + std::string(kWhiteSpaceClass) + "]";
      } else {
        out += c;
        out += d;
      }
      ++i;
      continue;
    }
    if (c == '[' && !in_class) in_class = true;
    else if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

inline std::string escape_literal(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view("\\^$.|?*+()[]{}").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

class Regex {
 public:
  Regex(const std::string& pattern, const std::filesystem::path& file) {
    std::string translated = translate_pattern(pattern);
    int error = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                     PCRE2_UTF | PCRE2_UCP, &error, &offset, nullptr);
    if (!code) {
      std::array<PCRE2_UCHAR, 256> message;
      pcre2_get_error_message(error, message.data(), message.size());
      fail("{}: cannot compile pre-tokenizer regex {} at offset {}: {}", file.string(), shown_text(pattern), offset,
           reinterpret_cast<const char*>(message.data()));
    }
    jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
    code_.reset(code, pcre2_code_free);
  }

  // Calls visit(begin, end) for every non-empty match in subject[0, size).
  template <class Visit>
  void for_each_match(const char* subject, size_t size, Visit&& visit) const {
    thread_local std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> data(
        pcre2_match_data_create(4, nullptr), pcre2_match_data_free);
    auto* s = reinterpret_cast<PCRE2_SPTR>(subject);
    size_t pos = 0;
    while (pos < size) {
      int rc = jit_ ? pcre2_jit_match(code_.get(), s, size, pos, PCRE2_NO_UTF_CHECK, data.get(), nullptr)
                    : pcre2_match(code_.get(), s, size, pos, PCRE2_NO_UTF_CHECK, data.get(), nullptr);
      if (rc < 0) break;
      PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.get());
      size_t b = ov[0], e = ov[1];
      if (e == b) {  // empty match: step over one character
        pos = b + unicode::utf8_length(static_cast<unsigned char>(subject[b]));
        continue;
      }
      visit(b, e);
      pos = e;
    }
  }

 private:
  std::shared_ptr<pcre2_code> code_;
  bool jit_ = false;
};

// The byte-level pre-tokenizer's split (HF hard-codes it; it is not stored in tokenizer.json).
inline constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace strata::text
