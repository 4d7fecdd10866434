#include "pipeline/pipeline.hpp"

#include <map>
#include <sstream>

#include <fmt/ranges.h>

#include "capture/capture.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "io/activation_store.hpp"
#include "io/checkpoint.hpp"
#include "models/transformer.hpp"
#include "report/figures.hpp"
#include "report/report.hpp"
#include "sae/formats.hpp"
#include "sae/train.hpp"
#include "text/dataset.hpp"
#include "transfer/transfer.hpp"

namespace strata::pipeline {
namespace fs = std::filesystem;
using harness::Experiment;
using harness::StepContext;
using nlohmann::json;

json recorded_cells(harness::RunDir& run) {
  std::lock_guard lock(run.mutex());
  const json& cells = run.manifest().section("cells");
  if (!cells.is_array() || cells.empty())
    fail("{} records no captured cells: run the capture step first (strata run EXP --resume {} --steps capture)",
         run.root().string(), run.root().string());
  return cells;
}

namespace {

std::string cell_name(const std::string& model, int64_t layer) { return fmt::format("{}_layer{}", model, layer); }

// Run-relative paths of every artifact the given steps recorded (provenance inputs).
std::vector<std::string> artifacts_of(const StepContext& ctx, std::initializer_list<const char*> steps) {
  std::vector<std::string> out;
  for (const char* step : steps)
    for (const auto& record : ctx.artifacts_of(step)) out.push_back(record.path);
  return out;
}

// The activation-store files of one cell, run-relative (its shards and meta.json).
std::vector<std::string> store_inputs(StepContext& ctx, const std::string& model, int64_t layer) {
  std::string prefix = "activations/" + io::store_base_name(model, static_cast<int>(layer));
  std::vector<std::string> out;
  for (const auto& record : ctx.artifacts_of("capture"))
    if (record.path.rfind(prefix + ".", 0) == 0 || record.path.rfind(prefix + "-", 0) == 0) out.push_back(record.path);
  if (out.empty()) fail("cell {}: capture recorded no activation store ({}*)", cell_name(model, layer), prefix);
  return out;
}

// ---------------------------------------------------------------- capture

void capture_step(StepContext& ctx) {
  const auto& dataset = ctx.config(&Experiment::dataset);
  const auto& capture_config = ctx.config(&Experiment::capture);
  const auto documents = [&] {
    return text::DocumentReader(dataset.resolved_spec, dataset.num_documents, dataset.jsonl_template);
  };

  json cells = json::array();
  json documents_read = json::object();
  int64_t tokens = 0;
  // Every checkpoint is resolved before the first capture: a typo in the last model's path must not be
  // found only after the other models were captured.
  const auto& models = ctx.config(&Experiment::models);
  std::map<std::string, fs::path> checkpoints;
  for (const auto& model : models) checkpoints[model.name] = io::resolve_checkpoint(model.checkpoint_spec());
  for (const auto& model : models) {
    if (!ctx.selects_model(model.name)) continue;  // another unit captures it
    const fs::path& checkpoint = checkpoints.at(model.name);
    capture::CaptureOptions options;
    options.layers.assign(model.layers.begin(), model.layers.end());
    options.depths = model.depths;
    options.batch_size = dataset.batch_size;
    options.num_batches = dataset.num_batches;
    options.max_tokens = dataset.tokens;
    options.seq_len = dataset.seq_len;
    options.store_dtype = io::parse_store_dtype(capture_config.store_dtype);
    options.keep_special = capture_config.keep_special;
    options.norm_outlier_factor = capture_config.norm_outlier_factor;
    options.shard_size_bytes = static_cast<int64_t>(capture_config.shard_size_mb * 1024.0 * 1024.0);
    options.device = ctx.device;
    options.compute_dtype = models::parse_compute_dtype(model.dtype, fmt::format("model '{}' dtype", model.name));
    options.packing = text::parse_packing_policy(dataset.packing);
    options.tokenizer_dir = model.tokenizer_path.string();
    log::info("Capturing {} from {}", model.name, checkpoint.string());
    capture::CaptureResult result =
        capture::capture_model(model.name, checkpoint, documents(), dataset.resolved_spec, options, ctx.path("activations"));

    std::vector<std::string> inputs = {checkpoint.string()};
    if (!model.tokenizer_path.empty()) inputs.push_back(model.tokenizer_path.string());
    for (const auto& file : result.files) ctx.record_artifact(ctx.run.relative(file), inputs);
    for (int layer : result.layers) {
      const json& meta = result.metas.at(std::to_string(layer));
      cells.push_back({{"name", cell_name(model.name, layer)},
                       {"model", model.name},
                       {"layer", layer},
                       {"n_layers", meta.at("n_layers")},
                       {"relative_depth", meta.at("relative_depth")},
                       {"hidden_size", meta.at("hidden_size")},
                       {"rows", meta.at("rows")}});
    }
    tokens += result.tokens;
    documents_read[model.name] = result.metas.begin()->at("documents_read");
  }
  {
    std::lock_guard lock(ctx.run.mutex());
    ctx.run.manifest().section("cells") = cells;
    ctx.run.save_manifest();
  }
  ctx.set_summary("cells", cells.size());
  ctx.set_summary("input_tokens", tokens);
  ctx.set_summary("documents_read", documents_read);
}

// ---------------------------------------------------------------- train

// Trains one SAE into `relative_dir` and records its files; a diverged SAE is recorded as a failure of
// this cell while the others go on.
void train_one(StepContext& ctx, const json& cell, const std::string& relative_dir, uint64_t seed) {
  const std::string name = cell.at("name");
  const std::string model = cell.at("model");
  const int64_t layer = cell.at("layer");
  const double depth = cell.at("relative_depth");
  sae::TrainOptions options = ctx.config(&Experiment::sae).for_depth(depth);  // passed through as declared
  options.resume = true;  // an interrupted step resumes each SAE from its training checkpoint
  options.keep_checkpoint = false;
  options.name = name;
  std::vector<std::string> inputs = store_inputs(ctx, model, layer);
  io::ActivationStore store = io::ActivationStore::open(ctx.path("activations"), model, static_cast<int>(layer));
  json provenance = {{"model", model},
                     {"layer", layer},
                     {"n_layers", cell.at("n_layers")},
                     {"relative_depth", depth},
                     {"hook_name", sae::hook_name(layer)},
                     {"seed", seed}};
  log::info("Training SAE for {} ({}, l1 {}, seed {})", relative_dir, options.architecture, options.l1, seed);
  options.device = ctx.device;
  sae::TrainResult result = sae::train_sae(store, options, seed, ctx.path(relative_dir), provenance);
  if (!result.ok) {
    log::warn("SAE {} failed: {}", relative_dir, result.error);
    ctx.record_failure(name, result.error);
  }
  if (fs::is_directory(ctx.path(relative_dir))) ctx.record_directory(relative_dir, inputs);
}

// Evenly spaced rows of the training split (deterministic), for estimating a norm scaling factor.
torch::Tensor training_sample(const io::ActivationStore& store, double heldout_fraction, int64_t want) {
  sae::RowRanges train = sae::training_ranges(store, heldout_fraction);
  int64_t total = 0;
  for (const auto& [b, e] : train) total += e - b;
  want = std::min(want, total);
  if (want <= 0) fail("the activation store has no training rows to estimate a norm scaling factor from");
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < want; ++i) {
    int64_t pos = int64_t((__int128)i * total / want);
    for (const auto& [b, e] : train) {
      if (pos < e - b) {
        ids.push_back(b + pos);
        break;
      }
      pos -= e - b;
    }
  }
  return store.read_rows(torch::tensor(ids, torch::kInt64));
}

// A published SAE for one cell instead of training: loaded in its own format, its hook checked against
// the layer, an expected_average_only_in scaling factor estimated from the cell's training rows (as
// SAELens does) and folded, evaluated on the held-out split like a trained SAE, and written to
// `relative_dir` in strata's SAELens layout with cfg "published" = {source, resolved, format, sha256,
// hook_name, norm_scaling_factor}. Returns that record (for the manifest's cells entry).
json import_published(StepContext& ctx, const json& cell, const std::string& spec, const std::string& relative_dir) {
  const std::string name = cell.at("name");
  const std::string model = cell.at("model");
  const int64_t layer = cell.at("layer");
  const double depth = cell.at("relative_depth");
  fs::path source;
  sae::LoadedSae loaded;
  try {
    source = sae::resolve_sae_source(spec);
    loaded = sae::load_sae(source);
  } catch (const Error& e) {
    fail("model '{}': saes[\"{}\"] = \"{}\": {}", model, layer, spec, e.what());
  }
  sae::check_hook_layer(loaded, layer, name);
  io::ActivationStore store = io::ActivationStore::open(ctx.path("activations"), model, static_cast<int>(layer));
  if (loaded.sae.d_in() != store.dim())
    fail("cell {}: the {} SAE {} has d_in {} but the captured activations have width {}", name, loaded.format, spec,
         loaded.sae.d_in(), store.dim());
  const sae::TrainOptions config = ctx.config(&Experiment::sae).for_depth(depth);
  sae::Sae converted = loaded.sae;
  json scaling = nullptr;
  if (converted.normalize_activations == "expected_average_only_in") {
    double s = sae::Sae::estimate_norm_scaling_factor(training_sample(store, config.heldout_fraction, config.b_dec_init_rows));
    converted.fold_norm_scaling_factor(s);
    scaling = s;
  }
  log::info("Using the published {} SAE {} for {} (sha256 {})", loaded.format, spec, name, sae::sae_sha256(loaded).substr(0, 12));
  sae::EvalResult eval =
      sae::evaluate_sae(converted, store, sae::heldout_ranges(store, config.heldout_fraction), config.batch_size, config.dense_threshold);
  json published = {{"source", spec},
                    {"resolved", source.string()},
                    {"format", loaded.format},
                    {"sha256", sae::sae_sha256(loaded)},
                    {"hook_name", loaded.hook_name ? json(*loaded.hook_name) : json(nullptr)},
                    {"norm_scaling_factor", scaling}};
  json metrics = eval.to_json();
  metrics["diverged"] = false;  // not trained here: no convergence record
  for (const char* key : {"model", "layer", "n_layers", "relative_depth"}) metrics[key] = cell.at(key);
  json cfg = {{"model", model},
              {"layer", layer},
              {"n_layers", cell.at("n_layers")},
              {"relative_depth", depth},
              {"hook_name", sae::hook_name(layer)},
              {"dtype", "float32"},
              {"published", published},
              {"published_cfg", loaded.sae.cfg},
              {"metrics", metrics}};
  if (converted.cfg.contains("folded_norm_scaling_factor"))
    cfg["folded_norm_scaling_factor"] = converted.cfg["folded_norm_scaling_factor"];
  converted.cfg = cfg;
  fs::remove_all(ctx.path(relative_dir));
  converted.save(ctx.path(relative_dir));
  std::vector<std::string> inputs = store_inputs(ctx, model, layer);
  for (const auto& file : loaded.files) inputs.push_back(fs::absolute(file).string());
  ctx.record_directory(relative_dir, inputs);
  return published;
}

void train_step(StepContext& ctx) {
  json cells = recorded_cells(ctx.run);
  // Published SAEs by cell name; each must name a captured layer.
  std::map<std::string, std::string> published;
  for (const auto& model : ctx.config(&Experiment::models))
    for (const auto& [layer, spec] : model.saes) {
      bool captured = false;
      std::vector<int64_t> layers;
      for (const auto& cell : cells)
        if (cell.at("model") == model.name) {
          layers.push_back(cell.at("layer").get<int64_t>());
          captured = captured || layers.back() == layer;
        }
      if (!captured)
        fail("model '{}': saes key \"{}\" names layer {}, which was not captured (captured layers: {})", model.name,
             layer, layer, fmt::join(layers, ", "));
      published[cell_name(model.name, layer)] = spec;
    }
  json sources = json::object();
  size_t trained = 0, imported = 0;
  std::map<std::string, int> slots;  // cells of each model so far: a cell's slot is its position in its model
  for (const auto& cell : cells) {
    const std::string name = cell.at("name");
    const std::string model = cell.at("model");
    if (!ctx.selects_cell(model, slots[model]++)) continue;  // another unit trains it
    ++trained;
    if (auto it = published.find(name); it != published.end()) {
      sources[name] = import_published(ctx, cell, it->second, "saes/" + name);
      ++imported;
    } else {
      train_one(ctx, cell, "saes/" + name, ctx.seed_for(model, cell.at("layer")));
      sources[name] = {{"source", "trained"}, {"format", "strata"}};
    }
  }
  {
    // The report names each SAE's source and format from the manifest's cells entries.
    std::lock_guard lock(ctx.run.mutex());
    json& recorded = ctx.run.manifest().section("cells");
    for (auto& cell : recorded)
      if (sources.contains(cell.at("name").get<std::string>())) cell["sae"] = sources[cell.at("name").get<std::string>()];
    ctx.run.save_manifest();
  }
  size_t ceilings = 0;
  if (ctx.config(&Experiment::transfer, &harness::TransferConfig::ceiling)) {
    // The seed-to-seed ceiling: a second SAE, another seed, for the middle cell of each model. Kept out of
    // saes/ (which holds exactly one SAE per cell). A published middle cell has no seed-to-seed ceiling.
    for (const auto& model : ctx.config(&Experiment::models)) {
      if (!ctx.selects_ceiling(model.name)) continue;
      std::vector<json> own;
      for (const auto& cell : cells)
        if (cell.at("model") == model.name) own.push_back(cell);
      if (own.empty()) continue;
      const json& middle = own[own.size() / 2];
      if (published.count(middle.at("name").get<std::string>())) {
        log::info("No seed-to-seed ceiling for {}: its middle cell uses a published SAE", model.name);
        continue;
      }
      train_one(ctx, middle, "saes_ceiling/" + middle.at("name").get<std::string>(),
                ctx.seed_for(model.name + ":ceiling", middle.at("layer")));
      ++ceilings;
    }
  }
  ctx.set_summary("saes", trained);  // summed over the units of an executor run
  ctx.set_summary("published_saes", imported);
  ctx.set_summary("ceiling_saes", ceilings);
}

// ---------------------------------------------------------------- transfer

// The cells with a trained SAE (each cell without one is recorded as a failure when `record_failures`),
// and the provenance inputs of the transfer artifacts.
struct TransferCells {
  std::vector<transfer::Cell> cells;
  std::vector<std::string> sources;  // the names of the cells this context selects as sources
  std::vector<std::string> inputs;
};

TransferCells transfer_cells(StepContext& ctx, bool record_failures) {
  TransferCells out;
  std::map<std::string, int> slots;  // a cell's slot is its position in its model, as in the train units
  for (const auto& cell : recorded_cells(ctx.run)) {
    const std::string name = cell.at("name");
    const std::string model = cell.at("model");
    const int slot = slots[model]++;
    fs::path sae_dir = ctx.path("saes/" + name);
    if (!fs::exists(sae_dir / "sae_weights.safetensors")) {
      if (record_failures) {
        log::warn("Cell {} has no trained SAE; it is left out of the transfer matrix", name);
        ctx.record_failure(name, "no trained SAE (see the train step's failures); left out of the transfer matrix");
      }
      continue;
    }
    transfer::Cell c;
    c.name = name;
    c.model = model;
    c.layer = cell.at("layer").get<int>();
    c.n_layers = cell.at("n_layers").get<int>();
    c.store = ctx.path("activations/" + io::store_base_name(c.model, c.layer) + ".meta.json");
    c.sae_dir = sae_dir;
    if (fs::exists(ctx.path("saes_ceiling/" + name + "/sae_weights.safetensors"))) c.ceiling_sae_dir = ctx.path("saes_ceiling/" + name);
    for (const auto& input : store_inputs(ctx, c.model, c.layer)) out.inputs.push_back(input);
    if (ctx.selects_source(model, slot)) out.sources.push_back(name);
    out.cells.push_back(std::move(c));
  }
  for (const auto& input : artifacts_of(ctx, {"train"})) out.inputs.push_back(input);
  if (out.cells.size() < 2) fail("only {} cell(s) have a trained SAE; the transfer matrix needs at least 2", out.cells.size());
  return out;
}

transfer::TransferOptions transfer_options(const StepContext& ctx) {
  transfer::TransferOptions o = ctx.config(&Experiment::transfer);  // the [transfer] section is these options
  o.aligned_rows = false;  // rows pair through (document, byte offset), whatever the tokenizers
  o.device = ctx.device;
  return o;
}

void record_transfer(StepContext& ctx, const TransferCells& cells, const transfer::TransferResult& result) {
  for (const auto& file : result.files) ctx.record_artifact(ctx.run.relative(file), cells.inputs);
  ctx.set_summary("cells", cells.cells.size());
  ctx.set_summary("pairs", cells.cells.size() * cells.cells.size());
}

void transfer_step(StepContext& ctx) {
  const bool unit = ctx.unit && !ctx.unit->scratch.empty();
  TransferCells cells = transfer_cells(ctx, /*record_failures=*/!unit);  // a unit leaves them to the merge
  const uint64_t seed = ctx.seed_for();
  if (unit) {
    // One block of source cells: its pairs go to the unit's scratch file; the reduce merges the blocks.
    fs::create_directories(ctx.path(ctx.unit->scratch).parent_path());
    transfer::compute_transfer_partial(cells.cells, transfer_options(ctx), seed, cells.sources, ctx.path(ctx.unit->scratch));
    ctx.set_summary("source_cells", cells.sources.size());
    return;
  }
  record_transfer(ctx, cells, transfer::run_transfer(cells.cells, transfer_options(ctx), seed, ctx.path("transfer")));
}

// The reduce of the transfer units: the blocks' partial results merged into the four files run_transfer
// writes (the same bytes; transfer::merge_transfer), recorded with the in-process step's inputs.
void merge_transfer_units(StepContext& ctx, const std::vector<std::string>& scratch) {
  TransferCells cells = transfer_cells(ctx, /*record_failures=*/true);
  std::vector<fs::path> partials;
  for (const auto& file : scratch) partials.push_back(ctx.path(file));
  record_transfer(ctx, cells, transfer::merge_transfer(partials, ctx.path("transfer")));
}

// ---------------------------------------------------------------- figures, report, gates

// The analysis settings of the figures and the report: report::analysis_options, the one derivation
// (also behind `strata figures` and `strata report` on a run directory), applied to the sections it reads
// ([transfer] bands, bootstrap and ci_level; [gates] thresholds; [[models]] control_of), taken through
// the context so that a step calling this must declare all three. The bootstrap seed is the shared
// "analysis" seed, the same value analysis_options derives from the master seed, recorded in the manifest.
report::AnalysisOptions analysis_options(StepContext& ctx) {
  const json declared = {{"transfer", ctx.config_json("transfer")},
                         {"gates", ctx.config_json("gates")},
                         {"models", ctx.config_json("models")}};
  report::AnalysisOptions a = report::analysis_options(declared);
  a.bootstrap_seed = ctx.shared_seed("analysis");
  return a;
}

void figures_step(StepContext& ctx) {
  report::FigureOptions o = ctx.config(&Experiment::figures);
  o.analysis = analysis_options(ctx);
  auto figures = report::render_figures(ctx.run.root(), o);
  ctx.record_directory("figures", artifacts_of(ctx, {"transfer"}));
  ctx.set_summary("figures", figures.size());
}

json expected_cells(harness::RunDir& run) {
  json out = json::array();
  for (const auto& cell : recorded_cells(run))
    out.push_back({{"model", cell.at("model")}, {"layer", cell.at("layer")}, {"hidden_size", cell.at("hidden_size")}});
  return out;
}

// The report reads only what precedes it (never gates.json), so its bytes do not depend on history; it
// writes report/analysis.json, which the gates step then judges: one analysis per run.
void report_step(StepContext& ctx) {
  report::ReportOptions o;
  o.analysis = analysis_options(ctx);
  o.experiment_name = ctx.config(&Experiment::experiment, &harness::ExperimentInfo::name);
  report::ReportResult result = report::write_report(ctx.run.root(), o);
  ctx.record_directory("report", artifacts_of(ctx, {"train", "transfer", "figures"}));
  log::info("Report: {}", result.markdown.string());
}

void gates_step(StepContext& ctx, const GateHooks& gates) {
  json result = gates.evaluate(ctx.run.root(), ctx.config_json("gates"), expected_cells(ctx.run));
  gates.write(ctx.run.root(), result);
  ctx.record_artifact("gates/gates.json", artifacts_of(ctx, {"capture", "train", "transfer", "figures", "report"}));
  if (gates.format_table) {
    std::string table = gates.format_table(result);
    std::string line;
    for (std::istringstream in(table); std::getline(in, line);) log::info("{}", line);
  }
  ctx.set_summary("verdict", result.value("verdict", "unknown"));
}

}  // namespace

