// Rendering one gnuplot script to a 300-DPI PNG (pngcairo) and a vector PDF (pdfcairo), through
// gnuplot-iostream. Scripts carry their data inline (datablocks), so nothing depends on temporary
// data files or a display.
#pragma once
#include <filesystem>
#include <string>

namespace strata::report {

struct PlotSize {
  double width_in = 6.5, height_in = 4.5;
  int dpi = 300;
  double font_pt = 9;  // as printed; the PNG font is scaled so it matches the PDF at `dpi`
  int width_px() const;
  int height_px() const;
};

// `body` holds datablocks and plot commands but no `set terminal` / `set output`. Both files are
// written atomically; the PNG gets a pHYs chunk stating `dpi`. Throws strata::Error with gnuplot's
// messages when gnuplot reports an error or produces no output.
void render_gnuplot(const std::string& body, const PlotSize& size, const std::filesystem::path& png,
                    const std::filesystem::path& pdf);

// A double-quoted gnuplot string literal (file names, commands).
std::string gnuplot_string(const std::string& text);
// A double-quoted label shown literally under `enhanced` text: _ ^ @ & { } ~ are escaped.
std::string gnuplot_label(const std::string& text);

}  // namespace strata::report
