// Gate 3: the transfer matrix is complete (N_src x N_tgt over the expected cells), finite, and q == 1
// on the diagonal. The matrix checks themselves are transfer::check_pair_matrix (one definition).
#include "report/analysis.hpp"
#include "report/run_data.hpp"
#include "transfer/transfer.hpp"
#include "validation/gates.hpp"

namespace strata::validation {
namespace fs = std::filesystem;
using nlohmann::json;

json gate3_pairs(const fs::path& run_dir, const std::vector<ExpectedCell>& expected, const GateThresholds&) {
  json check = make_check("gate3_pairs", "Gate 3: transfer pairs complete and finite", "must_pass");
  std::vector<std::string> reasons;
  const fs::path file = run_dir / "transfer" / "transfer_matrix.json";
  json document;
  try {
    document = report::read_json(file, "the transfer step");
  } catch (const std::exception& e) {
    finish_check(check, {e.what()}, "transfer_matrix.json unreadable");
    return check;
  }
  // The main matrix: positive controls (config [[models]] control_of) and their pairs are the report's
  // "Positive control" section, not part of the count the seed's gate fixes.
  std::map<std::string, std::string> controls;
  if (auto resolved = report::read_json_if_exists(run_dir / "config.resolved.json")) controls = report::control_models(*resolved);
  std::vector<ExpectedCell> cells;
  for (const auto& cell : expected)
    if (!controls.count(cell.model)) cells.push_back(cell);
  if (!controls.empty() && document.contains("transfer_matrix") && document["transfer_matrix"].is_object()) {
    json main = json::object();
    for (const auto& [key, entry] : document["transfer_matrix"].items())
      if (!controls.count(entry.value("source_model", "")) && !controls.count(entry.value("target_model", "")))
        main[key] = entry;
    document["transfer_matrix"] = std::move(main);
  }
  const size_t n = cells.size();
  const json matrix_checks = transfer::check_pair_matrix(document, n, n);
  for (const auto& c : matrix_checks.value("checks", json::array()))
    if (!c.value("passed", false)) reasons.push_back(c.value("name", "") + ": " + c.value("detail", ""));
  const json& pairs = document.value("transfer_matrix", json::object());
  std::vector<std::string> missing;
  for (const auto& source : cells)
    for (const auto& target : cells)
      if (!pairs.contains(transfer::pair_key(source.name(), target.name())))
        missing.push_back(transfer::pair_key(source.name(), target.name()));
  if (!missing.empty())
    reasons.push_back(fmt::format("{} expected pairs missing, e.g. {}", missing.size(), missing.front()));
  finish_check(check, reasons, fmt::format("{} pairs, expected {} x {} = {}", pairs.is_object() ? pairs.size() : 0, n, n, n * n));
  check["value"] = pairs.is_object() ? pairs.size() : 0;
  check["threshold"] = n * n;
  check["checks"] = matrix_checks.value("checks", json::array());
  return check;
}

}  // namespace strata::validation
