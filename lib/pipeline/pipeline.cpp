#include "pipeline/pipeline.hpp"

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
  const auto& exp = ctx.exp;
  const auto& dataset = exp.dataset;
  const auto documents = [&] {
    return text::DocumentReader(dataset.resolved_spec, dataset.num_documents, dataset.jsonl_template);
  };

  json cells = json::array();
  json documents_read = json::object();
  int64_t tokens = 0;
  // Every checkpoint is resolved before the first capture: a typo in the last model's path must not be
  // found only after the other models were captured.
  std::map<std::string, fs::path> checkpoints;
  for (const auto& model : exp.models) checkpoints[model.name] = io::resolve_checkpoint(model.checkpoint_spec());
  for (const auto& model : exp.models) {
    const fs::path& checkpoint = checkpoints.at(model.name);
    capture::CaptureOptions options;
    options.layers.assign(model.layers.begin(), model.layers.end());
    options.depths = model.depths;
    options.batch_size = dataset.batch_size;
    options.num_batches = dataset.num_batches;
    options.max_tokens = dataset.tokens;
    options.seq_len = dataset.seq_len;
    options.store_dtype = io::parse_store_dtype(exp.capture.store_dtype);
    options.keep_special = exp.capture.keep_special;
    options.norm_outlier_factor = exp.capture.norm_outlier_factor;
    options.shard_size_bytes = static_cast<int64_t>(exp.capture.shard_size_mb * 1024.0 * 1024.0);
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

sae::TrainOptions train_options(const harness::SaeConfig& s, const std::string& name) {
  sae::TrainOptions o;
  o.architecture = s.architecture;  // train_sae maps the alias "relu" to "standard"
  o.k = s.k;
  o.expansion = s.expansion;
  o.lr = s.lr;
  o.l1 = s.l1;
  o.adam_beta1 = s.adam_beta1;
  o.adam_beta2 = s.adam_beta2;
  o.adam_eps = s.adam_eps;
  o.lr_warmup_steps = s.lr_warmup_steps;
  o.l1_warmup_steps = s.l1_warmup_steps;
  o.epochs = s.epochs;
  o.min_epochs = s.min_epochs;
  o.convergence_tolerance = s.convergence_tolerance;
  o.batch_size = s.batch_size;
  o.heldout_fraction = s.heldout_fraction;
  o.b_dec_init = s.b_dec_init;
  o.b_dec_init_rows = s.b_dec_init_rows;
  o.shuffle_buffer_rows = s.shuffle_buffer_rows;
  o.dead_window_tokens = s.dead_window_tokens;
  o.aux_k = s.aux_k;
  o.aux_coefficient = s.aux_coefficient;
  o.resample_interval_steps = s.resample_interval_steps;
  o.dense_threshold = s.dense_threshold;
  o.checkpoint_interval_steps = s.checkpoint_interval_steps;
  o.resume = true;  // an interrupted step resumes each SAE from its training checkpoint
  o.keep_checkpoint = false;
  o.name = name;
  return o;
}

// Trains one SAE into `relative_dir` and records its files; a diverged SAE is recorded as a failure of
// this cell while the others go on.
void train_one(StepContext& ctx, const json& cell, const std::string& relative_dir, uint64_t seed) {
  const std::string name = cell.at("name");
  const std::string model = cell.at("model");
  const int64_t layer = cell.at("layer");
  const double depth = cell.at("relative_depth");
  harness::SaeConfig config = ctx.exp.sae_for(depth);
  std::vector<std::string> inputs = store_inputs(ctx, model, layer);
  io::ActivationStore store = io::ActivationStore::open(ctx.path("activations"), model, static_cast<int>(layer));
  json provenance = {{"model", model},
                     {"layer", layer},
                     {"n_layers", cell.at("n_layers")},
                     {"relative_depth", depth},
                     {"hook_name", sae::hook_name(layer)},
                     {"seed", seed}};
  log::info("Training SAE for {} ({}, l1 {}, seed {})", relative_dir, config.architecture, config.l1, seed);
  sae::TrainOptions options = train_options(config, name);
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
  harness::SaeConfig config = ctx.exp.sae_for(depth);
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
  for (const auto& model : ctx.exp.models)
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
  for (const auto& cell : cells) {
    const std::string name = cell.at("name");
    if (auto it = published.find(name); it != published.end()) {
      sources[name] = import_published(ctx, cell, it->second, "saes/" + name);
    } else {
      train_one(ctx, cell, "saes/" + name, ctx.seed_for(cell.at("model").get<std::string>(), cell.at("layer")));
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
  if (ctx.exp.transfer.ceiling) {
    // The seed-to-seed ceiling: a second SAE, another seed, for the middle cell of each model. Kept out of
    // saes/ (which holds exactly one SAE per cell). A published middle cell has no seed-to-seed ceiling.
    for (const auto& model : ctx.exp.models) {
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
  ctx.set_summary("saes", cells.size());
  ctx.set_summary("published_saes", published.size());
  ctx.set_summary("ceiling_saes", ceilings);
}

// ---------------------------------------------------------------- transfer

void transfer_step(StepContext& ctx) {
  const auto& t = ctx.exp.transfer;
  json cells = recorded_cells(ctx.run);
  std::vector<transfer::Cell> transfer_cells;
  std::vector<std::string> inputs;
  for (const auto& cell : cells) {
    const std::string name = cell.at("name");
    fs::path sae_dir = ctx.path("saes/" + name);
    if (!fs::exists(sae_dir / "sae_weights.safetensors")) {
      log::warn("Cell {} has no trained SAE; it is left out of the transfer matrix", name);
      ctx.record_failure(name, "no trained SAE (see the train step's failures); left out of the transfer matrix");
      continue;
    }
    transfer::Cell c;
    c.name = name;
    c.model = cell.at("model").get<std::string>();
    c.layer = cell.at("layer").get<int>();
    c.n_layers = cell.at("n_layers").get<int>();
    c.store = ctx.path("activations/" + io::store_base_name(c.model, c.layer) + ".meta.json");
    c.sae_dir = sae_dir;
    if (fs::exists(ctx.path("saes_ceiling/" + name + "/sae_weights.safetensors"))) c.ceiling_sae_dir = ctx.path("saes_ceiling/" + name);
    for (const auto& input : store_inputs(ctx, c.model, c.layer)) inputs.push_back(input);
    transfer_cells.push_back(std::move(c));
  }
  for (const auto& input : artifacts_of(ctx, {"train"})) inputs.push_back(input);
  if (transfer_cells.size() < 2) fail("only {} cell(s) have a trained SAE; the transfer matrix needs at least 2", transfer_cells.size());

  transfer::TransferOptions o;
  o.fit_fraction = t.fit_fraction;
  o.top_k = t.top_k;
  o.cka_permutations = t.cka_permutations;
  o.cka_max_tokens = t.cka_max_tokens;
  o.bootstrap = t.bootstrap;
  o.ci_level = t.ci_level;
  o.max_fit_tokens = t.max_fit_tokens;
  o.max_eval_tokens = t.max_eval_tokens;
  o.mmac_min_firings = t.mmac_min_firings;
  o.ridge_lambda = t.ridge_lambda;
  o.batch_size = t.batch_size;
  o.high_threshold = t.high_threshold;
  o.moderate_threshold = t.moderate_threshold;
  o.aligned_rows = false;  // rows pair through (document, byte offset), whatever the tokenizers
  transfer::TransferResult result = transfer::run_transfer(transfer_cells, o, ctx.seed_for(), ctx.path("transfer"));
  for (const auto& file : result.files) ctx.record_artifact(ctx.run.relative(file), inputs);
  ctx.set_summary("cells", transfer_cells.size());
  ctx.set_summary("pairs", transfer_cells.size() * transfer_cells.size());
}

// ---------------------------------------------------------------- figures, report, gates

// The figures and the report take their analysis settings from the run's config.resolved.json
// (report::analysis_options_for_run, the one derivation); its bootstrap seed is this shared seed, which
// is recorded in the manifest here.
void record_analysis_seed(StepContext& ctx) { ctx.shared_seed("analysis"); }

void figures_step(StepContext& ctx) {
  report::FigureOptions o;
  o.dpi = static_cast<int>(ctx.exp.figures.dpi);
  o.font_pt = ctx.exp.figures.font_pt;
  o.max_annotated_cells = static_cast<int>(ctx.exp.figures.max_annotated_cells);
  record_analysis_seed(ctx);
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

}  // namespace

void register_steps(harness::StepRegistry& registry, const GateHooks& gates) {
  registry.add("capture", capture_step);
  registry.add("train", train_step);
  registry.add("transfer", transfer_step);
  registry.add("figures", figures_step);
  // The report reads only what precedes it (never gates.json), so its bytes do not depend on history;
  // it writes report/analysis.json, which the gates step then judges: one analysis per run.
  registry.add("report", [](StepContext& ctx) {
    record_analysis_seed(ctx);
    report::ReportResult result = report::write_report(ctx.run.root());
    ctx.record_directory("report", artifacts_of(ctx, {"train", "transfer", "figures"}));
    log::info("Report: {}", result.markdown.string());
  });
  if (gates.evaluate && gates.write) {
    registry.add("gates", [gates](StepContext& ctx) {
      json result = gates.evaluate(ctx.run.root(), ctx.exp.section("gates"), expected_cells(ctx.run));
      gates.write(ctx.run.root(), result);
      ctx.record_artifact("gates/gates.json", artifacts_of(ctx, {"capture", "train", "transfer", "figures", "report"}));
      if (gates.format_table) {
        std::string table = gates.format_table(result);
        std::string line;
        for (std::istringstream in(table); std::getline(in, line);) log::info("{}", line);
      }
      ctx.set_summary("verdict", result.value("verdict", "unknown"));
    });
  }
}

}  // namespace strata::pipeline
