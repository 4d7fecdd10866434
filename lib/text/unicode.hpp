// Small UTF-8 and Unicode helpers shared by the tokenizer, the BPE trainer and alignment (internal).
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace strata::text::unicode {

// Length in bytes of the UTF-8 sequence starting with lead byte `c` (1 for invalid lead bytes).
inline int utf8_length(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xE) return 3;
  if ((c >> 3) == 0x1E) return 4;
  return 1;
}

// Decodes the code point at byte `pos` of valid UTF-8; sets `len` to its byte length.
inline char32_t decode_at(std::string_view s, size_t pos, int& len) {
  auto c = static_cast<unsigned char>(s[pos]);
  len = utf8_length(c);
  if (pos + len > s.size()) len = 1;
  if (len == 1) return c;
  char32_t cp = c & (0xFF >> (len + 1));
  for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[pos + k]) & 0x3F);
  return cp;
}

inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// Byte offset of the first invalid UTF-8 sequence, or npos when `s` is valid UTF-8 (no surrogates,
// no overlong forms, nothing above U+10FFFF).
size_t find_invalid_utf8(std::string_view s);

// GPT-2's reversible byte -> code point table: printable Latin-1 bytes map to themselves, the other 68
// bytes (in increasing order) to U+0100, U+0101, ...
char32_t byte_to_codepoint(uint8_t b);
// UTF-8 of byte_to_codepoint(b) for all 256 bytes.
const std::string& byte_to_utf8(uint8_t b);
// Inverse: the byte for a code point of the table, or -1.
int codepoint_to_byte(char32_t cp);

// Unicode White_Space property (what Rust's regex `\s` means, and HF's pre-tokenizer relies on).
bool is_white_space(char32_t cp);
// Letter, number or combining mark (general categories L*, N*, M*).
bool is_word_char(char32_t cp);

}  // namespace strata::text::unicode
