#define BOOST_TEST_MODULE report
#include <boost/test/unit_test.hpp>

#include <zlib.h>

#include <fstream>
#include <functional>
#include <map>
#include <sstream>

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
                              "## Nulls and ceilings", "## Metric definitions", "## Limitations",
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
  // The verdict is the gates step's (after the report): the report points there and has no gates section.
  BOOST_TEST(md.find("see gates/gates.json") != std::string::npos);
  BOOST_TEST(md.find("## Gate results") == std::string::npos);
  BOOST_TEST(!fs::exists(run.fixture.dir / "report" / "tables" / "gates.csv"));
  BOOST_TEST(md.find("## Positive control") == std::string::npos);  // none configured
  // The sparse fixture SAEs (L0 / d_in 0.125-0.375, dead <= 0.05) are within the default thresholds.
  BOOST_TEST(md.find("L0 / d_in 0.125-0.375 (max 0.5), dead fraction 0.010-0.050 (max 0.2); all 20 SAEs are within "
                     "both.") != std::string::npos);
  BOOST_TEST(md.find("CKA permutation p-values: 400 of 400 pairs") != std::string::npos);
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
          pair.q_excess = 0.1 + 0.01 * other_layer;
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

namespace {

json read_json_file(const fs::path& file) { return json::parse(read_text_file(file)); }

// Edits a run's config.resolved.json in place.
void edit_config(const fs::path& dir, const std::function<void(json&)>& edit) {
  json resolved = read_json_file(dir / "config.resolved.json");
  edit(resolved);
  atomic_write_text(dir / "config.resolved.json", resolved.dump(2));
}

// Every file under `dir` with its bytes, by relative path.
std::map<std::string, std::string> file_bytes(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    if (entry.is_regular_file()) out[fs::relative(entry.path(), dir).string()] = read_text_file(entry.path());
  return out;
}

// The CSV column `name` of a table, one string per row.
std::vector<std::string> csv_column(const fs::path& csv, const std::string& name) {
  std::istringstream in(read_text_file(csv));
  std::string line;
  std::getline(in, line);
  std::vector<std::string> header;
  {
    std::stringstream fields(line);
    for (std::string f; std::getline(fields, f, ',');) header.push_back(f);
  }
  const size_t column = std::find(header.begin(), header.end(), name) - header.begin();
  BOOST_REQUIRE_MESSAGE(column < header.size(), "no column " << name << " in " << csv);
  std::vector<std::string> values;
  while (std::getline(in, line)) {
    // Split on commas outside quotes.
    std::vector<std::string> cells(1);
    bool quoted = false;
    for (char c : line) {
      if (c == '"') quoted = !quoted;
      else if (c == ',' && !quoted) cells.emplace_back();
      else cells.back() += c;
    }
    values.push_back(column < cells.size() ? cells[column] : "<missing>");
  }
  return values;
}

}  // namespace

// Issue 13.3: when no CKA permutation test ran, the transfer step writes cka_p / p_adjusted as null. The
// report says "not computed", the CSV cells are empty, and no significance count is printed.
BOOST_AUTO_TEST_CASE(p_values_that_were_not_computed_are_reported_as_such) {
  const fs::path dir = testing::copy_run(rendered().fixture.dir, testing::fresh_dir("report_no_p"));
  const fs::path matrix_file = dir / "transfer" / "transfer_matrix.json";
  json matrix = read_json_file(matrix_file);
  for (auto& [key, entry] : matrix["transfer_matrix"].items()) {
    entry["cka_p"] = nullptr;
    entry["p_adjusted"] = nullptr;
  }
  atomic_write_text(matrix_file, matrix.dump());
  const auto result = report::write_report(dir);
  const std::string md = read_text_file(result.markdown);
  BOOST_TEST(md.find("CKA permutation p-values: not computed") != std::string::npos);
  const auto pairs_p = csv_column(dir / "report" / "tables" / "pairs.csv", "CKA p (BH)");
  BOOST_TEST(pairs_p.size() == 400u);
  BOOST_TEST(std::all_of(pairs_p.begin(), pairs_p.end(), [](const std::string& v) { return v.empty(); }));
  const auto median = csv_column(dir / "report" / "tables" / "per_model_pair.csv", "median BH p (CKA)");
  BOOST_TEST(median.size() == 16u);
  BOOST_TEST(std::all_of(median.begin(), median.end(), [](const std::string& v) { return v.empty(); }));
  const auto significant = csv_column(dir / "report" / "tables" / "per_model_pair.csv", "significant (p_adj < alpha)");
  BOOST_TEST(std::all_of(significant.begin(), significant.end(), [](const std::string& v) { return v.empty(); }));
  const auto layer_p = csv_column(dir / "report" / "tables" / "per_layer.csv", "max BH p (CKA)");
  BOOST_TEST(std::all_of(layer_p.begin(), layer_p.end(), [](const std::string& v) { return v.empty(); }));
  // In markdown the same cells read "not computed".
  BOOST_TEST(md.find("| not computed |") != std::string::npos);
  const json analysis = read_json_file(result.analysis);
  BOOST_TEST(analysis["pairs_with_p"] == 0);
  BOOST_TEST(analysis["model_pairs"][0]["median_p_adjusted"].is_null());
  // With p-values the same column holds them (the fixture's p_adjusted of an off-diagonal pair).
  report::write_report(rendered().fixture.dir);
  const auto with_p = csv_column(rendered().fixture.dir / "report" / "tables" / "pairs.csv", "CKA p (BH)");
  BOOST_TEST(with_p[1] == "1.5e-04");
}

