// Typed per-pair results of transfer_matrix.json, for readers (lib/report, validation, scripts' C++ side):
// no caller needs to know the "<src>__to__<tgt>" key layout or which values may be null.
#pragma once
#include <nlohmann/json.hpp>

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace strata::transfer {

// One ordered pair (SAE of `source` on the mapped activations of `target`). A metric that was not computed
// (e.g. cka_p without a permutation test) or was not finite is std::nullopt, as it is null in the file.
struct PairResult {
  std::string source, target, source_model, target_model;
  int source_layer = 0, target_layer = 0;
  double source_relative_depth = 0, target_relative_depth = 0;
  bool same_model = false;
  std::string map;         // "identity" or "procrustes"
  std::string evaluation;  // HIGH_ / MODERATE_ / LOW_UNIVERSALITY
  int64_t top_k = 0, aligned_tokens = 0, eval_tokens = 0, cka_tokens = 0, cka_permutation_tokens = 0;
  double source_l0 = 0, retained_fraction = 0;
  std::optional<double> transfer_recon_ratio, fvu_source, fvu_target, fvu_null, q, q_null, q_excess,
      feature_variance_ratio, top_k_spearman, top_k_spearman_p, decoder_similarity, cka, cka_p, map_r2, mmac,
      mmac_weighted, mmac_random, p_adjusted;
  std::array<std::optional<double>, 2> q_excess_ci, cka_ci;

  // A scalar metric by its JSON key ("q_excess", "cka_p", ...); nullopt for an unknown key or a null value.
  std::optional<double> metric(const std::string& name) const;
};

struct TransferMatrix {
  nlohmann::json config;            // the file's "config" (seed, options, cells, model_pairs)
  std::vector<std::string> cells;   // cell names in config order
  std::vector<PairResult> pairs;    // every pair, source-major in `cells` order
  const PairResult* find(const std::string& source, const std::string& target) const;  // nullptr if absent
};

// Parses one pair entry; `where` names the file and pair in errors.
PairResult pair_from_json(const nlohmann::json& entry, const std::string& where);

// Reads transfer_matrix.json (or its parsed document). Errors name the file, the pair and the key.
TransferMatrix read_transfer_matrix(const std::filesystem::path& file);
TransferMatrix transfer_matrix_from_json(const nlohmann::json& document, const std::string& where);

}  // namespace strata::transfer
