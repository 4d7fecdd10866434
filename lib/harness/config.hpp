// The experiment configuration: one TOML schema for every step of a run.
//
//   [experiment]  name, seed, device, threads (0 = all cores), output_root
//   [dataset]     spec ("synthetic[:SEED]" | "jsonl:PATH[:FIELD]" | "text:PATH"), template, num_documents,
//                 seq_len, batch_size, num_batches | tokens, packing ("truncate" | "pack")
//   [capture]     store_dtype, keep_special, norm_outlier_factor, shard_size_mb
//   [[models]]    name, checkpoint (local path or hf://org/name[@rev]), layers | depths, tokenizer, dtype,
//                 control_of, saes = { "L" = "DIR or hf://org/name[@rev]/sub/dir" } (published SAEs, not trained)
//   [sae]         architecture, expansion, k, lr, l1, epochs, batch_size, ... and
//   [[sae.overrides]]  min_depth / max_depth plus any [sae] key, applied by relative depth
//   [transfer]    fit_fraction, top_k, cka_permutations, bootstrap, thresholds, ceiling, ...
//   [figures]     dpi, font_pt, max_annotated_cells
//   [gates]       max_fvu, early_transfer, spread, ...
//
// Loading is strict: an unknown key, a value of the wrong type or an impossible value is a strata::Error
// naming FILE:LINE:COLUMN and the dotted key. Every field below carries its default, so the resolved
// config (to_json) is complete. Relative paths are resolved against the TOML file's directory, then the
// repository root (so configs copied into a run directory still find zoo/ checkpoints).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace strata::harness {

struct ExperimentInfo {
  std::string name;                  // default: the TOML file's stem
  uint64_t seed = 0;                 // master seed; every step's seed is derived from it (seeds.hpp)
  std::string device = "cpu";        // "cpu" | "cuda" | "cuda:N"
  int threads = 0;                   // 0 = all cores
  std::string output_root = "runs";  // new run directories go to <output_root>/<name>-<timestamp>
};

struct DatasetConfig {
  std::string spec = "synthetic";  // as written
  std::string resolved_spec;       // the same with PATH made absolute (what text::load_dataset gets)
  std::string jsonl_template;      // TOML key `template`: e.g. "{question}\n{answer}" (jsonl only)
  int64_t num_documents = 0;       // 0 = all documents (synthetic: its default count)
  int64_t seq_len = 128;
  int64_t batch_size = 8;          // sequences per forward pass
  int64_t num_batches = 50;        // batches to capture (ignored when `tokens` is set)
  int64_t tokens = 0;              // > 0: exactly this many real input tokens per model instead of num_batches
  std::string packing = "truncate";  // "truncate" | "pack"
};

struct CaptureConfig {
  std::string store_dtype = "f32";  // "f32" | "f16" | "bf16"
  bool keep_special = false;        // store BOS and other special tokens too
  double norm_outlier_factor = 0;   // 0 = off; else drop positions whose norm exceeds factor x the batch's median
                                    // norm at any captured layer (from every layer)
  double shard_size_mb = 512;       // activation bytes per shard before a new shard starts
};

struct ModelConfig {
  std::string name;                      // cell prefix: <name>_layer<L>; [A-Za-z0-9._-]+
  std::string checkpoint;                // as written
  std::filesystem::path checkpoint_path; // resolved local directory; empty for hf://
  // Exactly one of these is set. They are checked against the real depth when capture reads the model's
  // config.json (capture::resolve_layers), not here.
  std::vector<int64_t> layers;           // 1-based blocks (0 = embeddings)
  std::vector<double> depths;            // relative depths in (0, 1]: layer round(depth * n_layers)
  std::string tokenizer;                 // as written; empty = the checkpoint's own
  std::filesystem::path tokenizer_path;  // resolved; empty = the checkpoint's own
  std::string dtype = "f32";             // compute dtype: "f32" | "f16" | "bf16"
  // Positive control: the name of the model this one is a second training of (same architecture,
  // tokenizer and data, another seed). Controls stay out of the main matrix and its gates; the report
  // sets their pairs with the twin beside the cross-family pairs. "" = not a control.
  std::string control_of;
  // Published SAEs used instead of training, by layer: a local directory (resolved against the TOML
  // file) or hf://org/name[@rev]/sub/dir, in the SAELens or sparsify format (sae/formats.hpp).
  std::map<int64_t, std::string> saes;

  bool is_hf() const { return checkpoint.rfind("hf://", 0) == 0; }
  // What io::resolve_checkpoint accepts: the absolute local path, or the hf:// spec unchanged.
  std::string checkpoint_spec() const { return is_hf() ? checkpoint : checkpoint_path.string(); }
};

// Field names and defaults are sae::TrainOptions' (lib/sae/train.hpp), so the pipeline maps them 1:1.
struct SaeConfig {
  std::string architecture = "relu";  // "relu" (SAELens "standard", L1 penalty) | "topk"
  int64_t expansion = 8;              // d_sae = expansion * d_in
  int64_t k = 32;                     // topk only: active latents per token
  double lr = 1e-4;
  double l1 = 1e-4;                   // relu only: L1 coefficient (SAELens convention)
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  int64_t lr_warmup_steps = 1000;     // linear warm-up (the trainer clamps it to 10% of all steps)
  int64_t l1_warmup_steps = 1000;
  int64_t epochs = 10;                // maximum; training stops early once converged
  int64_t min_epochs = 2;
  double convergence_tolerance = 0.01;  // converged: held-out loss changed by < this fraction over an epoch
  int64_t batch_size = 4096;          // rows per optimizer step
  double heldout_fraction = 0.1;      // rows kept out for metrics and convergence
  std::string b_dec_init = "geometric_median";  // "geometric_median" | "mean" | "zeros"
  int64_t b_dec_init_rows = 16384;
  int64_t shuffle_buffer_rows = 65536;
  int64_t dead_window_tokens = 1000000;  // a latent silent for this many tokens counts as dead
  int64_t aux_k = 0;                     // topk: AuxK latents (0 = d_in / 2)
  double aux_coefficient = 1.0 / 32;
  int64_t resample_interval_steps = 2500;  // relu: resample dead latents this often in the first half (0 = never)
  double dense_threshold = 0.1;            // a latent active on more than this fraction of tokens is dense
  int64_t checkpoint_interval_steps = 1000;  // training checkpoints for exact resume
};