// Issue 13.5: every CI label follows ci_level, and the intervals are computed at that level.
BOOST_AUTO_TEST_CASE(ci_labels_and_intervals_follow_ci_level) {
  const fs::path dir = testing::copy_run(rendered().fixture.dir, testing::fresh_dir("report_ci90"));
  edit_config(dir, [](json& c) { c["transfer"] = {{"ci_level", 0.9}, {"bootstrap", 500}}; });
  const auto options = report::analysis_options_for_run(dir);
  BOOST_TEST(options.ci_level == 0.9);
  BOOST_TEST(options.bootstrap_resamples == 500);
  const auto figures = report::render_figures(dir);
  const auto result = report::write_report(dir);
  const std::string md = read_text_file(result.markdown);
  BOOST_TEST(md.find("95%") == std::string::npos);
  BOOST_TEST(md.find("(90% CI [") != std::string::npos);
  BOOST_TEST(md.find("| 90% CI |") != std::string::npos);
  BOOST_TEST(read_text_file(dir / "report" / "tables" / "per_layer.csv").find("90% CI") != std::string::npos);
  BOOST_TEST(read_text_file(dir / "report" / "tables" / "pairs.csv").find("q_excess 90% CI") != std::string::npos);
  bool curve = false;
  for (const auto& f : figures)
    if (f.name == "layer_universality_curve") {
      curve = true;
      BOOST_TEST(f.caption.find("shaded: 90% bootstrap CI over sequences") != std::string::npos, f.caption);
    }
  BOOST_TEST(curve);
  // The early-cell interval is the 90% percentile bootstrap of the early cells' scores.
  const report::Analysis a = report::analyse(report::load_transfer(dir), options);
  std::vector<double> early;
  for (const auto& c : a.early_cells) early.push_back(c.mean_cross_model_q_excess);
  const auto expected = report::bootstrap_mean_ci(early, 500, options.bootstrap_seed + 999, 0.9);
  BOOST_TEST(a.early_ci_lo == expected.first);
  BOOST_TEST(a.early_ci_hi == expected.second);
  const auto at95 = report::bootstrap_mean_ci(early, 500, options.bootstrap_seed + 999, 0.95);
  BOOST_TEST(at95.second - at95.first > expected.second - expected.first);
  BOOST_TEST(report::ci_label(0.9) == "90%");
  BOOST_TEST(report::ci_label(0.995) == "99.5%");
}

// Issue 17: the report reads nothing written after it. Written before and after gates.json exists (and
// after an earlier report and the gates were recorded in the manifest), it has the same bytes.
BOOST_AUTO_TEST_CASE(report_bytes_do_not_depend_on_gates_or_an_earlier_report) {
  const fs::path dir = testing::copy_run(rendered().fixture.dir, testing::fresh_dir("report_history"));
  fs::remove_all(dir / "report");
  report::write_report(dir);
  const auto before = file_bytes(dir / "report");
  BOOST_TEST(before.count("analysis.json") == 1u);
  BOOST_TEST(before.count("tables/artifacts.csv") == 1u);
  // What a later gates step and an earlier report leave behind.
  atomic_write_text(dir / "gates" / "gates.json", json({{"verdict", "NO-GO"}, {"must_pass", json::array()}}).dump());
  atomic_write_text(dir / "report" / "tables" / "gates.csv", "tier,check\n");
  json manifest = read_json_file(dir / "manifest.json");
  manifest["artifacts"]["gates/gates.json"] = {{"size", 10}, {"sha256", std::string(64, 'c')}, {"step", "gates"}};
  manifest["artifacts"]["report/report.md"] = {{"size", 11}, {"sha256", std::string(64, 'd')}, {"step", "report"}};
  atomic_write_text(dir / "manifest.json", manifest.dump(2));
  report::write_report(dir);
  const auto after = file_bytes(dir / "report");
  BOOST_TEST(after.size() == before.size());
  for (const auto& [path, bytes] : before) BOOST_TEST((after.count(path) && after.at(path) == bytes), path);
  BOOST_TEST(read_text_file(dir / "report" / "tables" / "artifacts.csv").find("gates") == std::string::npos);
}