std::vector<harness::StepDefinition> step_table(const GateHooks& gates) {
  using harness::StepUnits;
  harness::StepFunction gates_function;
  if (gates.evaluate && gates.write) gates_function = [gates](StepContext& ctx) { gates_step(ctx, gates); };
  // config_keys: exactly the config each function reads through ctx.config() (it refuses any other part).
  return {
      {.name = "capture",
       .description = "residual-stream capture per (model, layer)",
       .run = capture_step,
       .config_keys = {"dataset", "capture", "models"},
       .inputs_from = {},
       .outputs = {"activations/{cell}_activations.meta.json", "activations/{cell}_activations*.safetensors"},
       .units = StepUnits::per_model},
      {.name = "train",
       .description = "one SAE per (model, layer)",
       .run = train_step,
       .config_keys = {"sae", "transfer.ceiling", "models"},
       .inputs_from = {"capture"},
       .outputs = {"saes/{cell}/", "saes_ceiling/{cell}/"},
       .units = StepUnits::per_cell},
      {.name = "transfer",
       .description = "layer x model transfer matrix",
       .run = transfer_step,
       .config_keys = {"transfer"},
       .inputs_from = {"capture", "train"},
       .outputs = {"transfer/transfer_matrix.json", "transfer/per_model_transfer_analysis.json",
                   "transfer/transfer_metrics.csv", "transfer/transfer_matrices.safetensors"},
       .units = StepUnits::source_cells,
       .merge_units = merge_transfer_units},
      {.name = "figures",
       .description = "publication figures",
       .run = figures_step,
       .config_keys = {"figures", "transfer", "gates", "models"},
       .inputs_from = {"train", "transfer"},
       .outputs = {"figures/"},
       .units = StepUnits::whole_run},
      {.name = "report",
       .description = "markdown report with tables",
       .run = report_step,
       .config_keys = {"transfer", "gates", "models", "experiment.name"},
       .inputs_from = {"capture", "train", "transfer", "figures"},
       .outputs = {"report/"},
       .units = StepUnits::whole_run},
      {.name = "gates",
       .description = "go/no-go gates",
       .run = gates_function,
       // models: gate 3 and the should-pass checks leave the positive controls (control_of) out of the main
       // matrix; gate 3 reads them from the run's config.resolved.json, written from this same config.
       .config_keys = {"gates", "models"},
       .inputs_from = {"capture", "train", "transfer", "figures", "report"},
       .outputs = {"gates/gates.json"},
       .units = StepUnits::whole_run},
  };
}

void register_steps(harness::StepRegistry& registry, const GateHooks& gates) {
  for (auto& step : step_table(gates)) registry.add(std::move(step));
}

}  // namespace strata::pipeline
