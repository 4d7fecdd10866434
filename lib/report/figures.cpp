#include "report/figures.hpp"

#include <cmath>
#include <sstream>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/log.hpp"
#include "report/gnuplot.hpp"

namespace strata::report {
namespace fs = std::filesystem;
using nlohmann::json;

json FigureRecord::to_json() const {
  return {{"name", name},
          {"caption", caption},
          {"title", title},
          {"xlabel", xlabel},
          {"ylabel", ylabel},
          {"width_in", width_in},
          {"height_in", height_in},
          {"dpi", dpi},
          {"width_px", static_cast<int>(std::lround(width_in * dpi))},
          {"height_px", static_cast<int>(std::lround(height_in * dpi))},
          {"png", png.generic_string()},
          {"pdf", pdf.generic_string()},
          {"caption_file", caption_file.generic_string()}};
}

namespace {

// Colour-blind-safe qualitative palette (Okabe-Ito) for one line per model or SAE.
const std::vector<std::string> kLineColours = {"#0072B2", "#D55E00", "#009E73", "#CC79A7",
                                               "#E69F00", "#56B4E9", "#000000", "#F0E442"};

std::string colour(size_t i) { return kLineColours[i % kLineColours.size()]; }

std::string number(double v) {
  if (!std::isfinite(v)) return "NaN";
  return fmt::format("{:.6g}", v);
}

struct Plot {
  FigureRecord record;
  PlotSize size;
  std::string body;
};

class FigureWriter {
 public:
  FigureWriter(fs::path run_dir, const FigureOptions& options) : run_dir_(std::move(run_dir)), options_(options) {}

  void write(Plot plot) {
    plot.size.dpi = options_.dpi;
    plot.size.font_pt = options_.font_pt;
    FigureRecord& r = plot.record;
    r.width_in = plot.size.width_in;
    r.height_in = plot.size.height_in;
    r.dpi = options_.dpi;
    r.png = fs::path("figures") / (r.name + ".png");
    r.pdf = fs::path("figures") / (r.name + ".pdf");
    r.caption_file = fs::path("figures") / (r.name + ".caption.txt");
    render_gnuplot(plot.body, plot.size, run_dir_ / r.png, run_dir_ / r.pdf);
    atomic_write_text(run_dir_ / r.caption_file, r.caption + "\n");
    log::info("figure {}: {}x{} px ({:.2f}x{:.2f} in at {} DPI) + vector PDF", r.name, plot.size.width_px(),
              plot.size.height_px(), r.width_in, r.height_in, r.dpi);
    records_.push_back(r);
  }

  std::vector<FigureRecord>& records() { return records_; }

