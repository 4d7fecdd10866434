#define BOOST_TEST_MODULE report
#include <boost/test/unit_test.hpp>

#include <zlib.h>

#include <fstream>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "report/analysis.hpp"
#include "report/figures.hpp"
#include "report/image_files.hpp"
#include "report/report.hpp"
#include "report/tables.hpp"
#include "test_helpers.hpp"
#include "test_report_fixture.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace strata;

namespace {

// Independent of report::read_png_info: the IHDR width and height straight from the bytes.
std::pair<uint32_t, uint32_t> ihdr_size(const fs::path& png) {
  const std::string bytes = read_text_file(png);
  BOOST_REQUIRE(bytes.size() > 24);
  BOOST_REQUIRE_EQUAL(bytes.substr(1, 3), "PNG");
  BOOST_REQUIRE_EQUAL(bytes.substr(12, 4), "IHDR");
  auto be32 = [&](size_t at) {
    uint32_t v = 0;
    for (size_t i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(bytes[at + i]);
    return v;
  };
  return {be32(16), be32(20)};
}

// Rendered once for the whole suite (gnuplot is the slow part).
struct RenderedRun {
  testing::Fixture fixture;
  std::vector<report::FigureRecord> figures;
  RenderedRun() {
    fixture = testing::make_run_fixture(testing::fresh_dir("report_fixture"));
    figures = report::render_figures(fixture.dir);
  }
};

RenderedRun& rendered() {
  static RenderedRun run;
  return run;
}

}  // namespace

BOOST_AUTO_TEST_CASE(figures_exist_with_captions_and_index) {
  auto& run = rendered();
  std::set<std::string> names;
  for (const auto& f : run.figures) {
    names.insert(f.name);
    BOOST_TEST(fs::exists(run.fixture.dir / f.png), f.png);
    BOOST_TEST(fs::exists(run.fixture.dir / f.pdf), f.pdf);
    const std::string caption = read_text_file(run.fixture.dir / f.caption_file);
    BOOST_TEST(!caption.empty());
    BOOST_TEST(std::count(caption.begin(), caption.end(), '\n') == 1, "caption is one line: " << caption);
    BOOST_TEST(!f.xlabel.empty());
    BOOST_TEST(!f.ylabel.empty());
  }
  for (const char* expected : {"layer_transfer_heatmap", "layer_universality_curve", "within_model_heatmap_alpha",
                               "within_model_heatmap_delta", "sae_training_curves", "sae_l0_dead_fraction"})
    BOOST_TEST(names.count(expected) == 1, expected);
  const json index = json::parse(read_text_file(run.fixture.dir / "figures" / "figures.json"));
  BOOST_TEST(index["figures"].size() == run.figures.size());
  BOOST_TEST(index["dpi"].get<int>() == 300);
}

BOOST_AUTO_TEST_CASE(png_pixel_size_is_300_dpi_at_stated_inches) {
  auto& run = rendered();
  for (const auto& f : run.figures) {
    auto [width, height] = ihdr_size(run.fixture.dir / f.png);
    BOOST_TEST(f.dpi == 300);
    BOOST_TEST(width == static_cast<uint32_t>(std::lround(f.width_in * 300)), f.name << " width " << width);
    BOOST_TEST(height == static_cast<uint32_t>(std::lround(f.height_in * 300)), f.name << " height " << height);
    const auto info = report::read_png_info(run.fixture.dir / f.png);
    BOOST_TEST(info.width == width);
    BOOST_REQUIRE(info.dpi_x.has_value());
    BOOST_TEST(std::lround(*info.dpi_x) == 300);
    BOOST_TEST(std::lround(*info.dpi_y) == 300);
  }
}

BOOST_AUTO_TEST_CASE(pdf_holds_vector_content) {
  auto& run = rendered();
  for (const auto& f : run.figures) {
    const std::string pdf = read_text_file(run.fixture.dir / f.pdf);
    BOOST_TEST(pdf.rfind("%PDF-", 0) == 0);
    const auto info = report::inspect_pdf(run.fixture.dir / f.pdf);
    BOOST_TEST(info.pages == 1, f.name);
    BOOST_TEST(info.has_vector_content(), f.name << ": " << info.path_operators << " path ops");
  }
  // `with image pixels`: the 20 x 20 heatmap is drawn as at least 400 vector rectangles, not a bitmap.
  const auto heatmap = report::inspect_pdf(run.fixture.dir / "figures" / "layer_transfer_heatmap.pdf");
  BOOST_TEST(heatmap.path_operators >= 400, heatmap.path_operators);
  const std::string raw = read_text_file(run.fixture.dir / "figures" / "layer_transfer_heatmap.pdf");
  BOOST_TEST(raw.find("/Subtype /Image") == std::string::npos, "heatmap must not embed a raster image");
}

BOOST_AUTO_TEST_CASE(inspect_pdf_rejects_raster_only_and_non_pdf) {
  const fs::path dir = testing::fresh_dir("report_pdf_negative");
  atomic_write_text(dir / "not.pdf", "hello");
  BOOST_CHECK_THROW(report::inspect_pdf(dir / "not.pdf"), strata::Error);
  atomic_write_text(dir / "not.png", "hello, this is not a png file at all, really not");
  BOOST_CHECK_THROW(report::read_png_info(dir / "not.png"), strata::Error);
  // A compressed content stream that only paints text has no path operators.
  std::string content = "BT /F1 12 Tf 72 712 Td (hi) Tj ET\n";
  uLongf size = compressBound(content.size());
  std::string packed(size, '\0');
  compress(reinterpret_cast<Bytef*>(packed.data()), &size, reinterpret_cast<const Bytef*>(content.data()), content.size());
  packed.resize(size);
  atomic_write_text(dir / "text.pdf", "%PDF-1.5\n1 0 obj << /Type /Page >> endobj\n2 0 obj << /Filter /FlateDecode >>\nstream\n" +
                                          packed + "\nendstream\nendobj\n%%EOF\n");
  const auto info = report::inspect_pdf(dir / "text.pdf");
  BOOST_TEST(info.content_streams == 1);
  BOOST_TEST(!info.has_vector_content());
}

BOOST_AUTO_TEST_CASE(report_answers_the_questions_with_the_run_numbers) {
  auto& run = rendered();
  const auto result = report::write_report(run.fixture.dir);
  const std::string md = read_text_file(result.markdown);
  for (const char* section : {"## Executive summary", "## Figures", "## Per-layer results", "## Per-model-pair results",
                              "## Nulls and ceilings", "## Gate results", "## Metric definitions", "## Limitations",
                              "## Reproducibility appendix"})
    BOOST_TEST(md.find(section) != std::string::npos, section);
  // Q1: the early mean computed from the fixture, printed to 3 decimals.
  BOOST_TEST(md.find("**Q1. Are early layers universal?** Yes") != std::string::npos);
  BOOST_TEST(md.find(fmt::format("mean cross-model q_excess is {:.3f}", run.fixture.early_mean)) != std::string::npos,
             "early mean " << run.fixture.early_mean);
  // Q2: the planted divergence at relative depth 0.6; Q3: no dip; Q4: depth 0.4 (deepest >= 0.6).
  BOOST_TEST(md.find("**Q2. Divergence point:** relative depth 0.60") != std::string::npos);
  BOOST_TEST(md.find("every deeper depth stays below it") != std::string::npos);
  BOOST_TEST(md.find("**Q3. Bottleneck:** none stands out") != std::string::npos);
  BOOST_TEST(md.find("**Q4. Recommended layer for the next phase:** relative depth 0.40") != std::string::npos);
  BOOST_TEST(md.find("a significant monotonic decline") != std::string::npos);
  BOOST_TEST(md.find("](../figures/layer_transfer_heatmap.png)") != std::string::npos);
  BOOST_TEST(md.find("0123456789abcdef0123456789abcdef01234567") != std::string::npos);  // commit
  BOOST_TEST(md.find("master: 42") != std::string::npos);                                // seeds
  BOOST_TEST(md.find("q_excess | (q - q_null) / (1 - q_null)") != std::string::npos);   // definitions
  BOOST_TEST(md.find("alpha_layer1: q_excess 0.950") != std::string::npos);             // seed ceiling
  BOOST_TEST(md.find("Verdict: NOT EVALUATED") != std::string::npos);
  for (const char* table : {"per_layer", "per_model_pair", "pairs", "saes", "artifacts"}) {
    const fs::path csv = run.fixture.dir / "report" / "tables" / (std::string(table) + ".csv");
    const fs::path tex = run.fixture.dir / "report" / "tables" / (std::string(table) + ".tex");
    BOOST_TEST(fs::exists(csv), csv);
    const std::string latex = read_text_file(tex);
    BOOST_TEST(latex.find("\\toprule") != std::string::npos);
    BOOST_TEST(latex.find("\\bottomrule") != std::string::npos);
  }
  const std::string pairs = read_text_file(run.fixture.dir / "report" / "tables" / "pairs.csv");
  BOOST_TEST(std::count(pairs.begin(), pairs.end(), '\n') == 401);  // header + 400 pairs
  const std::string layers = read_text_file(run.fixture.dir / "report" / "tables" / "per_layer.csv");
  BOOST_TEST(std::count(layers.begin(), layers.end(), '\n') == 6);  // header + 5 depth groups
}

// A dip at an interior depth is reported with the CIs of the dip and both neighbours, and whether they
// separate it.
BOOST_AUTO_TEST_CASE(bottleneck_is_reported_with_its_confidence_intervals) {
  const fs::path dir = testing::copy_run(rendered().fixture.dir, testing::fresh_dir("report_bottleneck"));
  const fs::path matrix_file = dir / "transfer" / "transfer_matrix.json";
  json matrix = json::parse(read_text_file(matrix_file));
  for (auto& score : matrix["layer_universality_scores"])  // depth 0.6 drops far below 0.4 and 0.8
    if (std::abs(score["relative_depth"].get<double>() - 0.6) < 1e-9)
      score["mean_cross_model_q_excess"] = score["mean_cross_model_q_excess"].get<double>() - 0.4;
  atomic_write_text(matrix_file, matrix.dump());
  const std::string md = read_text_file(report::write_report(dir).markdown);
  BOOST_TEST(md.find("**Q3. Bottleneck:** relative depth 0.60") != std::string::npos, md.substr(0, 3000));
  BOOST_TEST(md.find("so the dip is resolved at this sample size") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(failing_run_is_reported_no_go_with_reasons) {
  auto& run = rendered();
  const fs::path dir = testing::copy_run(run.fixture.dir, testing::fresh_dir("report_nogo"));
  json gates = {{"verdict", "NO-GO"},
                {"must_pass",
                 {{{"name", "gate2_saes"}, {"title", "Gate 2: SAEs converged, FVU < max"}, {"passed", false},
                   {"status", "FAIL"}, {"summary", "worst FVU 0.7"}, {"reasons", {"alpha_layer3: FVU 0.7000 >= 0.5"}}}}},
                {"should_pass", json::array()},
                {"publication_ready", json::array()}};
  report::ReportOptions options;
  options.gates = gates;
  const auto result = report::write_report(dir, options);
  BOOST_TEST(result.verdict == "NO-GO");
  const std::string md = read_text_file(result.markdown);
  BOOST_TEST(md.find("**Verdict: NO-GO**") != std::string::npos);
  BOOST_TEST(md.find("alpha_layer3: FVU 0.7000 >= 0.5") != std::string::npos);
  BOOST_TEST(md.find("## Executive summary") != std::string::npos);  // the science is still reported
}

BOOST_AUTO_TEST_CASE(kendall_trend_matches_hand_computation) {
  // x = 1..5, y strictly decreasing: S = -10, Var(S) = 5*4*15/18, z = (S + 1) / sd.
  const auto t = report::kendall_trend({1, 2, 3, 4, 5}, {5, 4, 3, 2, 1});
  BOOST_TEST(t.tau == -1.0, boost::test_tools::tolerance(1e-12));
  BOOST_TEST(t.z == -9.0 / std::sqrt(50.0 / 3.0), boost::test_tools::tolerance(1e-12));
  BOOST_TEST(t.p_decline == 0.5 * std::erfc(9.0 / std::sqrt(50.0 / 3.0) / std::sqrt(2.0)), boost::test_tools::tolerance(1e-10));
  BOOST_TEST(t.declining(0.05));
  const auto flat = report::kendall_trend({1, 2, 3, 4}, {1, 1, 1, 1});
  BOOST_TEST(!flat.declining(0.05));
  const auto rising = report::kendall_trend({1, 2, 3, 4, 5, 6}, {1, 2, 3, 4, 5, 6});
  BOOST_TEST(rising.tau == 1.0, boost::test_tools::tolerance(1e-12));
  BOOST_TEST(!rising.declining(0.05));
}

BOOST_AUTO_TEST_CASE(bootstrap_ci_brackets_the_mean_and_is_deterministic) {
  std::vector<double> v;
  for (int i = 0; i < 50; ++i) v.push_back(0.5 + 0.01 * (i % 7));
  const auto a = report::bootstrap_mean_ci(v, 1000, 3), b = report::bootstrap_mean_ci(v, 1000, 3);
  const double mean = std::accumulate(v.begin(), v.end(), 0.0) / v.size();
  BOOST_TEST(a.first == b.first);
  BOOST_TEST(a.second == b.second);
  BOOST_TEST(a.first < mean);
  BOOST_TEST(a.second > mean);
}

// Every reported mean lies inside its own CI: the CIs resample the very per-cell values that are
// averaged. Here the cells' universality scores (high) differ from their pairs' q_excess (low), as they
// do in real runs (the scores average both directions at the nearest depth only), so a CI taken over
// the pairs would miss the reported mean.
BOOST_AUTO_TEST_CASE(reported_means_lie_inside_their_confidence_intervals) {
  report::TransferResults results;
  const std::vector<std::string> models{"a", "b", "c"};
  for (const auto& model : models)
    for (int layer = 1; layer <= 3; ++layer) {
      report::CellScore cell;
      cell.model = model;
      cell.layer = layer;
      cell.relative_depth = layer / 3.0;
      cell.mean_cross_model_q_excess = 0.8 + 0.05 * layer + (model == "b" ? 0.04 : 0.0);
      results.universality.push_back(cell);
      for (const auto& other : models)
        for (int other_layer = 1; other_layer <= 3; ++other_layer) {
          report::PairResult pair;
          pair.source_model = model, pair.source_layer = layer;
          pair.target_model = other, pair.target_layer = other_layer;
          pair.same_model = model == other;
          pair.entry = {{"q_excess", 0.1 + 0.01 * other_layer}};
          results.pairs.push_back(pair);
        }
    }
  report::AnalysisOptions options;
  options.early_max_depth = 0.34;
  const report::Analysis a = report::analyse(results, options);
  BOOST_TEST(a.early_cells.size() == 3u);
  BOOST_TEST(a.early_ci_lo <= a.early_mean);
  BOOST_TEST(a.early_mean <= a.early_ci_hi);
  for (const auto& group : a.groups) {
    BOOST_TEST(group.ci_lo <= group.mean_q_excess);
    BOOST_TEST(group.mean_q_excess <= group.ci_hi);
  }
}

BOOST_AUTO_TEST_CASE(tables_render_csv_latex_markdown) {
  report::Table t{"demo", "A caption with 50% & more_", {"name", "value"}, {{"a,b", "1.000"}, {"say \"hi\"", "2|3"}}};
  BOOST_TEST(t.csv() == "name,value\n\"a,b\",1.000\n\"say \"\"hi\"\"\",2|3\n");
  const std::string latex = t.latex();
  BOOST_TEST(latex.find("\\caption{A caption with 50\\% \\& more\\_}") != std::string::npos);
  BOOST_TEST(latex.find("\\begin{tabular}{lr}") != std::string::npos);
  BOOST_TEST(latex.find("\\midrule") != std::string::npos);
  BOOST_TEST(t.markdown().find("2\\|3") != std::string::npos);
  BOOST_TEST(report::p_value(2.5e-5) == "2.5e-05");
  BOOST_TEST(report::p_value(0.0312) == "0.031");
  BOOST_TEST(report::fixed(std::nan("")) == "n/a");
}

BOOST_AUTO_TEST_CASE(bands_follow_the_seed) {
  report::Bands b;
  BOOST_TEST(b.label(0.95) == "universal");
  BOOST_TEST(b.label(0.9) == "universal");
  BOOST_TEST(b.label(0.75) == "partial");
  BOOST_TEST(b.label(0.5) == "diverging");
  BOOST_TEST(b.label(0.1) == "model-specific");
}