// Issue 13.10: a dense SAE (L0 near d_in) or one with many dead latents is named in the report.
BOOST_AUTO_TEST_CASE(dense_saes_are_named_in_the_sparsity_line) {
  const fs::path dir = testing::copy_run(rendered().fixture.dir, testing::fresh_dir("report_dense"));
  auto set_metric = [&](const std::string& cell, const char* key, double value) {
    const fs::path file = dir / "saes" / cell / "cfg.json";
    json cfg = read_json_file(file);
    cfg["metrics"][key] = value;
    atomic_write_text(file, cfg.dump(2));
  };
  set_metric("beta_layer3", "l0", 6.0);             // 0.75 of d_in = 8
  set_metric("gamma_layer2", "dead_fraction", 0.4);
  const auto result = report::write_report(dir);
  const std::string md = read_text_file(result.markdown);
  BOOST_TEST(md.find("L0 / d_in 0.125-0.750 (max 0.5)") != std::string::npos);
  BOOST_TEST(md.find("2 finding(s): beta_layer3: L0 6.0 is 0.75 of d_in 8 (max 0.5); gamma_layer2: dead fraction "
                     "0.400 (max 0.2).") != std::string::npos);
  const json analysis = read_json_file(result.analysis);
  BOOST_TEST(analysis["sparsity"].size() == 20u);
  for (const auto& s : analysis["sparsity"])
    if (s["cell"] == "beta_layer3") BOOST_TEST(s["l0_fraction"].get<double>() == 0.75);
}

