// The go/no-go gates as code (docs/report.md "Gates"). Each check is a JSON object
//   {name, title, tier, passed, status: PASS|FAIL|SKIP, summary, reasons[], value?, threshold?}
// and evaluate_gates() collects them into
//   {verdict: GO|NO-GO, must_pass_ok, must_pass[], should_pass[], publication_ready[], thresholds, expected_cells}.
// The verdict is GO exactly when every must-pass check passes; should-pass and publication-ready
// checks are reported but do not block.
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "report/analysis.hpp"
#include "validation/gate_options.hpp"

namespace strata::validation {

struct ExpectedCell {
  std::string model;
  int layer = 0;
  std::optional<int64_t> hidden_size;  // from the model config; checked against the store when known
  std::string name() const;            // <model>_layer<L>
};

// The run's thresholds: the [gates] section of RUN_DIR/config.resolved.json (else manifest.json
// config.resolved.gates), defaults when neither exists.
GateThresholds thresholds_for_run(const std::filesystem::path& run_dir);

// Expected cells from RUN_DIR/config.resolved.json (models[].name|id, models[].layers or top-level layers,
// models[].hidden_size), else manifest.json "cells". Throws naming both files when neither lists them.
std::vector<ExpectedCell> expected_cells(const std::filesystem::path& run_dir);

// The individual gates (each returns one check object).
nlohmann::json gate1_stores(const std::filesystem::path& run_dir, const std::vector<ExpectedCell>& cells,
                            const GateThresholds& thresholds);
nlohmann::json gate2_saes(const std::filesystem::path& run_dir, const std::vector<ExpectedCell>& cells,
                          const GateThresholds& thresholds);
nlohmann::json gate3_pairs(const std::filesystem::path& run_dir, const std::vector<ExpectedCell>& cells,
                           const GateThresholds& thresholds);
nlohmann::json gate4_figures(const std::filesystem::path& run_dir, const GateThresholds& thresholds);
// Should-pass checks judge the report's analysis (RUN_DIR/report/analysis.json): run the report first.
std::vector<nlohmann::json> should_pass_checks(const std::filesystem::path& run_dir, const GateThresholds& thresholds);
std::vector<nlohmann::json> publication_checks(const std::filesystem::path& run_dir, const GateThresholds& thresholds);

// Every gate. `cells` overrides the expected cells read from the run directory.
nlohmann::json evaluate_gates(const std::filesystem::path& run_dir, const GateThresholds& thresholds = {},
                              const std::optional<std::vector<ExpectedCell>>& cells = std::nullopt);

// The table `strata gate` prints.
std::string format_gate_table(const nlohmann::json& gates);

// Writes RUN_DIR/gates/gates.json atomically.
void write_gates(const std::filesystem::path& run_dir, const nlohmann::json& gates);

// Helpers for building check objects.
nlohmann::json make_check(const std::string& name, const std::string& title, const std::string& tier);
void finish_check(nlohmann::json& check, const std::vector<std::string>& reasons, const std::string& summary);

}  // namespace strata::validation
