// The experiment configuration: one TOML schema for every step of a run.
//
//   [experiment]  name, seed, device, threads (0 = all cores), output_root
//   [dataset]     spec ("synthetic[:SEED]" | "jsonl:PATH[:FIELD]" | "text:PATH"), template, num_documents,
//                 seq_len, batch_size, num_batches | tokens, packing ("truncate" | "pack")
//   [capture]     store_dtype, keep_special, norm_outlier_factor, shard_size_mb
//   [[models]]    name, checkpoint (local path or hf://org/name[@rev]), layers | depths, tokenizer, dtype
//   [sae]         architecture, expansion, k, lr, l1, epochs, batch_size, ... and
//   [[sae.overrides]]  min_depth / max_depth plus any [sae] key, applied by relative depth
//   [transfer]    fit_fraction, top_k, cka_permutations, bootstrap, thresholds, ceiling, ...
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
  int64_t num_batches = 0;         // 0 = until the documents (or `tokens`) run out
  int64_t tokens = 0;              // 0 = no token budget; otherwise stop once this many rows are stored
  std::string packing = "truncate";  // "truncate" | "pack"
};

struct CaptureConfig {
  std::string store_dtype = "f32";  // "f32" | "f16" | "bf16"
  bool keep_special = false;        // store BOS and other special tokens too
  double norm_outlier_factor = 0;   // 0 = off; else drop rows whose norm exceeds factor x median norm
  double shard_size_mb = 256;       // activation bytes per shard before a new shard starts
};

struct ModelConfig {
  std::string name;                      // cell prefix: <name>_layer<L>; [A-Za-z0-9._-]+
  std::string checkpoint;                // as written
  std::filesystem::path checkpoint_path; // resolved local directory; empty for hf://
  std::vector<int64_t> layers;           // 1-based blocks (0 = embeddings); empty when `depths` is used
  std::vector<double> depths;            // relative depths in (0, 1]; empty when `layers` is used
  std::string tokenizer;                 // as written; empty = the checkpoint's own
  std::filesystem::path tokenizer_path;  // resolved; empty = the checkpoint's own
  std::string dtype = "f32";             // compute dtype: "f32" | "f16" | "bf16"

  bool is_hf() const { return checkpoint.rfind("hf://", 0) == 0; }
  // What io::resolve_checkpoint accepts: the absolute local path, or the hf:// spec unchanged.
  std::string checkpoint_spec() const { return is_hf() ? checkpoint : checkpoint_path.string(); }
  // The layers to capture once the real depth is known (from config.json): explicit layers are checked
  // against n_layers (error naming the real depth); depths become round(depth * n_layers), at least 1.
  // Sorted ascending; two depths landing on one layer is an error.
  std::vector<int64_t> resolve_layers(int64_t n_layers) const;
};

struct SaeConfig {
  std::string architecture = "relu";  // "relu" (SAELens "standard", L1 penalty) | "topk"
  int64_t expansion = 8;              // d_sae = expansion * d_in
  int64_t k = 32;                     // topk only
  double lr = 1e-4;
  double l1 = 1e-4;                   // relu only: L1 coefficient (SAELens convention)
  int64_t epochs = 10;
  int64_t batch_size = 4096;          // rows per optimizer step
  int64_t lr_warmup_steps = 100;
  int64_t l1_warmup_steps = 100;
  double heldout_fraction = 0.1;      // rows (by sequence) kept out for metrics and convergence
  int64_t shuffle_buffer = 65536;     // rows in the in-memory shuffle buffer
  std::string b_dec_init = "geometric_median";  // "geometric_median" | "mean"
  double convergence_tolerance = 1e-3;  // converged when held-out loss improves by less than this (relative)
  int64_t patience = 2;                 // ... for this many consecutive epochs
  int64_t dead_after_tokens = 1000000;  // a latent silent for this many tokens counts as dead
  bool resample_dead = true;            // relu: resample dead latents
  int64_t aux_k = 256;                  // topk: AuxK latents (0 = off)
  double aux_k_coefficient = 1.0 / 32;
  int64_t checkpoint_every_steps = 1000;  // training checkpoints for exact resume (0 = off)
};

// Applied, in file order, to SAEs whose relative depth d satisfies min_depth <= d <= max_depth.
struct SaeOverride {
  double min_depth = 0.0, max_depth = 1.0;
  nlohmann::json values;  // only the [sae] keys this override sets
};

struct TransferConfig {
  double fit_fraction = 0.75;        // share of aligned sequences used to fit maps; the rest evaluates
  int64_t top_k = 100;               // latents for feature_variance_ratio, top_k_spearman, decoder_similarity
  int64_t cka_permutations = 10000;
  int64_t bootstrap = 1000;          // bootstrap resamples (over sequences) for confidence intervals
  double high_universality = 0.9;    // q_excess >= this: HIGH_UNIVERSALITY
  double moderate_universality = 0.6;  // q_excess >= this: MODERATE_UNIVERSALITY, else LOW
  bool ceiling = true;               // train a second-seed SAE for one cell per model (seed-to-seed ceiling)
  bool word_ends_only = false;       // align tokens only at word ends
  int64_t mmac_min_firings = 10;
  double ridge = 1e-3;               // ridge strength of the map_r2 baseline
  int64_t max_eval_tokens = 0;       // 0 = all evaluation tokens
};

struct GatesConfig {
  double max_fvu = 0.5;               // Gate 2: every SAE's held-out FVU below this
  double early_transfer = 0.8;        // should-pass: mean cross-model q_excess of early layers above this
  double early_max_depth = 0.34;      // relative depth up to which a layer counts as early
  double spread = 0.15;               // should-pass: cross-model spread per layer below this
  double divergence_threshold = 0.6;  // divergence point: first depth where q_excess falls below this
  double trend_alpha = 0.05;          // significance level of the monotonic-decline trend test
  int64_t min_dpi = 300;              // publication-ready: figure resolution
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
  GatesConfig gates;

  // The [sae] settings for a cell at relative depth `relative_depth` (= layer / n_layers).
  SaeConfig sae_for(double relative_depth) const;
  const ModelConfig& model(const std::string& name) const;

  // The resolved config: every section, every default filled in. Keys are sorted (nlohmann::json).
  nlohmann::json to_json() const;
  // One section of to_json() ("experiment", "dataset", "capture", "models", "sae", "transfer", "gates").
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
