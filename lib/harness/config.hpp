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
//   [executor]    kind, jobs, max_retries, [executor.slurm] (harness/executor_slurm.hpp; not in to_json)
//
// Loading is strict: an unknown key, a value of the wrong type or an impossible value is a strata::Error
// naming FILE:LINE:COLUMN and the dotted key. Each section is the options struct of the layer that uses
// it ([sae] sae::TrainOptions, [transfer] transfer::TransferOptions plus two keys, [figures]
// report::FigureOptions, [gates] validation::GateThresholds); its fields() table (core/options.hpp) gives
// the keys, defaults, docs and rules, so parsing, validation and the resolved config (to_json, complete
// with every default) come from one declaration. Relative paths are resolved against the TOML file's directory, then the
// repository root (so configs copied into a run directory still find zoo/ checkpoints).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "core/options.hpp"
#include "report/figures.hpp"
#include "sae/options.hpp"
#include "transfer/options.hpp"
#include "validation/gate_options.hpp"

namespace strata::harness {

struct ExperimentInfo {
  std::string name;                  // default: the TOML file's stem
  uint64_t seed = 0;                 // master seed; every step's seed is derived from it (seeds.hpp)
  std::string device = "cpu";        // "cpu" | "cuda" | "cuda:N"
  int threads = 0;                   // 0 = all cores
  std::string output_root = "runs";  // new run directories go to <output_root>/<name>-<timestamp>

  static const auto& fields() {
    using O = ExperimentInfo;
    namespace o = options;
    static const auto table = std::make_tuple(
        o::field("name", &O::name, "run directory prefix (default: the TOML file's stem)",
                 o::rule([](const O&, const std::string& v) { return std::regex_match(v, std::regex("[A-Za-z0-9._-]+")); },
                         "must be non-empty and use only letters, digits, '.', '_' and '-'"),
                 o::rule([](const O&, const std::string& v) { return v != "." && v != ".."; },
                         "must not be '.' or '..' (names become file names)")),
        o::field("seed", &O::seed, "master seed; every step's seed is derived from it"),
        o::field("device", &O::device, "\"cpu\" or \"cuda:N\"",
                 o::rule([](const O&, const std::string& v) { return std::regex_match(v, std::regex("cpu|cuda(:[0-9]+)?")); },
                         "must be \"cpu\" or \"cuda:N\"")),
        o::field("threads", &O::threads, "compute threads (0 = all cores)",
                 o::rule([](const O&, int v) { return v >= 0 && v <= 4096; }, "must be 0 (all cores) or a positive thread count")),
        o::field("output_root", &O::output_root, "new run directories go to <output_root>/<name>-<UTC time>",
                 o::rule([](const O&, const std::string& v) { return !v.empty(); }, "must not be empty")));
    return table;
  }
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

  // `spec` is checked (and resolved_spec made) where paths are resolved (config.cpp read_dataset).
  static const auto& fields() {
    using O = DatasetConfig;
    namespace o = options;
    static const auto table = std::make_tuple(
        o::field("spec", &O::spec, "\"synthetic[:SEED]\", \"jsonl:PATH[:FIELD]\" or \"text:PATH\""),
        o::field("template", &O::jsonl_template, "jsonl only: e.g. \"{question}\\n{answer}\"",
                 o::rule([](const O& d, const std::string& v) { return v.empty() || d.spec.rfind("jsonl:", 0) == 0; },
                         "applies only to jsonl datasets")),
        o::field("num_documents", &O::num_documents, "documents read (0 = all)", o::at_least(0, " (0 = all)")),
        o::field("seq_len", &O::seq_len, "tokens per sequence",
                 o::rule([](const O&, int64_t v) { return v >= 2 && v <= (1 << 20); }, "must be between 2 and 1048576")),
        o::field("batch_size", &O::batch_size, "sequences per forward pass", o::at_least(1)),
        o::field("num_batches", &O::num_batches, "batches to capture (ignored when tokens is set)", o::at_least(1)),
        o::field("tokens", &O::tokens, "> 0: exactly this many real input tokens per model",
                 o::at_least(0, " (0 = use num_batches)")),
        o::field("packing", &O::packing, "\"truncate\" or \"pack\"", o::one_of({"truncate", "pack"})));
    return table;
  }
};

struct CaptureConfig {
  std::string store_dtype = "f32";  // "f32" | "f16" | "bf16"
  bool keep_special = false;        // store BOS and other special tokens too
  double norm_outlier_factor = 0;   // 0 = off; else drop positions whose norm exceeds factor x the batch's median
                                    // norm at any captured layer (from every layer)
  double shard_size_mb = 512;       // activation bytes per shard before a new shard starts

