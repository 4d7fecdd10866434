#include "text/unicode.hpp"

#include <unicode/uchar.h>

#include <array>

namespace strata::text::unicode {

size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    char32_t min;
    if ((c >> 5) == 0x6) len = 2, min = 0x80;
    else if ((c >> 4) == 0xE) len = 3, min = 0x800;
    else if ((c >> 3) == 0x1E) len = 4, min = 0x10000;
    else return i;
    if (i + len > n) return i;
    char32_t cp = c & (0xFF >> (len + 1));
    for (int k = 1; k < len; ++k) {
      auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (d & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return std::string_view::npos;
}

namespace {

struct ByteTable {
  std::array<char32_t, 256> to_cp{};
  std::array<std::string, 256> to_utf8;
  std::array<int, 512> from_cp{};  // every table code point is < 0x144
  ByteTable() {
    from_cp.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_cp[b] = printable ? char32_t(b) : char32_t(0x100 + extra++);
      from_cp[to_cp[b]] = b;
      append_utf8(to_utf8[b], to_cp[b]);
    }
  }
};

const ByteTable& byte_table() {
  static const ByteTable table;
  return table;
}

}  // namespace

char32_t byte_to_codepoint(uint8_t b) { return byte_table().to_cp[b]; }
const std::string& byte_to_utf8(uint8_t b) { return byte_table().to_utf8[b]; }
int codepoint_to_byte(char32_t cp) { return cp < 512 ? byte_table().from_cp[cp] : -1; }

bool is_white_space(char32_t cp) { return u_hasBinaryProperty(static_cast<UChar32>(cp), UCHAR_WHITE_SPACE); }

bool is_word_char(char32_t cp) {
  auto mask = U_GET_GC_MASK(static_cast<UChar32>(cp));
  return (mask & (U_GC_L_MASK | U_GC_N_MASK | U_GC_M_MASK)) != 0;
}

}  // namespace strata::text::unicode
