// The transfer step's plan line: every term the step runs, counted from the model pairs' selected sizes, and
// timed with rates measured in the same process (fp32 GEMM ceilings at 512^3 and at the widest SAE's shape, the
// fp64 ceiling at 512^3, the CKA permutation loop's seconds per Gram element). Per term, an efficiency (the
// achieved fraction of the ceiling the term is costed against) folds in what it does besides its GEMMs;
// element-wise work is counted in FLOP-equivalents at the fp32 512^3 ceiling. Both were calibrated on `strata
// bench transfer` and the default run (bench/RESULTS.md) on AVX-512 CPUs: on the AVX2 one measured there the
// plan reads 19-28 % high.
// The step prints the plan before its work and the measured time after it; `strata bench transfer` prints
// both per term.
#pragma once
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "transfer/options.hpp"

namespace strata::transfer {

// What the plan needs of a cell.
struct PlanCell {
  size_t model = 0;  // index into PlanInput::model_cells
  int64_t dim = 0, d_sae = 0;
  int64_t topk = 0;          // k of a TopK SAE, else 0
  double expected_l0 = 0;    // the L0 its codes are expected at (k, or the training's recorded L0), 0: unknown
  bool has_ceiling = false;  // a second-seed SAE (seed ceilings)
  // Bytes of the SAE when resident: W_enc and W_dec [dim x d_sae], b_enc and b_dec, fp32.
  double sae_bytes() const { return (2.0 * double(dim) * double(d_sae) + double(d_sae + dim)) * 4; }
};

// One model pair the step runs (a <= b), with its selection's sizes.
struct PlanModelPair {
  size_t a = 0, b = 0;
  int64_t n_fit = 0, n_eval = 0;
};

struct PlanInput {
  std::vector<PlanCell> cells;
  std::vector<std::vector<size_t>> model_cells;  // per model, its cells
  std::vector<PlanModelPair> model_pairs;        // those that involve a source cell
  std::set<size_t> sources;                      // cells whose pairs (as source) the step makes
  int64_t replicates = 0, eval_documents = 0;    // the bootstrap's B and D (transfer/selection.hpp)
};

// What the step holds of one model pair when it holds all of it: every involved cell's SAE and centred fitting
// rows (fp64, n_fit x dim). Above options.bounded_residency_above_bytes the step holds one cell pair's at a time
// (bounded residency): it loads SAEs again and makes fitting rows again per cell pair.
double held_bytes(const std::vector<PlanCell>& cells, const std::vector<size_t>& involved, int64_t n_fit);

// Rates measured on options.device: the fp32 GEMM ceilings (GFLOP/s) at 512^3 (4096^3 on a GPU) and at one
// batch of rows through the widest SAE, the permutation loop's seconds per Gram element at the step's N, and
// the fp64 GEMM ceiling at 512^3 (0: not measured, taken as 0.40 of the fp32 one).
struct PlanRates {
  double gemm_gflops = 0, sae_gemm_gflops = 0, seconds_per_gather = 0, fp64_gemm_gflops = 0;
};
PlanRates measure_plan_rates(const PlanInput& in, const TransferOptions& options);

// Per term: FLOP (GEMM work; the fp64 part also apart) and seconds. Terms: sae_own, sae_random, sae_mapped,
// sae_null, maps, ridge, decoder, mmac, cka_linear, cka_gram, cka_permutations, cka_bootstrap, q_bootstrap,
// ceilings, residency.
struct Plan {
  double gemm_gflops = 0, seconds_per_gather = 0, gathers = 0, total_flops = 0, total_seconds = 0;
  double sae_gemm_gflops = 0;  // fp32 GEMM rate at the step's largest SAE shape (rows x d x d_sae)
  double fp64_gemm_gflops = 0;  // fp64 GEMM rate at 512^3, which fp64 work is costed against
  double peak_bytes = 0;       // largest model pair's resident data (anonymous memory)
  std::map<std::string, double> flops, seconds;
  std::map<std::string, double> fp64_flops;  // the part of `flops` done in fp64 (maps, CKA, ridge, decoder, ...)
};
// Deterministic given its arguments: the rates are the only measured input.
Plan estimate_plan(const PlanInput& in, const TransferOptions& options, const PlanRates& rates);

}  // namespace strata::transfer
