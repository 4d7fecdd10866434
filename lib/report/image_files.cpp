#include "report/image_files.hpp"

#include <zlib.h>

#include <array>
#include <fstream>
#include <cmath>
#include <cstring>
#include <cctype>
#include <set>
#include <string>

#include "core/error.hpp"
#include "core/fs.hpp"

namespace strata::report {
namespace fs = std::filesystem;

namespace {

constexpr std::array<unsigned char, 8> kPngSignature = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
constexpr double kInchesPerMetre = 39.37007874015748;

uint32_t read_be32(const std::string& bytes, size_t at) {
  auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(bytes[at + i])); };
  return (b(0) << 24) | (b(1) << 16) | (b(2) << 8) | b(3);
}

void append_be32(std::string& out, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((value >> shift) & 0xff));
}

void check_signature(const std::string& bytes, const fs::path& png) {
  if (bytes.size() < 33 || std::memcmp(bytes.data(), kPngSignature.data(), kPngSignature.size()) != 0)
    fail("{} is not a PNG file (bad signature); re-render it with `strata figures RUN_DIR`", png.string());
  if (bytes.compare(12, 4, "IHDR") != 0) fail("{}: first PNG chunk is not IHDR", png.string());
}

}  // namespace

PngInfo read_png_info(const fs::path& png) {
  const std::string bytes = read_text_file(png);
  check_signature(bytes, png);
  PngInfo info;
  info.width = read_be32(bytes, 16);
  info.height = read_be32(bytes, 20);
  size_t at = 8;
  while (at + 12 <= bytes.size()) {
    const uint32_t length = read_be32(bytes, at);
    const std::string type = bytes.substr(at + 4, 4);
    if (type == "pHYs" && length == 9 && at + 8 + 9 <= bytes.size()) {
      const uint32_t ppu_x = read_be32(bytes, at + 8), ppu_y = read_be32(bytes, at + 12);
      if (bytes[at + 16] == 1) {  // unit: metre
        info.dpi_x = ppu_x / kInchesPerMetre;
        info.dpi_y = ppu_y / kInchesPerMetre;
      }
    }
    if (type == "IDAT" || type == "IEND") break;  // pHYs must precede the image data
    at += 12 + static_cast<size_t>(length);
  }
  return info;
}

void fix_pdf_creation_date(const fs::path& pdf) {
  std::string bytes = read_text_file(pdf);
  static const std::string key = "/CreationDate (D:";
  bool changed = false;
  for (size_t pos = bytes.find(key); pos != std::string::npos; pos = bytes.find(key, pos + 1)) {
    size_t begin = pos + key.size();
    size_t end = bytes.find(')', begin);
    if (end == std::string::npos) break;
    std::string fixed = std::string("19700101000000Z").substr(0, end - begin);
    fixed.resize(end - begin, '0');
    bytes.replace(begin, end - begin, fixed);
    changed = true;
  }
  if (!changed) return;
  std::ofstream out(pdf, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) fail("cannot rewrite {}", pdf.string());
}

void set_png_dpi(const fs::path& png, int dpi) {
  std::string bytes = read_text_file(png);
  check_signature(bytes, png);
  std::string out = bytes.substr(0, 8);
  size_t at = 8;
  bool inserted = false;
  while (at + 12 <= bytes.size()) {
    const uint32_t length = read_be32(bytes, at);
    const std::string type = bytes.substr(at + 4, 4);
    const size_t chunk_size = 12 + static_cast<size_t>(length);
    if (at + chunk_size > bytes.size()) fail("{}: truncated PNG chunk {}", png.string(), type);
    if (type != "pHYs") out.append(bytes, at, chunk_size);
    if (type == "IHDR" && !inserted) {
      const auto pixels_per_metre = static_cast<uint32_t>(std::lround(dpi * kInchesPerMetre));
      std::string chunk = "pHYs";
      append_be32(chunk, pixels_per_metre);
      append_be32(chunk, pixels_per_metre);
      chunk.push_back(1);  // unit: metre
      append_be32(out, 9);
      out += chunk;
      append_be32(out, static_cast<uint32_t>(
                           crc32(0L, reinterpret_cast<const Bytef*>(chunk.data()), static_cast<uInt>(chunk.size()))));
      inserted = true;
    }
    at += chunk_size;
  }
  atomic_write_text(png, out);
}

PdfInfo inspect_pdf(const fs::path& pdf) {
  const std::string bytes = read_text_file(pdf);
  if (bytes.rfind("%PDF-", 0) != 0)
    fail("{} is not a PDF file (no %PDF- header); re-render it with `strata figures RUN_DIR`", pdf.string());
  PdfInfo info;
  for (size_t at = bytes.find("/Type /Page"); at != std::string::npos; at = bytes.find("/Type /Page", at + 1)) {
    if (bytes.compare(at, 12, "/Type /Pages") != 0) ++info.pages;
  }
  size_t search = 0;
  while (true) {
    size_t keyword = bytes.find("stream", search);
    if (keyword == std::string::npos) break;
    if (keyword >= 3 && bytes.compare(keyword - 3, 3, "end") == 0) {
      search = keyword + 6;
      continue;
    }
    size_t begin = keyword + 6;
    if (begin < bytes.size() && bytes[begin] == '\r') ++begin;
    if (begin < bytes.size() && bytes[begin] == '\n') ++begin;
    const size_t end = bytes.find("endstream", begin);
    if (end == std::string::npos) break;
    search = end + 9;
    // Inflate when possible (cairo compresses content streams); uncompressed streams are read as is.
    std::string content;
    z_stream zs{};
    if (inflateInit(&zs) == Z_OK) {
      zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data() + begin));
      zs.avail_in = static_cast<uInt>(end - begin);
      std::array<char, 1 << 15> buffer;
      int status = Z_OK;
      while (status == Z_OK) {
        zs.next_out = reinterpret_cast<Bytef*>(buffer.data());
        zs.avail_out = buffer.size();
        status = inflate(&zs, Z_NO_FLUSH);
        content.append(buffer.data(), buffer.size() - zs.avail_out);
      }
      inflateEnd(&zs);
      if (status != Z_STREAM_END) content.assign(bytes, begin, end - begin);
    }
    // Image and font streams are binary; content streams are printable operator text.
    const auto printable = std::count_if(content.begin(), content.end(), [](char ch) {
      return (ch >= 32 && ch < 127) || ch == '\n' || ch == '\r' || ch == '\t';
    });
    if (content.empty() || printable < static_cast<std::ptrdiff_t>(content.size() * 0.98)) continue;
    ++info.content_streams;
    static const std::set<std::string, std::less<>> path_ops = {"m", "l", "c", "v", "y", "re", "h"};
    static const std::set<std::string, std::less<>> paint_ops = {"f", "f*", "F", "S", "s", "B", "B*", "b", "b*"};
    size_t pos = 0;
    while (pos < content.size()) {
      while (pos < content.size() && std::isspace(static_cast<unsigned char>(content[pos]))) ++pos;
      size_t token_end = pos;
      while (token_end < content.size() && !std::isspace(static_cast<unsigned char>(content[token_end]))) ++token_end;
      const std::string_view token(content.data() + pos, token_end - pos);
      if (path_ops.count(token)) ++info.path_operators;
      else if (paint_ops.count(token)) ++info.paint_operators;
      pos = token_end;
    }
  }
  return info;
}

}  // namespace strata::report
