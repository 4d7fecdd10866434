#include "report/run_data.hpp"

#include <fstream>
#include <sstream>

#include "core/error.hpp"
#include "transfer/transfer.hpp"
#include "core/fs.hpp"

namespace strata::report {
namespace fs = std::filesystem;
using nlohmann::json;

std::string cell_name(const std::string& model, int layer) { return fmt::format("{}_layer{}", model, layer); }

namespace {

std::optional<double> number_at(const json& object, const std::string& name) {
  if (!object.is_object()) return std::nullopt;
  auto it = object.find(name);
  if (it == object.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

// "<model>_layer<L>" -> (model, L); models may themselves contain underscores.
std::pair<std::string, int> split_cell(const std::string& cell) {
  const auto at = cell.rfind("_layer");
  if (at == std::string::npos) fail("cell name '{}' does not follow <model>_layer<L>", cell);
  return {cell.substr(0, at), std::stoi(cell.substr(at + 6))};
}

}  // namespace

json read_json(const fs::path& file, const std::string& producer) {
  if (!fs::exists(file)) fail("{} is missing; it is written by {}", file.string(), producer);
  try {
    return json::parse(read_text_file(file));
  } catch (const json::parse_error& e) {
    fail("{} is not valid JSON ({}); re-run {}", file.string(), e.what(), producer);
  }
}

std::optional<json> read_json_if_exists(const fs::path& file) {
  if (!fs::exists(file)) return std::nullopt;
  return read_json(file, "the run");
}

std::optional<double> SaeSummary::metric(const std::string& name) const { return number_at(metrics, name); }

const PairResult* TransferResults::find(const std::string& source, const std::string& target) const {
  for (const auto& pair : pairs)
    if (pair.source == source && pair.target == target) return &pair;
  return nullptr;
}

std::string TransferResults::model_of(const std::string& cell) const { return split_cell(cell).first; }
int TransferResults::layer_of(const std::string& cell) const { return split_cell(cell).second; }

TransferResults load_transfer(const fs::path& run_dir) {
  const fs::path file = run_dir / "transfer" / "transfer_matrix.json";
  TransferResults results;
  results.document = read_json(file, "`strata transfer` (the transfer step)");
  const json& matrix = results.document.value("transfer_matrix", json::object());
  if (!matrix.is_object() || matrix.empty())
    fail("{} has no \"transfer_matrix\" pairs; re-run the transfer step", file.string());

  auto note_model = [&](const std::string& model) {
    if (std::find(results.models.begin(), results.models.end(), model) == results.models.end())
      results.models.push_back(model);
  };
  std::vector<std::pair<std::string, int>> cells;
  auto note_cell = [&](const std::string& model, int layer) {
    note_model(model);
    if (std::find(cells.begin(), cells.end(), std::make_pair(model, layer)) == cells.end())
      cells.emplace_back(model, layer);
  };
  // Cell order: the transfer config's "cells" list when present, else first appearance in the pairs.
  if (auto cfg = results.document.find("config"); cfg != results.document.end() && cfg->contains("cells")) {
    for (const auto& cell : (*cfg)["cells"]) {
      if (cell.is_string()) {
        auto [model, layer] = split_cell(cell.get<std::string>());
        note_cell(model, layer);
      } else if (cell.is_object() && cell.contains("model") && cell.contains("layer")) {
        note_cell(cell["model"].get<std::string>(), cell["layer"].get<int>());
      }
    }
  }
  // Typed pairs from the one reader of the format; kept in the file's key order (what every aggregate below
  // iterated before, so sums keep their order and the report its bytes).
  transfer::TransferMatrix typed = transfer::transfer_matrix_from_json(results.document, file.string());
  std::stable_sort(typed.pairs.begin(), typed.pairs.end(), [](const PairResult& a, const PairResult& b) {
    return transfer::pair_key(a.source, a.target) < transfer::pair_key(b.source, b.target);
  });
  for (PairResult& pair : typed.pairs) {
    note_cell(pair.source_model, pair.source_layer);
    note_cell(pair.target_model, pair.target_layer);
    results.pairs.push_back(std::move(pair));
  }
  auto model_rank = [&](const std::string& model) {
    return std::find(results.models.begin(), results.models.end(), model) - results.models.begin();
  };
  std::stable_sort(cells.begin(), cells.end(), [&](const auto& a, const auto& b) {
    return std::make_pair(model_rank(a.first), a.second) < std::make_pair(model_rank(b.first), b.second);
  });
  for (const auto& [model, layer] : cells) results.cells.push_back(cell_name(model, layer));

  for (const auto& score : results.document.value("layer_universality_scores", json::array())) {
    CellScore cell;
    cell.model = score.value("model", "");
    cell.layer = score.value("layer", 0);
    cell.relative_depth = score.value("relative_depth", 0.0);
    auto q = number_at(score, "mean_cross_model_q_excess");
    if (!q) continue;  // a cell with no cross-model pair (single-model run) has no score
    cell.mean_cross_model_q_excess = *q;
    if (auto ci = score.find("ci"); ci != score.end() && ci->is_array() && ci->size() == 2 && (*ci)[0].is_number() &&
                                    (*ci)[1].is_number()) {
      cell.ci_lo = (*ci)[0].get<double>();
      cell.ci_hi = (*ci)[1].get<double>();
    }
    cell.mean_cross_model_cka = number_at(score, "mean_cross_model_cka");
    if (auto keys = score.find("pairs"); keys != score.end() && keys->is_array())
      for (const auto& key : *keys)
        if (key.is_string()) cell.pairs.push_back(key.get<std::string>());
    results.universality.push_back(cell);
  }
  std::stable_sort(results.universality.begin(), results.universality.end(), [&](const auto& a, const auto& b) {
    return std::make_pair(model_rank(a.model), a.layer) < std::make_pair(model_rank(b.model), b.layer);
  });
  // seed_ceilings: {"<cell>": {q, q_null, q_excess, mmac, ...}}; normalised to an array with "cell".
  if (auto ceilings = results.document.find("seed_ceilings"); ceilings != results.document.end()) {
    if (ceilings->is_object()) {
      for (const auto& [cell, entry] : ceilings->items()) {
        json row = entry;
        row["cell"] = cell;
        results.seed_ceilings.push_back(row);
      }
    } else if (ceilings->is_array()) {
      results.seed_ceilings = *ceilings;
    }
  }
  return results;
}

std::vector<SaeSummary> load_saes(const fs::path& run_dir) {
  std::vector<SaeSummary> saes;
  const fs::path root = run_dir / "saes";
  if (!fs::is_directory(root)) return saes;
  for (const auto& entry : fs::directory_iterator(root)) {
    const fs::path cfg_file = entry.path() / "cfg.json";
    if (!entry.is_directory() || !fs::exists(cfg_file)) continue;
    SaeSummary sae;
    sae.dir = entry.path();
    sae.cell = entry.path().filename().string();
    sae.cfg = read_json(cfg_file, "`strata train-sae` (the train step)");
    sae.metrics = sae.cfg.value("metrics", json::object());
    auto [model, layer] = split_cell(sae.cell);
    sae.model = sae.cfg.value("model", sae.metrics.value("model", model));
    sae.layer = sae.cfg.value("layer", sae.metrics.value("layer", layer));
    sae.relative_depth = sae.cfg.value("relative_depth", sae.metrics.value("relative_depth", 0.0));
    saes.push_back(std::move(sae));
  }
  std::sort(saes.begin(), saes.end(),
            [](const auto& a, const auto& b) { return std::tie(a.model, a.layer) < std::tie(b.model, b.layer); });
  return saes;
}

std::optional<size_t> Curve::column(const std::string& name) const {
  for (size_t i = 0; i < columns.size(); ++i)
    if (columns[i] == name) return i;
  return std::nullopt;
}

Curve load_training_curve(const fs::path& csv) {
  Curve curve;
  if (!fs::exists(csv)) return curve;
  std::istringstream in(read_text_file(csv));
  std::string line;
  if (!std::getline(in, line)) return curve;
  std::stringstream header(line);
  for (std::string name; std::getline(header, name, ',');) {
    while (!name.empty() && (name.back() == '\r' || name.back() == ' ')) name.pop_back();
    curve.columns.push_back(name);
  }
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::vector<double> row;
    std::stringstream fields(line);
    for (std::string field; std::getline(fields, field, ',');) {
      try {
        row.push_back(std::stod(field));
      } catch (const std::exception&) {
        row.push_back(std::numeric_limits<double>::quiet_NaN());
      }
    }
    if (row.size() == curve.columns.size()) curve.rows.push_back(std::move(row));
  }
  return curve;
}

}  // namespace strata::report