  static const auto& fields() {
    using O = CaptureConfig;
    namespace o = options;
    static const auto table = std::make_tuple(
        o::field("store_dtype", &O::store_dtype, "\"f32\", \"f16\" or \"bf16\"", o::one_of({"f32", "f16", "bf16"})),
        o::field("keep_special", &O::keep_special, "store BOS and other special tokens too"),
        o::field("norm_outlier_factor", &O::norm_outlier_factor,
                 "0 = off; else drop positions whose norm exceeds this many times the batch median",
                 o::rule([](const O&, double v) { return v == 0 || v > 1; },
                         "must be 0 (off) or greater than 1 (a multiple of the median norm)")),
        o::field("shard_size_mb", &O::shard_size_mb, "activation bytes per shard (MiB)", o::above(0)));
    return table;
  }
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

// Applied, in file order, to SAEs whose relative depth d satisfies min_depth <= d <= max_depth.
struct SaeOverride {
  double min_depth = 0.0, max_depth = 1.0;
  nlohmann::json values;  // only the [sae] keys this override sets
};

// [sae] and [[sae.overrides]]: the trainer's own options (sae::TrainOptions) and the depth overrides.
struct SaeConfig {
  sae::TrainOptions options;
  std::vector<SaeOverride> overrides;
  // The options of an SAE at relative depth `relative_depth` (= layer / n_layers).
  sae::TrainOptions for_depth(double relative_depth) const;
};

// [transfer]: the transfer layer's own options plus two keys other steps read.
struct TransferConfig : transfer::TransferOptions {
  double diverging_threshold = 0.4;   // figure/report band: [this, moderate) diverging, below model-specific
  bool ceiling = true;                // train a second-seed SAE for one cell per model (seed-to-seed ceiling)

  static const auto& fields() {
    using O = TransferConfig;
    namespace o = options;
    static const auto table = std::tuple_cat(
        transfer::TransferOptions::fields(),
        std::make_tuple(
            o::field("diverging_threshold", &O::diverging_threshold,
                     "figures and report: [this, moderate_threshold) is diverging, below it model-specific",
                     o::rule([](const O& t, double v) { return v >= 0 && v <= t.moderate_threshold; },
                             "must lie in [0, moderate_threshold]")),
            o::field("ceiling", &O::ceiling, "train a second-seed SAE of one cell per model (seed-to-seed ceiling)")));
    return table;
  }
};

struct Experiment {
  std::filesystem::path source_file;  // absolute path of the TOML file
  std::filesystem::path base_dir;     // relative paths were resolved against this (then the repo root)
  ExperimentInfo experiment;
  DatasetConfig dataset;
  CaptureConfig capture;
  std::vector<ModelConfig> models;
  SaeConfig sae;
  TransferConfig transfer;
  report::FigureOptions figures;
  validation::GateThresholds gates;
  // The [executor] table as written (null when absent): how units run (harness/executor_slurm.hpp), not
  // part of the resolved config or its hash, since it does not change what a run computes.
  nlohmann::json executor;

  // The sections, in file order: the resolved config's top-level keys, and what a step declares it reads.
  static const auto& sections() {
    using E = Experiment;
    static const auto table = std::make_tuple(
        std::pair{"experiment", &E::experiment}, std::pair{"dataset", &E::dataset}, std::pair{"capture", &E::capture},
        std::pair{"models", &E::models}, std::pair{"sae", &E::sae}, std::pair{"transfer", &E::transfer},
        std::pair{"figures", &E::figures}, std::pair{"gates", &E::gates});
    return table;
  }
  // The name of the section `member` ("figures" for &Experiment::figures).
  template <class T>
  static std::string section_name(T Experiment::*member) {
    std::string out;
    std::apply(
        [&](const auto&... section) {
          auto match = [&](const auto& s) {
            if constexpr (std::is_same_v<std::decay_t<decltype(s.second)>, T Experiment::*>)
              if (s.second == member) out = s.first;
          };
          (match(section), ...);
        },
        sections());
    return out;
  }

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
