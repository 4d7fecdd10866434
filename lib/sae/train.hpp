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
#include "sae/sae.hpp"

namespace strata::sae {

struct TrainOptions {
  std::string architecture = "standard";  // "standard" (ReLU + L1; "relu" accepted) or "topk"
  int64_t k = 32;                         // topk: active latents per token
  int64_t expansion = 8;                  // d_sae = expansion * d_in
  double lr = 1e-4;
  double l1 = 1e-4;  // standard: L1 coefficient (depth-dependent values are the caller's choice)
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  int64_t lr_warmup_steps = 1000;  // linear warm-up of the learning rate from 0 (clamped to 10% of all steps)
  int64_t l1_warmup_steps = 1000;  // linear warm-up of the L1 coefficient from 0 (clamped to 10% of all steps)
  int64_t epochs = 10;             // maximum; training stops early once converged
  int64_t min_epochs = 2;
  double convergence_tolerance = 0.01;  // converged: held-out loss changed by < this fraction over an epoch
  int64_t batch_size = 4096;
  double heldout_fraction = 0.1;        // the tail of every shard is held out
  std::string b_dec_init = "geometric_median";  // or "mean" or "zeros"
  int64_t b_dec_init_rows = 16384;             // rows sampled to initialise b_dec and the scaling factor
  int64_t shuffle_buffer_rows = 65536;         // in-memory shuffle buffer (memory: one shard + this)
  // Dead latents: not active on any of the last `dead_window_tokens` training tokens.
  int64_t dead_window_tokens = 1'000'000;
  // topk: AuxK (Gao et al. 2024): the top `aux_k` dead latents (0 = d_in / 2) reconstruct the residual.
  int64_t aux_k = 0;
  double aux_coefficient = 1.0 / 32.0;
  // standard: resample dead latents (Anthropic 2023) every this many steps during the first half of
  // training (0 = never).
  int64_t resample_interval_steps = 2500;
  double dense_threshold = 0.1;  // a latent active on more than this fraction of tokens counts as dense
  int64_t checkpoint_interval_steps = 1000;  // also written at every epoch end
  bool resume = true;                        // continue from <out_dir>/checkpoint.safetensors if present
  bool keep_checkpoint = false;              // delete the checkpoint once the SAE is saved
  int64_t stop_after_steps = 0;  // > 0: checkpoint and return (interrupted) after this many steps in all
  std::string name;              // SAE name for log lines (default: out_dir's file name)
  // Where the parameters, the optimiser state and each batch live. The kernel path follows it
  // (runtime::kernel_path: native on the CPU, portable elsewhere, STRATA_KERNELS overrides); both are
  // recorded in cfg.json ("device", training.kernels) rather than in to_json(), as they change only the
  // summation order, not what is trained.
  torch::Device device = torch::kCPU;

  nlohmann::json to_json() const;  // every option, for cfg.json "training"
};

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