// Applied, in file order, to SAEs whose relative depth d satisfies min_depth <= d <= max_depth.
struct SaeOverride {
  double min_depth = 0.0, max_depth = 1.0;
  nlohmann::json values;  // only the [sae] keys this override sets
};

// Field names and defaults are transfer::TransferOptions' (lib/transfer/transfer.hpp), plus `ceiling`
// (train step) and `diverging_threshold` (the lowest band of figures and report).
struct TransferConfig {
  double fit_fraction = 0.75;         // share of aligned sequences used to fit maps; the rest evaluates
  int64_t top_k = 100;                // latents for feature_variance_ratio, top_k_spearman, decoder_similarity
  int64_t cka_permutations = 10000;
  int64_t cka_max_tokens = 2048;      // tokens of the CKA permutation test / bootstrap
  int64_t bootstrap = 1000;           // bootstrap resamples (over sequences) for confidence intervals
  double ci_level = 0.95;
  int64_t max_fit_tokens = 32768;
  int64_t max_eval_tokens = 16384;
  int64_t mmac_min_firings = 10;
  double ridge_lambda = 1e-2;         // map_r2 baseline: lambda = ridge_lambda * mean eigenvalue
  int64_t batch_size = 4096;          // rows per SAE encode
  double high_threshold = 0.9;        // q_excess >= this: HIGH_UNIVERSALITY ("universal" band)
  double moderate_threshold = 0.6;    // q_excess >= this: MODERATE_UNIVERSALITY ("partial" band), else LOW
  double diverging_threshold = 0.4;   // figure/report band: [this, moderate) diverging, below model-specific
  bool ceiling = true;                // train a second-seed SAE for one cell per model (seed-to-seed ceiling)
};

// Field names and defaults are validation::GateThresholds' (validation/gates.hpp).
struct GatesConfig {
  double max_fvu = 0.5;               // Gate 2: every SAE's held-out FVU below this
  bool stream_store_check = true;     // Gate 1: read every shard looking for NaN/Inf
  int64_t pixel_tolerance = 1;        // Gate 4: |PNG pixels - inches * dpi|
  double early_transfer = 0.8;        // should-pass: mean cross-model q_excess of early layers above this
  double early_max_depth = 0.34;      // relative depth up to which a layer counts as early
  double spread = 0.15;               // should-pass: cross-model spread per layer below this
  double divergence_threshold = 0.6;  // divergence point: first depth where q_excess falls below this
  double trend_alpha = 0.05;          // significance level of the monotonic-decline trend test
  int64_t min_dpi = 300;              // Gate 4 / publication-ready: figure resolution
  double significance_alpha = 0.05;   // BH-adjusted p-values count as significant below this
  double max_l0_fraction = 0.5;       // should-pass: every SAE's held-out L0 at most this fraction of d_in
  double max_dead_fraction = 0.2;     // should-pass: every SAE's dead-latent fraction at most this
};

// report::FigureOptions (lib/report/figures.hpp).
struct FiguresConfig {
  int64_t dpi = 300;
  double font_pt = 9;
  int64_t max_annotated_cells = 20;   // heatmap values printed in cells up to this many rows/columns
};

struct Experiment {
  std::filesystem::path source_file;  // absolute path of the TOML file
  std::filesystem::path base_dir;     // relative paths were resolved against this (then the repo root)
  ExperimentInfo experiment;
  DatasetConfig dataset;
  CaptureConfig capture;
  std::vector<ModelConfig> models;
  SaeConfig sae;
  std::vector<SaeOverride> sae_overrides;
  TransferConfig transfer;
  FiguresConfig figures;
  GatesConfig gates;

  // The [sae] settings for a cell at relative depth `relative_depth` (= layer / n_layers).
  SaeConfig sae_for(double relative_depth) const;
  const ModelConfig& model(const std::string& name) const;

  // The resolved config: every section, every default filled in. Keys are sorted (nlohmann::json).
  nlohmann::json to_json() const;
  // One section of to_json() ("experiment", "dataset", "capture", "models", "sae", "transfer", "figures",
  // "gates").
  nlohmann::json section(const std::string& name) const;
  // SHA-256 of to_json().dump(): identifies the resolved config.
  std::string sha256() const;
};

// Parses and validates a TOML experiment file. `base_dir` overrides the directory relative paths are
// resolved against (used when re-loading a run's copied config.toml).
Experiment load_experiment(const std::filesystem::path& file,
                           std::optional<std::filesystem::path> base_dir = std::nullopt);
// The same from TOML text; `display_name` is the file name used in error messages.
Experiment parse_experiment(const std::string& toml_text, const std::string& display_name,
                            const std::filesystem::path& base_dir);

// The resolved config as TOML text (for `strata config check --format toml`).
std::string to_toml(const nlohmann::json& resolved);

// The repository root (source dir of this build), for repo-relative paths such as zoo/<name>.
std::filesystem::path repo_root();

}  // namespace strata::harness
