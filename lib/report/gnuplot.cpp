#include "report/gnuplot.hpp"

#include <gnuplot-iostream.h>

#include <cmath>
#include <regex>
#include <sstream>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/log.hpp"
#include "report/image_files.hpp"

namespace strata::report {
namespace fs = std::filesystem;

namespace {

// pngcairo lays out text at 96 pixels per inch; pdfcairo at 72 points per inch.
constexpr double kPngCairoPixelsPerInch = 96.0;

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

void run_gnuplot(const std::string& terminal, const fs::path& output, const std::string& body) {
  const fs::path errors = output.string() + ".gnuplot-stderr";
  {
    Gnuplot gp("gnuplot >/dev/null 2>" + shell_quote(errors.string()));
    gp << terminal << "\n"
       << "set output " << gnuplot_string(output.string()) << "\n"
       << body << "\n"
       << "unset output\n";
  }  // the destructor closes the pipe and waits for gnuplot to exit
  std::string messages = fs::exists(errors) ? read_text_file(errors) : "";
  std::error_code ec;
  fs::remove(errors, ec);
  static const std::regex error_line(R"(line \d+:)");
  std::istringstream lines(messages);
  bool failed = !fs::exists(output) || fs::file_size(output) == 0;
  for (std::string line; std::getline(lines, line);) {
    if (std::regex_search(line, error_line) && line.find("arning") == std::string::npos) failed = true;
  }
  if (failed) fail("gnuplot could not render {}:\n{}", output.filename().string(), messages);
  if (!messages.empty()) log::debug("gnuplot ({}): {}", output.filename().string(), messages);
}

}  // namespace

int PlotSize::width_px() const { return static_cast<int>(std::lround(width_in * dpi)); }
int PlotSize::height_px() const { return static_cast<int>(std::lround(height_in * dpi)); }

std::string gnuplot_string(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

std::string gnuplot_label(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '_' || c == '^' || c == '@' || c == '&' || c == '{' || c == '}' || c == '~') out += "\\\\";
    out += c;
  }
  return out + "\"";
}

void render_gnuplot(const std::string& body, const PlotSize& size, const fs::path& png, const fs::path& pdf) {
  const double scale = size.dpi / kPngCairoPixelsPerInch;
  const std::string png_terminal =
      fmt::format("set terminal pngcairo size {},{} enhanced font \"Sans,{}\" fontscale {:.4f} linewidth {:.4f}",
                  size.width_px(), size.height_px(), size.font_pt, scale, scale);
  const std::string pdf_terminal = fmt::format("set terminal pdfcairo size {}in,{}in enhanced font \"Sans,{}\"",
                                               size.width_in, size.height_in, size.font_pt);
  atomic_write(png, [&](const fs::path& tmp) {
    run_gnuplot(png_terminal, tmp, body);
    set_png_dpi(tmp, size.dpi);
  });
  atomic_write(pdf, [&](const fs::path& tmp) {
    run_gnuplot(pdf_terminal, tmp, body);
    fix_pdf_creation_date(tmp);
  });
}

}  // namespace strata::report