 private:
  fs::path run_dir_;
  FigureOptions options_;
  std::vector<FigureRecord> records_;
};

std::string axis_labels(const std::string& xlabel, const std::string& ylabel) {
  return fmt::format("set xlabel {}\nset ylabel {}\n", gnuplot_label(xlabel), gnuplot_label(ylabel));
}

// The seed's bands as a stepped palette on [0, 1], with the band names on the colour box.
std::string band_palette(const Bands& b) {
  return fmt::format(
      "set cbrange [0:1]\n"
      "set palette defined (0 '#b2182b', {0} '#b2182b', {0} '#ef8a62', {1} '#ef8a62', {1} '#fddbc7', "
      "{2} '#fddbc7', {2} '#4dac26', 1 '#4dac26')\n"
      "set cbtics ('model-specific' {3}, 'diverging' {4}, 'partial' {5}, 'universal' {6}) scale 0\n"
      "set cblabel 'q_{{excess}} band (edges {0}, {1}, {2})'\n",
      b.diverging, b.partial, b.universal, b.diverging / 2, (b.diverging + b.partial) / 2,
      (b.partial + b.universal) / 2, (b.universal + 1) / 2);
}

// A matrix heatmap of q_excess over `cells` x `cells` (missing pairs are blank).
Plot heatmap_plot(const TransferResults& results, const std::vector<std::string>& cells, bool label_with_model,
                  const FigureOptions& options) {
  const size_t n = cells.size();
  Plot plot;
  const double side = std::clamp(2.5 + 0.28 * static_cast<double>(n), 5.0, 9.0);
  plot.size.width_in = side + 1.6;  // room for the colour box and its band names
  plot.size.height_in = side;
  std::ostringstream s;
  s << "$matrix << EOD\n";
  std::ostringstream labels;
  labels << "$values << EOD\n";
  for (size_t i = 0; i < n; ++i) {
    for (size_t j = 0; j < n; ++j) {
      const PairResult* pair = results.find(cells[i], cells[j]);
      std::optional<double> q = pair ? pair->metric("q_excess") : std::nullopt;
      s << (j ? " " : "") << (q ? number(*q) : "NaN");
      if (q) labels << j << " " << i << " \"" << fmt::format("{:.2f}", *q) << "\"\n";
    }
    s << "\n";
  }
  s << "EOD\n";
  labels << "EOD\n";
  const bool annotate = static_cast<int>(n) <= options.max_annotated_cells;
  if (annotate) s << labels.str();

  auto tic_label = [&](const std::string& cell) {
    const std::string model = results.model_of(cell);
    const int layer = results.layer_of(cell);
    return label_with_model ? fmt::format("{}:{}", model, layer) : fmt::format("L{}", layer);
  };
  std::string xtics, ytics;
  for (size_t i = 0; i < n; ++i) {
    const std::string tic = fmt::format("{}{} {}", i ? ", " : "", gnuplot_label(tic_label(cells[i])), i);
    xtics += tic;
    ytics += tic;
  }
  const int tic_font = n > 24 ? 5 : (n > 12 ? 7 : 8);
  s << fmt::format("set xrange [-0.5:{}]\nset yrange [{}:-0.5]\n", n - 0.5, n - 0.5);
  s << "set xtics (" << xtics << ") rotate by 60 right font \"," << tic_font << "\" nomirror\n";
  s << "set ytics (" << ytics << ") font \"," << tic_font << "\" nomirror\n";
  s << "set size square\nset tics scale 0\nset rmargin 18\n";
  s << band_palette(options.analysis->bands);
  // Lines between the models' blocks.
  if (label_with_model) {
    for (size_t i = 1; i < n; ++i) {
      if (results.model_of(cells[i]) == results.model_of(cells[i - 1])) continue;
      s << fmt::format("set arrow from first {0}, graph 0 to first {0}, graph 1 nohead front lw 1.5 lc rgb 'black'\n",
                       i - 0.5);
      s << fmt::format("set arrow from graph 0, first {0} to graph 1, first {0} nohead front lw 1.5 lc rgb 'black'\n",
                       i - 0.5);
    }
  }
  const double value_font = std::clamp(110.0 / static_cast<double>(std::max<size_t>(n, 1)), 4.0, 9.0);
  s << "plot $matrix matrix with image pixels notitle";
  if (annotate) s << fmt::format(", $values using 1:2:3 with labels font \",{:.1f}\" tc rgb 'black' notitle", value_font);
  s << "\n";
  plot.body = s.str();
  return plot;
}

Plot transfer_heatmap(const TransferResults& results, const FigureOptions& options) {
  Plot plot = heatmap_plot(results, results.cells, true, options);
  auto& r = plot.record;
  r.name = "layer_transfer_heatmap";
  r.title = "Feature transfer quality (q_excess) for every SAE x activation pair";
  r.xlabel = "target activations (model:layer)";
  r.ylabel = "source SAE (model:layer)";
  r.caption = fmt::format(
      "q_excess of each source SAE (rows) on each target cell's mapped activations (columns), {} cells "
      "({} pairs); black lines separate models; colours are the seed's bands (>= {} universal, {}-{} partial, "
      "{}-{} diverging, < {} model-specific).",
      results.cells.size(), results.pairs.size(), options.analysis->bands.universal, options.analysis->bands.partial,
      options.analysis->bands.universal, options.analysis->bands.diverging, options.analysis->bands.partial,
      options.analysis->bands.diverging);
  plot.body = axis_labels(r.xlabel, r.ylabel) + plot.body;
  return plot;
}

Plot within_model_heatmap(const TransferResults& results, const std::string& model, const FigureOptions& options) {
  std::vector<std::string> cells;
  for (const auto& cell : results.cells)
    if (results.model_of(cell) == model) cells.push_back(cell);
  Plot plot = heatmap_plot(results, cells, false, options);
  plot.size.width_in = std::min(plot.size.width_in, 6.5);
  plot.size.height_in = std::min(plot.size.height_in, 4.9);
  auto& r = plot.record;
  r.name = "within_model_heatmap_" + model;
  r.title = "Within-model transfer: " + model;
  r.xlabel = "target layer of " + model;
  r.ylabel = "source SAE layer of " + model;
  r.caption = fmt::format("q_excess between the {} layers of {} (identity map after scaling); colours are the "
                          "seed's bands.",
                          cells.size(), model);
  plot.body = axis_labels(r.xlabel, r.ylabel) + plot.body;
  return plot;
}

Plot universality_curve(const TransferResults& results, const FigureOptions& options) {
  Plot plot;
  plot.size.width_in = 6.5;
  plot.size.height_in = 4.2;
  auto& r = plot.record;
  r.name = "layer_universality_curve";
  r.title = "Cross-model universality by relative depth";
  r.xlabel = "relative depth (layer / n_layers)";
  r.ylabel = "mean cross-model q_excess (solid), CKA (dashed)";
  std::ostringstream s;
  s << axis_labels(r.xlabel, r.ylabel);
  bool any_ci = false, any_cka = false;
  double y_min = 0;
  for (size_t m = 0; m < results.models.size(); ++m) {
    s << "$model" << m << " << EOD\n";
    for (const auto& cell : results.universality) {
      if (cell.model != results.models[m]) continue;
      any_ci |= cell.ci_lo.has_value();
      any_cka |= cell.mean_cross_model_cka.has_value();
      const double lo = cell.ci_lo.value_or(cell.mean_cross_model_q_excess);
      y_min = std::min({y_min, lo, cell.mean_cross_model_q_excess});
      s << number(cell.relative_depth) << " " << number(cell.mean_cross_model_q_excess) << " " << number(lo) << " "
        << number(cell.ci_hi.value_or(cell.mean_cross_model_q_excess)) << " "
        << number(cell.mean_cross_model_cka.value_or(std::nan(""))) << "\n";
    }
    s << "EOD\n";
  }
  const Bands& b = options.analysis->bands;
  s << fmt::format("set xrange [0:1]\nset yrange [{}:1.05]\nset grid ytics lc rgb '#dddddd'\n",
                   std::floor(y_min * 10) / 10);
  for (double edge : {b.universal, b.partial, b.diverging})
    s << fmt::format("set arrow from graph 0, first {0} to graph 1, first {0} nohead dt 3 lc rgb '#888888'\n", edge);
  s << fmt::format("set label 'universal' at graph 0.01, first {} font ',7' tc rgb '#666666'\n", b.universal + 0.02);
  s << fmt::format("set label 'partial' at graph 0.01, first {} font ',7' tc rgb '#666666'\n", b.partial + 0.02);
  s << fmt::format("set label 'diverging' at graph 0.01, first {} font ',7' tc rgb '#666666'\n", b.diverging + 0.02);
  s << "set key outside right top font ',8'\nset style fill transparent solid 0.18 noborder\n";
  std::vector<std::string> layers;
  for (size_t m = 0; m < results.models.size(); ++m) {
    const std::string c = colour(m);
    if (any_ci) layers.push_back(fmt::format("$model{} using 1:3:4 with filledcurves lc rgb '{}' notitle", m, c));
    layers.push_back(fmt::format("$model{} using 1:2 with linespoints lw 1.5 pt 7 ps 0.6 lc rgb '{}' title {}", m, c,
                                 gnuplot_label(results.models[m])));
    if (any_cka)
      layers.push_back(fmt::format("$model{} using 1:5 with linespoints dt 2 lw 1 pt 6 ps 0.5 lc rgb '{}' title {}", m,
                                   c, gnuplot_label(results.models[m] + " CKA")));
  }
  s << "plot " << fmt::format("{}", fmt::join(layers, ", \\\n  ")) << "\n";
  plot.body = s.str();
  r.caption = fmt::format(
      "Mean cross-model q_excess of each cell's SAE (solid, {}) and mean cross-model linear CKA (dashed) against "
      "relative depth, one colour per model; dotted lines mark the seed's band edges.",
      any_ci ? fmt::format("shaded: {} bootstrap CI over sequences", ci_label(options.analysis->ci_level))
             : std::string("no CI recorded"));
  return plot;
}

Plot training_curves(const std::vector<SaeSummary>& saes, const FigureOptions&) {
  Plot plot;
  plot.size.width_in = 7.0;
  plot.size.height_in = 3.6;
  auto& r = plot.record;
  r.name = "sae_training_curves";
  r.title = "SAE training curves";
  r.xlabel = "training tokens";
  r.ylabel = "training loss (left), L0 (right)";
  std::ostringstream data;
  std::vector<std::string> loss_layers, l0_layers;
  std::string x_name = "tokens";
  for (size_t i = 0; i < saes.size(); ++i) {
    Curve curve = load_training_curve(saes[i].dir / "training_curve.csv");
    auto x = curve.column("tokens");
    if (!x) {
      x = curve.column("step");
      x_name = "step";
    }
    auto loss = curve.column("loss");
    auto l0 = curve.column("l0");
    if (!x || !loss || curve.rows.empty()) continue;
    data << "$sae" << i << " << EOD\n";
    for (const auto& row : curve.rows)
      data << number(row[*x]) << " " << number(row[*loss]) << " " << (l0 ? number(row[*l0]) : "NaN") << "\n";
    data << "EOD\n";
    const std::string c = colour(i);
    const std::string dash = fmt::format("dt {}", 1 + static_cast<int>(i / kLineColours.size()) % 4);
    loss_layers.push_back(fmt::format("$sae{} using 1:2 with lines lw 1 {} lc rgb '{}' title {}", i, dash, c,
                                      gnuplot_label(saes[i].cell)));
    if (l0) l0_layers.push_back(fmt::format("$sae{} using 1:3 with lines lw 1 {} lc rgb '{}' notitle", i, dash, c));
  }
  if (loss_layers.empty()) return plot;  // no curves: body stays empty and the figure is skipped
  if (x_name == "step") r.xlabel = "training step";
  std::ostringstream s;
  s << data.str();
  s << "set multiplot layout 1,2\n";
  s << axis_labels(r.xlabel, "training loss") << "set logscale y\nset key outside right font ',5' spacing 0.8\n";
  s << "set lmargin 8\nset size 0.62,1\nset origin 0,0\nset format x '%.0s%c'\nset xtics rotate by 30 right\n";
  s << "plot " << fmt::format("{}", fmt::join(loss_layers, ", \\\n  ")) << "\n";
  s << "unset key\nunset logscale y\nset size 0.38,1\nset origin 0.62,0\n";
  s << axis_labels(r.xlabel, "L0 (active latents per token)");
  if (!l0_layers.empty()) s << "plot " << fmt::format("{}", fmt::join(l0_layers, ", \\\n  ")) << "\n";
  s << "unset multiplot\n";
  plot.body = s.str();
  r.caption = fmt::format("Training loss (log scale) and L0 against {} for the {} SAEs of the run (training_curve.csv).",
                          r.xlabel, loss_layers.size());
  return plot;
}

Plot l0_dead_bars(const std::vector<SaeSummary>& saes) {
  Plot plot;
  plot.size.width_in = 7.0;
  plot.size.height_in = 4.8;
  auto& r = plot.record;
  r.name = "sae_l0_dead_fraction";
  r.title = "SAE sparsity and dead latents";
  r.xlabel = "SAE (model:layer)";
  r.ylabel = "held-out L0 (top), dead-latent fraction (bottom)";
  std::ostringstream s;
  s << "$bars << EOD\n";
  std::string tics;
  for (size_t i = 0; i < saes.size(); ++i) {
    s << i << " " << number(saes[i].metric("l0").value_or(std::nan(""))) << " "
      << number(saes[i].metric("dead_fraction").value_or(std::nan(""))) << "\n";
    tics += fmt::format("{}{} {}", i ? ", " : "", gnuplot_label(fmt::format("{}:{}", saes[i].model, saes[i].layer)), i);
  }
  s << "EOD\n";
  const int tic_font = saes.size() > 24 ? 5 : 7;
  s << "set multiplot layout 2,1\nset style fill solid 0.75 border -1\nset boxwidth 0.7\n";
  s << fmt::format("set xrange [-0.6:{}]\n", saes.size() - 0.4);
  s << "set xtics (" << tics << ") rotate by 60 right font \"," << tic_font << "\" nomirror\n";
  s << "set yrange [0:*]\nset offsets 0, 0, graph 0.08, 0\nset grid ytics lc rgb '#dddddd'\n";
  s << axis_labels("", "L0 (active latents / token)") << "unset xlabel\n";
  s << "plot $bars using 1:2 with boxes lc rgb '#0072B2' notitle\n";
  s << axis_labels(r.xlabel, "dead-latent fraction") << "set yrange [0:*]\n";
  s << "plot $bars using 1:3 with boxes lc rgb '#D55E00' notitle\n";
  s << "unset multiplot\n";
  plot.body = s.str();
  r.caption = fmt::format("Held-out L0 (mean active latents per token) and fraction of dead latents for each of the "
                          "{} SAEs, from saes/*/cfg.json metrics.",
                          saes.size());
  return plot;
}

}  // namespace

std::vector<FigureRecord> render_figures(const fs::path& run_dir, const FigureOptions& given) {
  if (!fs::is_directory(run_dir)) fail("run directory {} does not exist", run_dir.string());
  options::validate(given, "figures");  // the rules of the [figures] table (FigureOptions::fields())
  FigureOptions options = given;
  if (!options.analysis) options.analysis = analysis_options_for_run(run_dir);
  FigureWriter writer(run_dir, options);
  json skipped = json::array();

  if (fs::exists(run_dir / "transfer" / "transfer_matrix.json")) {
    // The main matrix: positive controls are reported in the report's own section, not in these figures.
    const TransferResults results = without_models(load_transfer(run_dir), options.analysis->controls);
    writer.write(transfer_heatmap(results, options));
    if (!results.universality.empty()) writer.write(universality_curve(results, options));
    else skipped.push_back({{"name", "layer_universality_curve"}, {"reason", "no layer_universality_scores"}});
    for (const auto& model : results.models) writer.write(within_model_heatmap(results, model, options));
  } else {
    log::warn("figures: {} missing; transfer figures skipped", (run_dir / "transfer" / "transfer_matrix.json").string());
    skipped.push_back({{"name", "layer_transfer_heatmap"}, {"reason", "transfer/transfer_matrix.json missing"}});
    skipped.push_back({{"name", "layer_universality_curve"}, {"reason", "transfer/transfer_matrix.json missing"}});
  }

  const auto saes = load_saes(run_dir);
  if (!saes.empty()) {
    Plot curves = training_curves(saes, options);
    if (!curves.body.empty()) writer.write(std::move(curves));
    else skipped.push_back({{"name", "sae_training_curves"}, {"reason", "no training_curve.csv"}});
    writer.write(l0_dead_bars(saes));
  } else {
    skipped.push_back({{"name", "sae_training_curves"}, {"reason", "no saes/*/cfg.json"}});
    skipped.push_back({{"name", "sae_l0_dead_fraction"}, {"reason", "no saes/*/cfg.json"}});
  }

  auto& records = writer.records();
  if (records.empty()) fail("{}: nothing to plot (no transfer/transfer_matrix.json, no saes/*/cfg.json)", run_dir.string());
  json index = {{"dpi", options.dpi}, {"figures", json::array()}, {"skipped", skipped}};
  for (const auto& r : records) index["figures"].push_back(r.to_json());
  atomic_write_text(run_dir / "figures" / "figures.json", index.dump(2) + "\n");
  return records;
}

}  // namespace strata::report
