// Read-only view of a run directory (docs/run_layout.md) for the figures, the report and the gates.
// Every loader names the file and the step that writes it when something is missing or malformed.
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "transfer/result.hpp"

namespace strata::report {

// "<model>_layer<L>", the cell naming of docs/run_layout.md.
std::string cell_name(const std::string& model, int layer);

// One ordered pair, typed (lib/transfer/result.hpp): the report never parses "<src>__to__<tgt>" keys.
using transfer::PairResult;

struct CellScore {  // one entry of layer_universality_scores
  std::string model;
  int layer = 0;
  double relative_depth = 0;
  double mean_cross_model_q_excess = 0;
  std::optional<double> ci_lo, ci_hi;
  std::optional<double> mean_cross_model_cka;
  std::vector<std::string> pairs;  // the pair keys the transfer step averaged ("pairs"); may be empty
  std::string name() const { return cell_name(model, layer); }
};

struct TransferResults {
  nlohmann::json document;                // transfer_matrix.json as read
  std::vector<std::string> models;        // in order of first appearance
  std::vector<std::string> cells;         // ordered by model (as above), then layer
  std::vector<PairResult> pairs;
  std::vector<CellScore> universality;    // ordered like `cells`
  nlohmann::json seed_ceilings = nlohmann::json::array();  // [{cell, q, q_null, q_excess, mmac, ...}]

  const PairResult* find(const std::string& source, const std::string& target) const;
  std::string model_of(const std::string& cell) const;
  int layer_of(const std::string& cell) const;
};

TransferResults load_transfer(const std::filesystem::path& run_dir);

struct SaeSummary {
  std::string cell, model;
  int layer = 0;
  double relative_depth = 0;
  nlohmann::json cfg;      // cfg.json
  nlohmann::json metrics;  // cfg["metrics"]
  std::filesystem::path dir;
  std::optional<double> metric(const std::string& name) const;
};

// Every saes/<cell>/cfg.json, ordered by model then layer.
std::vector<SaeSummary> load_saes(const std::filesystem::path& run_dir);

// training_curve.csv as columns (header names -> values); empty when the file is absent.
struct Curve {
  std::vector<std::string> columns;
  std::vector<std::vector<double>> rows;
  std::optional<size_t> column(const std::string& name) const;
};
Curve load_training_curve(const std::filesystem::path& csv);

// JSON from a file with an error naming the file and the step that produces it.
nlohmann::json read_json(const std::filesystem::path& file, const std::string& producer);
std::optional<nlohmann::json> read_json_if_exists(const std::filesystem::path& file);

}  // namespace strata::report
