// The report step: report/report.md answering the seed's Q1-Q4 with numbers, plus every table as
// report/tables/<name>.csv and .tex (booktabs). Sections and definitions: docs/report.md.
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "report/analysis.hpp"

namespace strata::report {

struct ReportOptions {
  AnalysisOptions analysis;
  // Gate results (validation::evaluate_gates). When absent, gates/gates.json is read if it exists;
  // a run without gate results is reported as "gates not evaluated".
  std::optional<nlohmann::json> gates;
};

struct ReportResult {
  std::filesystem::path markdown;             // RUN_DIR/report/report.md
  std::vector<std::filesystem::path> tables;  // csv and tex files
  std::string verdict;                        // "GO", "NO-GO" or "NOT EVALUATED"
};

ReportResult write_report(const std::filesystem::path& run_dir, const ReportOptions& options = {});

}  // namespace strata::report
