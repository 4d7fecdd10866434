// The options of the transfer matrix (lib/transfer), declared once: the fields() table drives the
// experiment's [transfer] section, `strata transfer` flags and run_transfer's own validation.
#pragma once
#include <c10/core/Device.h>

#include <cstdint>

#include "core/options.hpp"

namespace strata::transfer {

struct TransferOptions {
  double fit_fraction = 0.75;         // of sequences, for fitting maps; the rest is the evaluation split
  int64_t top_k = 100;                // latents by source variance (feature_variance_ratio, spearman, decoder)
  int64_t cka_permutations = 10000;   // permutation test of CKA (Gram matrices, O(N^2) each)
  int64_t cka_max_tokens = 2048;      // N of the permutation test / CKA bootstrap (subsample of eval tokens)
  int64_t bootstrap = 1000;           // resamples of evaluation sequences for the CIs
  double ci_level = 0.95;
  int64_t max_fit_tokens = 32768;     // caps (whole sequences, chosen by the seed); recorded in config
  int64_t max_eval_tokens = 16384;
  int64_t mmac_min_firings = 10;      // a latent is alive with at least this many firings on eval tokens
  double ridge_lambda = 1e-2;         // map_r2: lambda = ridge_lambda * mean eigenvalue of Z^T Z
  int64_t batch_size = 4096;          // rows per SAE encode
  double high_threshold = 0.9, moderate_threshold = 0.6;  // q_excess -> evaluation label
  // Not experiment options: how the CLI or a test feeds the stores.
  bool aligned_rows = false;          // all stores hold the same tokens in the same row order
  int64_t pseudo_sequence_rows = 128; // stores without doc_id: consecutive blocks act as sequences
  // A code set (own or random dictionary, per cell) larger than this is spilled to a scratch file in the output
  // directory and read back by MMAC block (docs/transfer.md, bounded residency). Results are the same bits either
  // way, so it is not recorded; 64 MB keeps the zoo's and low-L0 codes in memory (16384 tokens x L0 500).
  int64_t spill_codes_above_bytes = int64_t(64) << 20;
  // A model pair whose SAEs and centred fitting rows together exceed this holds them per cell pair only
  // (docs/transfer.md, bounded residency); below it, all at once. Same bits either way; not recorded.
  int64_t bounded_residency_above_bytes = int64_t(1) << 30;
  // Where the arithmetic runs (the run's device, like TrainOptions::device): the rows are read on the host
  // and moved there per cell; runtime::kernel_path(device) picks the CKA permutation loop (native on the
  // CPU, portable LibTorch ops elsewhere; STRATA_KERNELS overrides). Not in fields(): it does not change
  // what is computed, only where (the tolerances are in docs/harness.md).
  c10::Device device = c10::kCPU;

  static const auto& fields() {
    using O = TransferOptions;
    namespace o = options;
    static const auto table = std::make_tuple(
        o::field("fit_fraction", &O::fit_fraction, "share of aligned sequences that fit the maps; the rest evaluates",
                 o::within(0, 1, "()")),
        o::field("top_k", &O::top_k, "latents by source variance (feature variance ratio, Spearman, decoder similarity)",
                 o::at_least(1)),
        o::field("cka_permutations", &O::cka_permutations, "size of the CKA permutation test", o::at_least(0)),
        o::field("cka_max_tokens", &O::cka_max_tokens, "tokens of the CKA permutation test and bootstrap", o::at_least(4)),
        o::field("bootstrap", &O::bootstrap, "bootstrap resamples (over sequences) of the confidence intervals",
                 o::at_least(0)),
        o::field("ci_level", &O::ci_level, "confidence level of the intervals", o::within(0, 1, "()")),
        o::field("max_fit_tokens", &O::max_fit_tokens, "cap on map-fitting tokens per model pair", o::at_least(4)),
        o::field("max_eval_tokens", &O::max_eval_tokens, "cap on evaluation tokens per model pair", o::at_least(4)),
        o::field("mmac_min_firings", &O::mmac_min_firings, "firings on evaluation tokens that make a latent alive",
                 o::at_least(1)),
        o::field("ridge_lambda", &O::ridge_lambda, "map_r2 ridge: lambda = ridge_lambda * mean eigenvalue",
                 o::at_least(0)),
        o::field("batch_size", &O::batch_size, "rows per SAE encode", o::at_least(1)),
        o::field("high_threshold", &O::high_threshold, "q_excess at or above this: HIGH_UNIVERSALITY",
                 o::within(0, 1, "(]")),
        o::field("moderate_threshold", &O::moderate_threshold, "q_excess at or above this: MODERATE_UNIVERSALITY",
                 o::rule([](const O& t, double v) { return v >= 0 && v <= t.high_threshold; },
                         "must lie in [0, high_threshold]")));
    return table;
  }
};

}  // namespace strata::transfer
