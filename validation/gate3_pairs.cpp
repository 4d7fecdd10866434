// Gate 3: the transfer matrix is complete (N_src x N_tgt over the expected cells), finite, and q == 1
// on the diagonal. The matrix checks themselves are transfer::check_pair_matrix (one definition).
#include "report/run_data.hpp"
#include "transfer/transfer.hpp"
#include "validation/gates.hpp"

namespace strata::validation {
namespace fs = std::filesystem;
using nlohmann::json;

json gate3_pairs(const fs::path& run_dir, const std::vector<ExpectedCell>& cells, const GateThresholds&) {
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
