// Inspection of the figure files strata renders, shared by the figures step, Gate 4 and the tests:
// the PNG header (pixel size and the pHYs resolution chunk) and whether a PDF holds vector drawing.
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>

namespace strata::report {

struct PngInfo {
  uint32_t width = 0, height = 0;        // pixels, from IHDR
  std::optional<double> dpi_x, dpi_y;    // from pHYs when its unit is metres
};

// Throws strata::Error naming the file if it is not a PNG.
PngInfo read_png_info(const std::filesystem::path& png);

// Inserts (or replaces) the pHYs chunk so that viewers and LaTeX see the intended resolution.
// cairo writes none, so a 300-DPI figure would otherwise open at 72 DPI, four times too large.
void set_png_dpi(const std::filesystem::path& png, int dpi);
// cairo 1.16 stamps /CreationDate with the wall clock (it ignores SOURCE_DATE_EPOCH); a reproduced run
// must write identical bytes, so the stamp is replaced in place by a fixed date of the same length
// (the cross-reference offsets stay valid).
void fix_pdf_creation_date(const std::filesystem::path& pdf);

struct PdfInfo {
  int pages = 0;
  int content_streams = 0;
  int64_t path_operators = 0;   // m, l, c, re, h operators in decompressed content streams
  int64_t paint_operators = 0;  // f, f*, S, s, B, b operators
  bool has_vector_content() const { return path_operators > 0 && paint_operators > 0; }
};

// Decompresses every FlateDecode stream (zlib) and counts PDF path-construction and painting operators.
PdfInfo inspect_pdf(const std::filesystem::path& pdf);

}  // namespace strata::report
