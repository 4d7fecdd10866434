// The options of SAE training (sae::train_sae), declared once: the fields() table is the experiment's [sae]
// section (and [[sae.overrides]]), the flags of `strata train-sae`, train_sae's own validation and cfg.json
// "training". Kept apart from train.hpp and free of LibTorch's tensor headers (c10::Device alone), so that
// the experiment config (harness/config.hpp) and the torch-free fuzz build of its parser can include it.
#pragma once
#include <c10/core/Device.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>

#include "core/options.hpp"

namespace strata::sae {

struct TrainOptions {
  std::string architecture = "relu";  // "relu" (SAELens "standard": ReLU + L1; either name is accepted) or "topk"
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
  c10::Device device = c10::kCPU;

  nlohmann::json to_json() const;  // every option, for cfg.json "training"

  // The options an experiment's [sae] section (and `strata train-sae` flags) set; resume,
  // keep_checkpoint, stop_after_steps and name are how a caller drives one training, not options of it.
  static const auto& fields() {
    using O = TrainOptions;
    namespace o = options;
    static const auto table = std::make_tuple(
        o::field("architecture", &O::architecture, "relu (SAELens \"standard\", L1 penalty) or topk",
                 o::one_of({"relu", "standard", "topk"})),
        o::field("expansion", &O::expansion, "d_sae = expansion * d_in",
                 o::rule([](const O&, int64_t v) { return v >= 1 && v <= 1024; }, "must be between 1 and 1024")),
        o::field("k", &O::k, "topk: active latents per token", o::at_least(1)),
        o::field("lr", &O::lr, "Adam learning rate", o::within(0, 1, "()")),
        o::field("l1", &O::l1, "relu: L1 coefficient (SAELens convention)", o::at_least(0)),
        o::field("adam_beta1", &O::adam_beta1, "Adam beta1", o::within(0, 1, "[)")),
        o::field("adam_beta2", &O::adam_beta2, "Adam beta2", o::within(0, 1, "[)")),
        o::field("adam_eps", &O::adam_eps, "Adam epsilon", o::above(0)),
        o::field("lr_warmup_steps", &O::lr_warmup_steps, "linear learning-rate warm-up (clamped to 10% of all steps)",
                 o::at_least(0)),
        o::field("l1_warmup_steps", &O::l1_warmup_steps, "linear L1 warm-up (clamped to 10% of all steps)",
                 o::at_least(0)),
        o::field("epochs", &O::epochs, "maximum epochs; training stops early once converged", o::at_least(1)),
        o::field("min_epochs", &O::min_epochs, "epochs before convergence may stop training",
                 o::rule([](const O& t, int64_t v) { return v >= 1 && v <= t.epochs; }, "must lie in [1, epochs]")),
        o::field("convergence_tolerance", &O::convergence_tolerance,
                 "converged: held-out loss changed by less than this fraction over an epoch", o::at_least(0)),
        o::field("batch_size", &O::batch_size, "rows per optimizer step", o::at_least(1)),
        o::field("heldout_fraction", &O::heldout_fraction, "tail of every shard held out for metrics and convergence",
                 o::within(0, 0.5, "(]")),
        o::field("b_dec_init", &O::b_dec_init, "geometric_median, mean or zeros",
                 o::one_of({"geometric_median", "mean", "zeros"})),
        o::field("b_dec_init_rows", &O::b_dec_init_rows, "rows sampled to initialise b_dec and the scaling factor",
                 o::at_least(1)),
        o::field("shuffle_buffer_rows", &O::shuffle_buffer_rows, "rows in the in-memory shuffle buffer", o::at_least(0)),
        o::field("dead_window_tokens", &O::dead_window_tokens, "a latent silent for this many tokens counts as dead",
                 o::at_least(1)),
        o::field("aux_k", &O::aux_k, "topk: AuxK latents (0 = d_in / 2)", o::at_least(0, " (0 = d_in / 2)")),
        o::field("aux_coefficient", &O::aux_coefficient, "topk: weight of the AuxK loss", o::at_least(0)),
        o::field("resample_interval_steps", &O::resample_interval_steps,
                 "relu: resample dead latents this often in the first half (0 = never)", o::at_least(0, " (0 = never)")),
        o::field("dense_threshold", &O::dense_threshold, "a latent active on more than this fraction of tokens is dense",
                 o::within(0, 1, "(]")),
        o::field("checkpoint_interval_steps", &O::checkpoint_interval_steps,
                 "steps between training checkpoints (exact resume; also at every epoch end)", o::at_least(0)));
    return table;
  }
};

}  // namespace strata::sae
