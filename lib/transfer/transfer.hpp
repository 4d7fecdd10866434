// Step 3 of the pipeline: the (model, layer) x (model, layer) transfer matrix.
//
// Every cell's SAE (source) is applied to every cell's activations (target) after mapping the target
// into the source's space; definitions of every metric, with formulas, are in docs/transfer.md.
//   - aligned tokens: within one model by row position; across models where both tokenizations end a
//     token at the same byte of the same document (text::align_token_ends on doc_id, byte_end);
//   - split by sequence (doc_id) into a map-fitting part and a disjoint evaluation part, from the seed;
//   - each cell scaled so that E||x||^2 = d on the fitting split;
//   - map target -> source: identity within a model; across models semi-orthogonal Procrustes
//     (Q = U V^T of the thin SVD of Z^T Y, centred), rescaled to the source's total variance.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "transfer/options.hpp"

namespace strata::transfer {

struct Cell {
  std::string name;   // "<model>_layer<L>"
  std::string model;  // cells of one model share rows (pair by position)
  int layer = 0;
  int n_layers = 0;   // relative depth = layer / n_layers
  std::filesystem::path store;    // activation store (meta.json, .safetensors or any 2-D tensor file)
  std::filesystem::path sae_dir;  // SAELens layout (sae/sae.hpp)
  std::optional<std::filesystem::path> ceiling_sae_dir;  // a second-seed SAE of this cell, if any
};

// What the step cost against what its plan line said (also printed at the end of the step). Terms: sae_own,
// sae_random, sae_mapped, sae_null (SAE passes), maps (fitting rows, Grams, cross products, SVDs), ridge,
// decoder, mmac, cka_linear, cka_gram, cka_permutations, cka_bootstrap, q_bootstrap, ceilings; measured
// also: selection (alignment, split; before the work) and other (the rest of the work's wall time).
struct TransferTiming {
  double estimated_seconds = 0, measured_seconds = 0;  // the plan's total and the work's wall time
  double gemm_gflops = 0;  // fp32 GEMM ceiling measured by the plan: the higher of 512^3 and the SAE shape
  double flops = 0;                                    // counted by the plan (GEMM-equivalent work)
  double peak_bytes_estimate = 0;                      // the plan's peak memory (anonymous; see the plan line)
  std::map<std::string, double> estimated_by_term, seconds_by_term;
  std::map<std::string, double> flops_by_term, fp64_flops_by_term;  // counted by the plan; the fp64 part of each
  // Per term, measured with the wall time: the process's system seconds and minor page faults (all threads).
  std::map<std::string, double> system_seconds_by_term, minor_faults_by_term;
  double user_seconds = 0, system_seconds = 0, minor_faults = 0;  // the process's, over the work
  std::map<std::string, double> model_pair_seconds;    // "<model_a>__<model_b>" -> wall seconds
};

struct TransferResult {
  nlohmann::json matrix;                    // transfer_matrix.json contents
  std::vector<std::filesystem::path> files; // every file written
  TransferTiming timing;
};

// Computes every pair and writes transfer_matrix.json, per_model_transfer_analysis.json,
// transfer_metrics.csv and transfer_matrices.safetensors into out_dir (atomically).
TransferResult run_transfer(const std::vector<Cell>& cells, const TransferOptions& options, uint64_t seed,
                            const std::filesystem::path& out_dir);

// The diagonal pair (a cell's SAE on its own rows) runs through the same map (identity: x s / s, rounded back
// to fp32) and SAE pass as every other pair, so its q is computed; it must lie this close to 1.
inline constexpr double kDiagonalQTolerance = 1e-6;

// Splitting the work across jobs (e.g. one Slurm job per block of source cells):
// compute_transfer_partial() computes the pairs whose SOURCE is one of `sources` (cell names) -- every model
// pair that involves one of them -- and writes them, with what the merge needs (cells, options, seed,
// bootstrap replicates, seed ceilings of those cells), to `partial_file` (JSON, atomically). Every unit
// needs all cells (targets) and identical cells, options and seed. merge_transfer() of partials whose sources
// cover every cell exactly once writes the same four files as run_transfer(), byte for byte: run_transfer
// itself is "all sources" followed by the same merge in memory. Cost of a unit: the per-cell work of every
// model pair it touches (encodings, Grams) plus its sources' pairs.
void compute_transfer_partial(const std::vector<Cell>& cells, const TransferOptions& options, uint64_t seed,
                              const std::vector<std::string>& sources, const std::filesystem::path& partial_file);
TransferResult merge_transfer(const std::vector<std::filesystem::path>& partial_files,
                              const std::filesystem::path& out_dir);

// Gate 3: exactly n_src x n_tgt pairs, every metric finite (cka_p and p_adjusted: null exactly when
// config.cka_permutations = 0), the computed diagonal q within kDiagonalQTolerance of 1.
// Returns {"passed": bool, "checks": [{"name", "passed", "detail"}...]}.
nlohmann::json check_pair_matrix(const nlohmann::json& transfer_matrix, size_t n_src, size_t n_tgt);

// "<src>__to__<tgt>"
std::string pair_key(const std::string& source, const std::string& target);

}  // namespace strata::transfer
