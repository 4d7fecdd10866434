// The report step: report/report.md answering the seed's Q1-Q4 with numbers, plus every table as
// report/tables/<name>.csv and .tex (booktabs), and the analysis behind them as report/analysis.json.
// Sections and definitions: docs/report.md.
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "report/analysis.hpp"

namespace strata::report {

struct ReportOptions {
  // Default: analysis_options_for_run(run_dir), the settings of the run's own config.
  std::optional<AnalysisOptions> analysis;
  // The report's title. Default: [experiment] name of the run's config.resolved.json, else the directory
  // name. Named after the experiment, not the directory, so that a reproduced run writes the same report.
  std::optional<std::string> experiment_name;
};

// The report depends only on the artifacts of the steps before it (capture, train, transfer, figures)
// and the config, never on gates/gates.json or an earlier report: a report written before or after the
// gates, fresh or resumed, has the same bytes. The gates step runs after it and judges the same
// analysis, which the report writes as report/analysis.json (validation/should_pass.cpp reads it).
struct ReportResult {
  std::filesystem::path markdown;             // RUN_DIR/report/report.md
  std::filesystem::path analysis;             // RUN_DIR/report/analysis.json
  std::vector<std::filesystem::path> tables;  // csv and tex files
};

ReportResult write_report(const std::filesystem::path& run_dir, const ReportOptions& options = {});

}  // namespace strata::report
