// Training one sparse autoencoder from an activation store (docs/sae.md).
//
// Losses follow SAELens so that coefficients mean the same thing:
//   inputs are scaled by s so that E||s x||^2 = d_in (s is recorded and folded into the saved weights);
//   mse  = mean over the batch of sum over dims of (x_hat - x)^2
//   l1   = mean over the batch of sum_i f_i * ||W_dec row i||             ("standard" only)
//   loss = mse + l1_coefficient(t) * l1                                   (+ aux_coefficient * AuxK for topk)
// The forward and backward passes are written by hand (no autograd): 5 GEMMs + a GEMV per step for the
// ReLU SAE, 1 dense GEMM + sparse row kernels for TopK.
#pragma once
#include <nlohmann/json.hpp>
#include <torch/types.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "io/activation_store.hpp"
#include "sae/options.hpp"
#include "sae/sae.hpp"

namespace strata::sae {

struct TrainResult {
  bool ok = false;
  bool interrupted = false;  // stopped by stop_after_steps; a checkpoint is on disk to resume from
  bool diverged = false;     // NaN/Inf loss or input: the SAE was not saved
  std::string error;         // why ok is false
  nlohmann::json metrics;    // cfg.json "metrics" (docs/run_layout.md), also written on failure
  std::filesystem::path out_dir;
  Sae sae;  // the saved SAE (acts on raw activations); empty unless ok
};

// The SAELens / TransformerLens hook of strata layer L (1-based; 0 = embeddings): "hook_embed" or
// "blocks.{L-1}.hook_resid_post".
std::string hook_name(int64_t layer);

// Trains, evaluates on the held-out split and saves <out_dir>/{cfg.json, sae_weights.safetensors,
// training_curve.csv}. `provenance` (model, layer, n_layers, relative_depth, hook_name, ...) is merged
// into cfg.json. Never throws for a training failure (NaN/Inf): it returns ok = false with the reason and
// writes cfg.json with metrics.diverged = true and no weights. Throws strata::Error for bad options/input.
TrainResult train_sae(const io::ActivationStore& store, const TrainOptions& options, uint64_t seed,
                      const std::filesystem::path& out_dir, const nlohmann::json& provenance = nlohmann::json::object());

// Row ranges [begin, end) of a store. The held-out split is the last `fraction` of every shard's rows
// (whole documents, spread over the store); training uses the rest.
using RowRanges = std::vector<std::pair<int64_t, int64_t>>;
RowRanges heldout_ranges(const io::ActivationStore& store, double fraction);
RowRanges training_ranges(const io::ActivationStore& store, double fraction);

// Evaluation of any SAE (on raw activations) over the given rows of a store, in batches.
struct EvalResult {
  double mse = 0, fvu = 0, explained_variance = 0, l0 = 0, sparsity = 0, dead_fraction = 0, dense_fraction = 0;
  int64_t tokens = 0;
  nlohmann::json to_json() const;
};
EvalResult evaluate_sae(const Sae& sae, const io::ActivationStore& store, const RowRanges& rows,
                        int64_t batch_size = 4096, double dense_threshold = 0.1);

// `strata bench sae`: one full training step (forward, backward, Adam, decoder renormalisation) of the
// training code above on a random batch [batch, d_in], seconds per step (median of `repeats`).
// flop counts the dense GEMM work the step performs (ReLU: 5 GEMMs; TopK: 1 GEMM + sparse rows).
struct StepTiming {
  double seconds = 0, flop = 0;
};
StepTiming time_training_step(const TrainOptions& options, int64_t d_in, int64_t batch, int repeats);
// The same ReLU step written with LibTorch autograd + torch::optim::Adam (the reference it is compared to).
double time_autograd_reference_step(int64_t d_in, int64_t d_sae, int64_t batch, int repeats);

}  // namespace strata::sae
