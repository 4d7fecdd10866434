// Synthetic "models" with a planted, known transfer structure, for testing the transfer metrics.
//
// A pool of sparse features f = 0..pool-1 with unit directions u_f in a shared p-dimensional space; every
// token draws one sparse code c_t (each feature fires with `firing_probability`, magnitude U(1, 2)).
// Model m embeds the shared space in its own width d_m by a random semi-orthogonal placement P_m [p, d_m]
// (orthonormal rows), so models of different widths have unrelated bases. Cell (m, L) carries the window
// of features [L * layer_shift + m * model_shift, + features_per_cell): features drift across layers and
// differ across models. x_t = sum_{f in window} c_t[f] u_f P_m + noise. The planted overlap of two cells is
// |window_a ∩ window_b| / features_per_cell. Each cell's SAE is the planted dictionary: W_dec rows
// u_f P_m, W_enc = W_dec^T, b_enc = -threshold, b_dec = 0.
#pragma once
#include <torch/types.h>

#include <filesystem>
#include <vector>

#include "transfer/transfer.hpp"

namespace strata::transfer {

struct PlantedSpec {
  std::vector<int64_t> widths = {64, 96, 128};  // one model per width
  int layers = 3;
  int64_t shared_dim = 64;  // p <= min(widths)
  int64_t features_per_cell = 32;
  int64_t layer_shift = 16, model_shift = 8;
  int64_t sequences = 60, tokens_per_sequence = 100;
  double firing_probability = 0.1;
  double noise = 0.05;
  double threshold = 0.3;
  double drop_fraction = 0.0;  // models after the first lose this fraction of tokens (alignment test)
};

struct PlantedData {
  std::vector<Cell> cells;
  torch::Tensor overlap;  // fp64 [n_cells, n_cells], planted
};

// Writes activation stores (with doc_id/byte_end index) and planted SAEs under `dir`.
PlantedData make_planted(const PlantedSpec& spec, uint64_t seed, const std::filesystem::path& dir);

}  // namespace strata::transfer
