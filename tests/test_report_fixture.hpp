// A synthetic run directory for the report and validation suites (docs/run_layout.md), with a planted
// answer: cross-model q_excess is high at shallow depth and falls below 0.6 from relative depth 0.6 on,
// so Q1 = yes, the divergence point is depth 0.6, and the decline is monotonic. Optionally a positive
// control: a model declared `control_of` a family, whose same-layer pairs with its twin transfer at
// control_q_excess, while with every other model it behaves like the twin.
#pragma once
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <cmath>
#include <numeric>
#include <filesystem>
#include <string>
#include <vector>

#include "core/fs.hpp"
#include "io/activation_store.hpp"
#include "io/safetensors.hpp"

namespace strata::testing {

struct FixtureOptions {
  std::vector<std::string> models = {"alpha", "beta", "gamma", "delta"};
  std::vector<int> layers = {1, 2, 3, 4, 5};  // of n_layers = 5: relative depths 0.2 .. 1.0
  int n_layers = 5;
  int64_t rows = 48;
  int64_t dim = 8;
  std::string control, control_of;  // a positive control model and its twin (empty = none)
  double control_q_excess = 0.99;    // q_excess of the control's same-layer pairs with its twin (CI +-0.005)
};

// Planted mean cross-model q_excess by relative depth (before the small per-model offsets).
inline double planted_universality(double depth) {
  if (depth <= 0.2 + 1e-9) return 0.95;
  if (depth <= 0.4 + 1e-9) return 0.88;
  if (depth <= 0.6 + 1e-9) return 0.52;
  if (depth <= 0.8 + 1e-9) return 0.45;
  return 0.32;
}

inline double model_offset(size_t model_index) { return 0.01 * static_cast<double>(model_index) - 0.015; }

struct Fixture {
  std::filesystem::path dir;
  FixtureOptions options;
  std::vector<std::string> cells;
  // Expected early mean (cells at depth <= 0.34) computed from the pairs written.
  double early_mean = 0;
};

inline Fixture make_run_fixture(const std::filesystem::path& dir, const FixtureOptions& options = {}) {
  using nlohmann::json;
  namespace fs = std::filesystem;
  Fixture fx{dir, options, {}, 0};
  fs::create_directories(dir);
  torch::manual_seed(7);

  json models = json::array();
  for (const auto& m : options.models) models.push_back({{"name", m}, {"layers", options.layers}, {"checkpoint", "none"}});
  std::vector<std::string> all_models = options.models;
  std::vector<size_t> family(options.models.size());  // the model whose offsets a model shares
  std::iota(family.begin(), family.end(), size_t{0});
  if (!options.control.empty()) {
    models.push_back({{"name", options.control}, {"layers", options.layers}, {"checkpoint", "none"},
                      {"control_of", options.control_of}});
    all_models.push_back(options.control);
    family.push_back(static_cast<size_t>(std::find(options.models.begin(), options.models.end(), options.control_of) -
                                         options.models.begin()));
  }
  json resolved = {{"experiment", {{"name", "fixture"}, {"seed", 42}}}, {"models", models}, {"gates", {{"max_fvu", 0.5}}}};
  atomic_write_text(dir / "config.resolved.json", resolved.dump(2));

  struct CellInfo { std::string model; size_t model_index; int layer; double depth; std::string name; };
  std::vector<CellInfo> cells;
  for (size_t m = 0; m < all_models.size(); ++m)
    for (int layer : options.layers) {
      const double depth = static_cast<double>(layer) / options.n_layers;
      const std::string name = all_models[m] + "_layer" + std::to_string(layer);
      cells.push_back({all_models[m], family[m], layer, depth, name});
      fx.cells.push_back(name);
    }

  // Activation stores.
  for (const auto& c : cells) {
    io::ActivationStoreWriter writer(dir / "activations", io::store_base_name(c.model, c.layer), options.dim,
                                     torch::kFloat32, 1 << 20);
    io::RowIndex index;
    auto ids = torch::arange(options.rows, torch::kInt64);
    index.doc_id = ids.div(8, "floor");
    index.seq_id = index.doc_id.clone();
    index.token_index = ids.remainder(8);
    index.byte_begin = index.token_index * 4;
    index.byte_end = index.byte_begin + 4;
    writer.append(torch::randn({options.rows, options.dim}), index);
    writer.finish({{"model", c.model}, {"layer", c.layer}, {"n_layers", options.n_layers},
                   {"relative_depth", c.depth}, {"hidden_size", options.dim}});
  }

  // SAEs: cfg.json with metrics, weights, training curves.
  for (const auto& c : cells) {
    const fs::path sae_dir = dir / "saes" / c.name;
    const int64_t d_sae = options.dim * 4;
    io::save_safetensors(sae_dir / "sae_weights.safetensors",
                         {{"W_enc", torch::randn({options.dim, d_sae})}, {"W_dec", torch::randn({d_sae, options.dim})},
                          {"b_enc", torch::zeros({d_sae})}, {"b_dec", torch::zeros({options.dim})}});
    const double fvu = 0.08 + 0.04 * c.depth + 0.005 * static_cast<double>(c.model_index);
    // L0 well below d_in (0.125-0.375 of it): sparse codes.
    json metrics = {{"mse", fvu * options.dim}, {"fvu", fvu}, {"explained_variance", 1 - fvu},
                    {"l0", 0.5 + 0.5 * c.layer}, {"sparsity", (0.5 + 0.5 * c.layer) / d_sae},
                    {"dead_fraction", 0.01 * c.layer}, {"dense_fraction", 0.0}, {"converged", true},
                    {"diverged", false}, {"epochs_run", 6}, {"final_train_loss", 1.5}, {"heldout_loss", 1.6},
                    {"scaling_factor", 1.0}};
    json cfg = {{"architecture", "standard"}, {"d_in", options.dim}, {"d_sae", d_sae}, {"model", c.model},
                {"layer", c.layer}, {"n_layers", options.n_layers}, {"relative_depth", c.depth},
                {"hook_name", "blocks." + std::to_string(c.layer - 1) + ".hook_resid_post"}, {"seed", 1000 + c.layer},
                {"metrics", metrics}};
    atomic_write_text(sae_dir / "cfg.json", cfg.dump(2));
    std::string curve = "step,epoch,tokens,loss,mse,l1,l0,sparsity,lr\n";
    for (int step = 1; step <= 30; ++step) {
      const double loss = 10.0 * std::exp(-0.15 * step) + fvu;
      curve += fmt::format("{},{},{},{},{},{},{},{},{}\n", step, (step - 1) / 5, step * 1024, loss, loss * 0.8,
                           loss * 0.2, 40.0 - step * 0.8, 0.1, 1e-3);
    }
    atomic_write_text(sae_dir / "training_curve.csv", curve);
  }

  // Transfer matrix with every documented pair key.
  json matrix = json::object();
  std::map<std::string, json> entries;
  for (const auto& s : cells)
    for (const auto& t : cells) {
      const bool same_model = s.model == t.model;
      const bool control_pair = !options.control.empty() && s.layer == t.layer &&
                                ((s.model == options.control && t.model == options.control_of) ||
                                 (t.model == options.control && s.model == options.control_of));
      double q_excess;
      if (s.name == t.name) q_excess = 1.0;
      else if (same_model) q_excess = 1.0 - 0.5 * std::abs(s.depth - t.depth);
      else if (control_pair) q_excess = options.control_q_excess;
      else q_excess = planted_universality(s.depth) + model_offset(s.model_index) - 0.02 * std::abs(s.depth - t.depth);
      const double half_ci = control_pair ? 0.005 : 0.03;
      const double q_null = 0.4;
      const double q = s.name == t.name ? 1.0 : q_null + q_excess * (1 - q_null);
      const double cka = s.name == t.name ? 1.0 : std::clamp(q_excess - 0.05, 0.0, 1.0);
      const double p = s.name == t.name ? 1.0 : (cka > 0.5 ? 1e-4 : 0.02);
      const std::string label = q_excess >= 0.9 ? "HIGH_UNIVERSALITY" : (q_excess >= 0.6 ? "MODERATE_UNIVERSALITY" : "LOW_UNIVERSALITY");
      matrix[s.name + "__to__" + t.name] = {
          {"source", s.name}, {"target", t.name}, {"source_model", s.model}, {"source_layer", s.layer},
          {"target_model", t.model}, {"target_layer", t.layer}, {"same_model", same_model},
          {"transfer_recon_ratio", 1.0 / std::max(q, 0.05)}, {"fvu_source", 0.1}, {"fvu_target", 1 - 0.9 * q},
          {"q", q}, {"q_null", s.name == t.name ? 0.4 : q_null}, {"q_excess", q_excess},
          {"q_excess_ci", {q_excess - half_ci, q_excess + half_ci}}, {"feature_variance_ratio", q},
          {"top_k_spearman", q_excess}, {"top_k_spearman_p", 1e-3}, {"decoder_similarity", q_excess * 0.9},
          {"cka", cka}, {"cka_p", p}, {"cka_ci", {cka - 0.02, cka + 0.02}}, {"map_r2", 0.5}, {"mmac", 0.6 * q_excess},
          {"mmac_weighted", 0.65 * q_excess}, {"mmac_random", 0.12}, {"aligned_tokens", options.rows},
          {"retained_fraction", same_model ? 1.0 : 0.85}, {"evaluation", label}, {"p_adjusted", std::min(1.0, p * 1.5)}};
      entries[s.name + "__to__" + t.name] = matrix[s.name + "__to__" + t.name];
    }
  json scores = json::array();
  double early_sum = 0;
  int early_n = 0;
  // As the transfer step defines it: per cell, its pairs in both directions with every other model's cell
  // of the same layer (the nearest depth), controls included; the report leaves the controls out.
  for (const auto& c : cells) {
    json keys = json::array();
    double q_sum = 0, cka_sum = 0, q_main = 0;
    int main_n = 0;
    for (const auto& other : all_models) {
      if (other == c.model) continue;
      const std::string o = other + "_layer" + std::to_string(c.layer);
      for (const std::string& key : {c.name + "__to__" + o, o + "__to__" + c.name}) {
        keys.push_back(key);
        q_sum += entries[key]["q_excess"].get<double>();
        cka_sum += entries[key]["cka"].get<double>();
        if (other != options.control) {
          q_main += entries[key]["q_excess"].get<double>();
          ++main_n;
        }
      }
    }
    const double mean = q_sum / keys.size();
    const double cka = cka_sum / keys.size();
    scores.push_back({{"relative_depth", c.depth}, {"cell", c.name}, {"model", c.model}, {"layer", c.layer},
                      {"pairs", keys}, {"mean_cross_model_q_excess", mean}, {"ci", {mean - 0.04, mean + 0.04}},
                      {"mean_cross_model_cka", cka}});
    if (c.depth <= 0.34 && c.model != options.control) {
      early_sum += q_main / main_n;
      ++early_n;
    }
  }
  fx.early_mean = early_sum / early_n;
  json ceilings = json::object();
  for (const auto& m : options.models)
    ceilings[m + "_layer" + std::to_string(options.layers.front())] = {{"q", 0.97}, {"q_null", 0.4}, {"q_excess", 0.95},
                                                                         {"mmac", 0.8}, {"decoder_similarity", 0.9}};
  json cells_json = json::array();
  for (const auto& c : cells) cells_json.push_back({{"name", c.name}, {"model", c.model}, {"layer", c.layer}});
  json transfer = {{"config", {{"cells", cells_json}, {"bootstrap", 200}}},
                   {"transfer_matrix", matrix},
                   {"layer_universality_scores", scores},
                   {"seed_ceilings", ceilings}};
  atomic_write_text(dir / "transfer" / "transfer_matrix.json", transfer.dump(2));

  json manifest = {
      {"format", "strata-run-manifest/1"},
      {"git", {{"commit", "0123456789abcdef0123456789abcdef01234567"}, {"dirty", false}}},
      {"environment", {{"threads", 2}, {"blas", "openblas"}, {"compiler", "GNU 12"}}},
      {"config", {{"sha256", std::string(64, 'a')}, {"resolved", resolved}}},
      {"seeds", {{"master", 42}, {"derived", {{"train/alpha/1", 1001}, {"transfer", 77}}}}},
      {"artifacts", {{"transfer/transfer_matrix.json", {{"size", 1234}, {"sha256", std::string(64, 'b')}, {"step", "transfer"}}}}}};
  atomic_write_text(dir / "manifest.json", manifest.dump(2));
  return fx;
}

// Copies a finished fixture so a test can break it without affecting others.
inline std::filesystem::path copy_run(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::filesystem::remove_all(to);
  std::filesystem::copy(from, to, std::filesystem::copy_options::recursive);
  return to;
}

}  // namespace strata::testing
