// Gate 1: every expected activation store present and sane (docs/report.md "Gates").
#include "core/error.hpp"
#include "io/activation_store.hpp"
#include "report/run_data.hpp"
#include "validation/gates.hpp"

namespace strata::validation {
namespace fs = std::filesystem;
using nlohmann::json;

json gate1_stores(const fs::path& run_dir, const std::vector<ExpectedCell>& cells, const GateThresholds& thresholds) {
  json check = make_check("gate1_stores", "Gate 1: activation stores", "must_pass");
  std::vector<std::string> reasons;
  std::map<std::string, std::vector<std::pair<int, int64_t>>> rows_by_model;
  int64_t rows_streamed = 0;
  size_t present = 0;
  for (const auto& cell : cells) {
    const fs::path meta_file = run_dir / "activations" / (io::store_base_name(cell.model, cell.layer) + ".meta.json");
    if (!fs::exists(meta_file)) {
      reasons.push_back(fmt::format("{}: missing {} (re-run the capture step)", cell.name(),
                                    fs::relative(meta_file, run_dir).string()));
      continue;
    }
    try {
      const io::ActivationStore store = io::ActivationStore::open(meta_file);
      const json& meta = store.meta();
      ++present;
      if (meta.value("rows", int64_t{-1}) != store.rows())
        reasons.push_back(fmt::format("{}: meta.json says {} rows, the shards hold {}", cell.name(),
                                      meta.value("rows", int64_t{-1}), store.rows()));
      if (meta.contains("hidden_size") && meta["hidden_size"].is_number_integer() &&
          meta["hidden_size"].get<int64_t>() != store.dim())
        reasons.push_back(fmt::format("{}: stored dim {} != model hidden_size {} in meta.json", cell.name(), store.dim(),
                                      meta["hidden_size"].get<int64_t>()));
      if (cell.hidden_size && *cell.hidden_size != store.dim())
        reasons.push_back(fmt::format("{}: stored dim {} != hidden size {} of the model config", cell.name(),
                                      store.dim(), *cell.hidden_size));
      // The writer counted NaN/Inf as it stored the rows; the count is read, not recomputed. Re-reading every
      // shard is the explicit deep check below ([gates] stream_store_check), for stores changed after writing.
      const std::string meta_name = fs::relative(meta_file, run_dir).string();
      const auto nonfinite = meta.find("nonfinite_count");
      if (nonfinite == meta.end() || !nonfinite->is_number_integer())
        reasons.push_back(fmt::format("{}: {} has no nonfinite_count (written by an older strata; re-run the capture step)",
                                      cell.name(), meta_name));
      else if (nonfinite->get<int64_t>() != 0)
        reasons.push_back(fmt::format("{}: {} records nonfinite_count = {} ({} rows hold NaN/Inf values)", cell.name(),
                                      meta_name, nonfinite->get<int64_t>(), meta.value("nonfinite_rows", int64_t{-1})));
      if (thresholds.stream_store_check) {
        for (size_t shard = 0; shard < store.num_shards(); ++shard) {
          const torch::Tensor rows = store.load_shard(shard);
          const int64_t bad = rows.numel() - torch::isfinite(rows).sum().item<int64_t>();
          rows_streamed += rows.size(0);
          if (bad > 0)
            reasons.push_back(fmt::format("{}: shard {} holds {} NaN/Inf values", cell.name(), shard + 1, bad));
        }
      }
      rows_by_model[cell.model].emplace_back(cell.layer, store.rows());
    } catch (const std::exception& e) {
      reasons.push_back(fmt::format("{}: {}", cell.name(), e.what()));
    }
  }
  for (const auto& [model, layers] : rows_by_model) {
    for (const auto& [layer, rows] : layers)
      if (rows != layers.front().second)
        reasons.push_back(fmt::format("{}: token counts differ across layers (layer {}: {} rows, layer {}: {} rows)",
                                      model, layers.front().first, layers.front().second, layer, rows));
  }
  finish_check(check, reasons,
               fmt::format("{}/{} stores present{}", present, cells.size(),
                           thresholds.stream_store_check ? fmt::format(", {} rows streamed for NaN/Inf", rows_streamed)
                                                         : ""));
  check["expected"] = cells.size();
  check["present"] = present;
  return check;
}

}  // namespace strata::validation
