// The pipeline steps with the go/no-go gates wired in (validation/ links every layer, so the CLI, not
// lib/pipeline, passes the gates in). Shared by `strata run` and `strata reproduce`.
#pragma once
#include "harness/steps.hpp"
#include "pipeline/pipeline.hpp"
#include "validation/gates.hpp"

namespace strata::cli {

inline void register_pipeline_steps() {
  pipeline::GateHooks hooks;
  hooks.evaluate = [](const std::filesystem::path& run_dir, const nlohmann::json& gates_section, const nlohmann::json& cells) {
    std::vector<validation::ExpectedCell> expected;
    for (const auto& cell : cells)
      expected.push_back({cell.at("model").get<std::string>(), cell.at("layer").get<int>(),
                          cell.contains("hidden_size") ? std::optional<int64_t>(cell["hidden_size"].get<int64_t>()) : std::nullopt});
    return validation::evaluate_gates(run_dir, validation::GateThresholds::from_json(gates_section), expected);
  };
  hooks.write = [](const std::filesystem::path& run_dir, const nlohmann::json& gates) { validation::write_gates(run_dir, gates); };
  hooks.format_table = [](const nlohmann::json& gates) { return validation::format_gate_table(gates); };
  pipeline::register_steps(harness::global_steps(), hooks);
}

}  // namespace strata::cli