// Positive control: a control model is left out of every main number, and its pairs with its twin are
// reported beside the cross-family pairs of each depth.
BOOST_AUTO_TEST_CASE(positive_control_is_reported_beside_the_main_matrix) {
  testing::FixtureOptions with_control;
  with_control.control = "alpha-control";
  with_control.control_of = "alpha";
  const auto fx = testing::make_run_fixture(testing::fresh_dir("report_control"), with_control);
  const auto plain = testing::make_run_fixture(testing::fresh_dir("report_control_plain"));
  const auto options = report::analysis_options_for_run(fx.dir);
  BOOST_TEST(options.controls.size() == 1u);
  BOOST_TEST(options.controls.at("alpha-control") == "alpha");
  const report::Analysis a = report::analyse(report::load_transfer(fx.dir), options);
  const report::Analysis b = report::analyse(report::load_transfer(plain.dir), report::analysis_options_for_run(plain.dir));
  // The main analysis is that of the same run without the control.
  BOOST_TEST(a.total_pairs == 400);
  BOOST_TEST(a.model_pairs.size() == 16u);
  BOOST_REQUIRE(a.groups.size() == b.groups.size());
  for (size_t g = 0; g < a.groups.size(); ++g) {
    BOOST_TEST(a.groups[g].cells.size() == 4u);
    BOOST_TEST(a.groups[g].mean_q_excess == b.groups[g].mean_q_excess, boost::test_tools::tolerance(1e-12));
    BOOST_TEST(a.groups[g].ci_lo == b.groups[g].ci_lo, boost::test_tools::tolerance(1e-12));
    BOOST_TEST(a.groups[g].spread == b.groups[g].spread, boost::test_tools::tolerance(1e-12));
  }
  BOOST_TEST(a.early_mean == fx.early_mean, boost::test_tools::tolerance(1e-12));
  BOOST_TEST(a.trend.tau == b.trend.tau, boost::test_tools::tolerance(1e-12));
  // The control: q_excess 0.99 (CI 0.985-0.995) at every depth, against the cross-family mean.
  BOOST_REQUIRE(a.positive_controls.size() == 1u);
  const auto& pc = a.positive_controls[0];
  BOOST_TEST(pc.twin == "alpha");
  BOOST_REQUIRE(pc.depths.size() == 5u);
  for (size_t k = 0; k < 5; ++k) {
    const auto& d = pc.depths[k];
    const double depth = 0.2 * static_cast<double>(k + 1);
    BOOST_TEST(d.control_cell == fmt::format("alpha-control_layer{}", k + 1));
    BOOST_TEST(d.relative_depth == depth, boost::test_tools::tolerance(1e-12));
    BOOST_TEST(*d.q_excess == 0.99, boost::test_tools::tolerance(1e-12));
    BOOST_TEST(*d.q_lo == 0.985, boost::test_tools::tolerance(1e-12));
    BOOST_TEST(*d.q_hi == 0.995, boost::test_tools::tolerance(1e-12));
    BOOST_TEST(*d.cka == 0.94, boost::test_tools::tolerance(1e-12));
    BOOST_TEST(*d.mmac == 0.6 * 0.99, boost::test_tools::tolerance(1e-12));
    // Cross-family pairs at this depth: 4 x 3 ordered pairs, q_excess = planted + the source's offset.
    BOOST_TEST(d.cross_family_pairs == 12);
    double expected = 0;
    for (size_t m = 0; m < 4; ++m) expected += testing::planted_universality(depth) + testing::model_offset(m);
    BOOST_TEST(*d.family_q_excess == expected / 4, boost::test_tools::tolerance(1e-12));
    BOOST_TEST(*d.family_q_lo <= *d.family_q_excess);
    BOOST_TEST(*d.family_q_excess <= *d.family_q_hi);
    BOOST_TEST(d.separates());
  }
  BOOST_TEST(pc.separated_depths() == 5);

  report::render_figures(fx.dir);
  const auto result = report::write_report(fx.dir);
  const std::string md = read_text_file(result.markdown);
  BOOST_TEST(md.find("4 models, 20 cells, 400 SAE x activation pairs, 25 SAEs.") != std::string::npos);
  BOOST_TEST(md.find("Positive control alpha-control (of alpha) left out") != std::string::npos);
  BOOST_TEST(md.find("## Positive control") != std::string::npos);
  BOOST_TEST(md.find("| 0.20 | alpha-control_layer1 <-> alpha_layer1 | 0.990 | [0.985, 0.995] | 0.950 |") != std::string::npos,
             md.substr(md.find("## Positive control"), 2000));
  BOOST_TEST(md.find("The control separates from the cross-family pairs at every depth (5 of 5)") != std::string::npos);
  BOOST_TEST(fs::exists(fx.dir / "report" / "tables" / "positive_control_alpha-control.csv"));
  const std::string pairs = read_text_file(fx.dir / "report" / "tables" / "pairs.csv");
  BOOST_TEST(std::count(pairs.begin(), pairs.end(), '\n') == 401);  // header + the 400 main pairs
  BOOST_TEST(pairs.find("alpha-control") == std::string::npos);
  const json figures = read_json_file(fx.dir / "figures" / "figures.json");
  for (const auto& f : figures["figures"]) BOOST_TEST(f["name"].get<std::string>().find("alpha-control") == std::string::npos);
  const json analysis = read_json_file(result.analysis);
  BOOST_TEST(analysis["positive_controls"][0]["separated_depths"] == 5);
  BOOST_TEST(analysis["positive_controls"][0]["depths"][0]["q_excess_ci"][0].get<double>() == 0.985,
             boost::test_tools::tolerance(1e-12));

  // A control that transfers no better than the families does not separate, and the report says so.
  testing::FixtureOptions weak = with_control;
  weak.control_q_excess = 0.2;  // below every depth's cross-family interval
  const auto wfx = testing::make_run_fixture(testing::fresh_dir("report_control_weak"), weak);
  const std::string weak_md = read_text_file(report::write_report(wfx.dir).markdown);
  BOOST_TEST(weak_md.find("The control does not separate from the cross-family pairs at any of 5 depths") !=
             std::string::npos);
  // ... and reads it against how linearly related the twins are (the fixture's map_r2 is 0.5 everywhere).
  BOOST_TEST(weak_md.find("the best linear map between them (map R2, ridge, held out) explains 0.50 to 0.50 of the "
                          "twin's variance") != std::string::npos);
  BOOST_TEST(md.find("the best linear map between them") == std::string::npos);  // not when it separates
}
