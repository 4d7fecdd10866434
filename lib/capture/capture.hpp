// Step 1 of the pipeline: the residual stream of one model at several layers over a dataset, written
// as one activation store per (model, layer) (layout: io/activation_store.hpp, docs/capture.md).
//
// Layer numbering (1-based, docs/run_layout.md): layer L is the residual stream after
// block L, i.e. the output of 0-based block L-1 (`resid_post.{L-1}`); layer 0 is the embedding output
// (the hidden state entering block 0). Relative depths d map to layer round(d * n_layers), clamped to
// [1, n_layers] (round half away from zero), so depth 0 never silently means the embeddings.
//
// One forward pass per batch serves every requested layer; it stops after the deepest requested block
// and never computes the final norm or the LM head. Stored rows are real tokens only (padding never),
// special tokens excluded unless keep_special, optionally norm outliers excluded (one position mask for
// all layers, so every layer of a model holds the same tokens). Memory is bounded by
// the batch and the writer's per-shard row index, never by the total token count.
#pragma once
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "text/dataset.hpp"

namespace strata::capture {

struct CaptureOptions {
  std::vector<int> layers;      // 1-based layers (0 = embeddings); combined with `depths`
  std::vector<double> depths;   // relative depths in (0, 1], mapped as described above
  int64_t batch_size = 32;      // sequences per forward pass
  int64_t num_batches = 50;     // batches to capture (ignored when max_tokens > 0)
  int64_t max_tokens = 0;       // > 0: exactly this many real input tokens (the last sequence is cut)
  int64_t seq_len = 128;        // tokens per sequence (see packing)
  torch::ScalarType store_dtype = torch::kFloat32;  // kFloat32, kFloat16 or kBFloat16
  bool keep_special = false;    // store BOS/EOS/other special tokens too
  double norm_outlier_factor = 0;  // > 0: drop the positions whose norm > factor x the median norm of
                                   // the batch's rows at any captured layer (from every layer)
  int64_t shard_size_bytes = 512 << 20;  // activation bytes per shard before rolling over
  torch::Device device = torch::kCPU;
  // The dtype the forward pass computes in (kFloat32, kBFloat16 or kFloat16), with the upcasts of HF's
  // modelling code (models/transformer.hpp). Rows reach the store as f32 before its own store_dtype.
  torch::ScalarType compute_dtype = torch::kFloat32;
  text::PackingPolicy packing = text::PackingPolicy::Truncate;
  std::string tokenizer_dir;    // empty: the checkpoint's own tokenizer
};

// Sorted, de-duplicated layers from explicit layers and relative depths. Throws strata::Error naming
// the model and its real depth for a layer outside [0, n_layers] or a depth outside (0, 1], and when
// neither layers nor depths are given.
std::vector<int> resolve_layers(const std::vector<int>& layers, const std::vector<double>& depths, int n_layers,
                                const std::string& model_name);

struct CaptureResult {
  std::vector<int> layers;                    // as resolved
  std::vector<std::filesystem::path> files;   // every shard and meta.json written, in layer order
  int64_t tokens = 0;                         // real (non-padding) input tokens run through the model
  nlohmann::json metas;                       // {"<L>": meta.json content} per layer
};

// Loads the checkpoint (fp32) and its tokenizer (or options.tokenizer_dir), cuts the documents it reads
// from `documents` (only as many as the batches need; recorded as documents_read and dataset_sha256,
// the hash of exactly those documents) into sequences,
// and writes <out_dir>/<model_name>_layer<L>_activations[...] for every resolved layer. Stores appear
// only when every batch succeeded: a NaN/Inf activation throws (naming model, layer and batch) and
// leaves no finished store behind. Deterministic: the same inputs give byte-identical files.
CaptureResult capture_model(const std::string& model_name, const std::filesystem::path& checkpoint_dir,
                            text::DocumentReader documents, const std::string& dataset_spec,
                            const CaptureOptions& options, const std::filesystem::path& out_dir);

}  // namespace strata::capture
