// The glue between the run harness and the step layers: one StepFunction per pipeline step, each
// driving capture / sae / transfer / report through their public APIs from the experiment config.
//
//   capture   text::load_dataset + capture::capture_model per model -> activations/, manifest "cells"
//   train     sae::train_sae per cell, options = [sae] for the cell's relative depth -> saes/<cell>/; with
//             [transfer] ceiling, a second-seed SAE of each model's middle cell -> saes_ceiling/<cell>/
//   transfer  transfer::run_transfer over every cell with a trained SAE -> transfer/
//   figures   report::render_figures -> figures/
//   report    report::write_report -> report/ (report.md, tables/, analysis.json); never reads the gates
//   gates     the validation gates (should-pass: on report/analysis.json) -> gates/gates.json
#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "harness/steps.hpp"

namespace strata::pipeline {

// The go/no-go gates live in validation/, which links every layer; they are passed in from the CLI
// rather than linked here, so that the pipeline library does not depend on its own dependents.
struct GateHooks {
  // (run_dir, the resolved [gates] section, expected cells [{model, layer, hidden_size}]) -> gates JSON.
  std::function<nlohmann::json(const std::filesystem::path&, const nlohmann::json&, const nlohmann::json&)> evaluate;
  // Writes RUN_DIR/gates/gates.json atomically.
  std::function<void(const std::filesystem::path&, const nlohmann::json&)> write;
  // The table `strata gate` prints.
  std::function<std::string(const nlohmann::json&)> format_table;
};

// The pipeline's step table, the single source of truth for the runner, resume and schedulers: per step
// its function, the config it reads, the steps whose artifacts it reads, the artifacts it writes and its
// units of work. Without gate hooks the gates row has no function (reported as not available).
std::vector<harness::StepDefinition> step_table(const GateHooks& gates = {});

// Adds every row of step_table(gates) to `registry` (harness::global_steps() for the CLI).
void register_steps(harness::StepRegistry& registry, const GateHooks& gates = {});

// The cells the capture step recorded in the manifest ("cells": [{name, model, layer, n_layers,
// relative_depth, hidden_size}]). Throws naming the capture step when there are none.
nlohmann::json recorded_cells(harness::RunDir& run);

}  // namespace strata::pipeline
