#define BOOST_TEST_MODULE validation
#include <boost/test/unit_test.hpp>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "io/safetensors.hpp"
#include "report/figures.hpp"
#include "test_helpers.hpp"
#include "test_report_fixture.hpp"
#include "validation/gates.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace strata;

namespace {

// A good run (stores, SAEs, 400 pairs, figures), built once; each negative test breaks a copy.
const fs::path& good_run() {
  static const fs::path dir = [] {
    auto fx = testing::make_run_fixture(testing::fresh_dir("validation_good"));
    report::render_figures(fx.dir);
    return fx.dir;
  }();
  return dir;
}

// A copy, so callers may pass a temporary gates document.
json find_check(const json& gates, const std::string& tier, const std::string& name) {
  for (const auto& check : gates.at(tier))
    if (check.at("name") == name) return check;
  BOOST_FAIL("no check " << name << " in " << tier);
  return json();
}

bool any_reason_contains(const json& check, const std::string& text) {
  for (const auto& r : check.at("reasons"))
    if (r.get<std::string>().find(text) != std::string::npos) return true;
  return false;
}

}  // namespace

BOOST_AUTO_TEST_CASE(good_run_is_go) {
  const json gates = validation::evaluate_gates(good_run());
  BOOST_TEST_MESSAGE(validation::format_gate_table(gates));
  BOOST_TEST(gates["verdict"] == "GO");
  BOOST_TEST(gates["must_pass_ok"].get<bool>());
  BOOST_TEST(gates["expected_cells"].size() == 20);
  for (const char* name : {"gate1_stores", "gate2_saes", "gate3_pairs", "gate4_figures"})
    BOOST_TEST(find_check(gates, "must_pass", name)["status"] == "PASS", name);
  // The fixture plants the seed's expected science, so every should-pass check holds too.
  for (const char* name : {"early_layer_transfer", "monotonic_decline", "cross_model_spread", "divergence_point"})
    BOOST_TEST(find_check(gates, "should_pass", name)["status"] == "PASS", name);
  for (const char* name : {"figures_dpi", "figure_labels", "p_values", "seeds_documented"})
    BOOST_TEST(find_check(gates, "publication_ready", name)["status"] == "PASS", name);
  BOOST_TEST(find_check(gates, "should_pass", "divergence_point")["value"].get<double>() == 0.6,
             boost::test_tools::tolerance(1e-9));
  validation::write_gates(good_run(), gates);
  const json written = json::parse(read_text_file(good_run() / "gates" / "gates.json"));
  BOOST_TEST(written["verdict"] == "GO");
}

BOOST_AUTO_TEST_CASE(missing_store_fails_gate1_naming_the_cell) {
  const fs::path dir = testing::copy_run(good_run(), testing::fresh_dir("validation_missing_store"));
  fs::remove(dir / "activations" / "beta_layer3_activations.safetensors");
  const json gates = validation::evaluate_gates(dir);
  BOOST_TEST(gates["verdict"] == "NO-GO");
  const json& gate1 = find_check(gates, "must_pass", "gate1_stores");
  BOOST_TEST(gate1["status"] == "FAIL");
  BOOST_TEST(any_reason_contains(gate1, "beta_layer3"), gate1.dump());
  fs::remove(dir / "activations" / "beta_layer3_activations.meta.json");
  const json again = validation::evaluate_gates(dir);
  BOOST_TEST(any_reason_contains(find_check(again, "must_pass", "gate1_stores"), "beta_layer3: missing"));
}

BOOST_AUTO_TEST_CASE(nonfinite_values_fail_gate1_by_streaming) {
  const fs::path dir = testing::copy_run(good_run(), testing::fresh_dir("validation_nan"));
  // Rewrite one shard with a NaN while meta.json still claims nonfinite_count 0: only the streamed check sees it.
  const fs::path shard = dir / "activations" / "gamma_layer2_activations.safetensors";
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, std::string> metadata;
  {
    io::SafetensorsFile file(shard);
    for (const auto& name : file.names()) tensors[name] = file.load(name);
    metadata = file.metadata();
  }
  tensors["activations"][3][1] = std::numeric_limits<float>::quiet_NaN();
  io::save_safetensors(shard, tensors, metadata);
  const json gates = validation::evaluate_gates(dir);
  const json& gate1 = find_check(gates, "must_pass", "gate1_stores");
  BOOST_TEST(gate1["status"] == "FAIL");
  BOOST_TEST(any_reason_contains(gate1, "gamma_layer2: shard 1 holds 1 NaN/Inf"), gate1.dump());
}

// A store written with NaN/Inf rows records their true count, and Gate 1 fails on that record alone (no
// shard is re-read with the deep check off), naming the file.
BOOST_AUTO_TEST_CASE(recorded_nonfinite_count_fails_gate1_naming_the_file) {
  const fs::path dir = testing::copy_run(good_run(), testing::fresh_dir("validation_nan_recorded"));
  const std::string base = io::store_base_name("gamma", 2);
  const fs::path meta_file = dir / "activations" / (base + ".meta.json");
  torch::Tensor rows;
  io::RowIndex index;
  json meta;
  {
    const io::ActivationStore store = io::ActivationStore::open(meta_file);
    rows = store.read_rows(0, store.rows());
    index = {store.index_column("doc_id"), store.index_column("seq_id"), store.index_column("token_index"),
             store.index_column("byte_begin"), store.index_column("byte_end")};
    meta = store.meta();
  }
  const int64_t dim = rows.size(1);
  rows[3][1] = std::numeric_limits<float>::quiet_NaN();
  rows[5].fill_(std::numeric_limits<float>::infinity());
  io::ActivationStoreWriter writer(dir / "activations", base, dim, torch::kFloat32, 1 << 20);
  BOOST_TEST(writer.append(rows, index) == 1 + dim);
  writer.finish(meta);
  const json written = json::parse(read_text_file(meta_file));
  BOOST_TEST(written["nonfinite_count"] == 1 + dim);
  BOOST_TEST(written["nonfinite_rows"] == 2);

  validation::GateThresholds shallow;
  shallow.stream_store_check = false;
  const json gate1 = validation::gate1_stores(dir, validation::expected_cells(dir), shallow);
  BOOST_TEST(gate1["status"] == "FAIL");
  BOOST_TEST(any_reason_contains(gate1, fmt::format("gamma_layer2: activations/{}.meta.json records nonfinite_count = {} (2 rows",
                                                    base, 1 + dim)),
             gate1.dump());
  BOOST_TEST(gate1["reasons"].size() == 1u, gate1.dump());
}

BOOST_AUTO_TEST_CASE(inconsistent_token_counts_and_dims_fail_gate1) {
  const fs::path dir = testing::copy_run(good_run(), testing::fresh_dir("validation_counts"));
  testing::FixtureOptions other;
  other.rows = 40;
  io::ActivationStoreWriter writer(dir / "activations", io::store_base_name("alpha", 4), other.dim, torch::kFloat32, 1 << 20);
  io::RowIndex index;
  auto ids = torch::arange(other.rows, torch::kInt64);
  index.doc_id = index.seq_id = ids;
  index.token_index = index.byte_begin = ids;
  index.byte_end = ids + 1;
  writer.append(torch::randn({other.rows, other.dim}), index);
  writer.finish({{"model", "alpha"}, {"layer", 4}, {"hidden_size", other.dim + 1}});
  const json gate1 = find_check(validation::evaluate_gates(dir), "must_pass", "gate1_stores");
  BOOST_TEST(any_reason_contains(gate1, "alpha: token counts differ across layers"), gate1.dump());
  BOOST_TEST(any_reason_contains(gate1, "alpha_layer4: stored dim 8 != model hidden_size 9"), gate1.dump());
}

BOOST_AUTO_TEST_CASE(fvu_above_threshold_fails_gate2) {
  const fs::path dir = testing::copy_run(good_run(), testing::fresh_dir("validation_fvu"));
  const fs::path cfg_file = dir / "saes" / "delta_layer5" / "cfg.json";
  json cfg = json::parse(read_text_file(cfg_file));
  cfg["metrics"]["fvu"] = 0.7;
  atomic_write_text(cfg_file, cfg.dump());
  const json gates = validation::evaluate_gates(dir);
  BOOST_TEST(gates["verdict"] == "NO-GO");
  const json& gate2 = find_check(gates, "must_pass", "gate2_saes");
  BOOST_TEST(any_reason_contains(gate2, "delta_layer5: FVU 0.7000 >= 0.5"), gate2.dump());
  // The other gates are unaffected.
  BOOST_TEST(find_check(gates, "must_pass", "gate1_stores")["status"] == "PASS");
  BOOST_TEST(find_check(gates, "must_pass", "gate3_pairs")["status"] == "PASS");
}

BOOST_AUTO_TEST_CASE(diverged_unconverged_or_missing_sae_fails_gate2) {
  const fs::path dir = testing::copy_run(good_run(), testing::fresh_dir("validation_sae_flags"));
  const fs::path cfg_file = dir / "saes" / "alpha_layer1" / "cfg.json";
  json cfg = json::parse(read_text_file(cfg_file));
  cfg["metrics"]["diverged"] = true;
  cfg["metrics"]["converged"] = false;
  atomic_write_text(cfg_file, cfg.dump());
  fs::remove_all(dir / "saes" / "beta_layer2");
  const json gate2 = find_check(validation::evaluate_gates(dir), "must_pass", "gate2_saes");
  BOOST_TEST(any_reason_contains(gate2, "alpha_layer1: training diverged"));
  BOOST_TEST(any_reason_contains(gate2, "alpha_layer1: not converged"));
  BOOST_TEST(any_reason_contains(gate2, "beta_layer2: not trained"));
}

BOOST_AUTO_TEST_CASE(pairs_399_fail_gate3) {
  const fs::path dir = testing::copy_run(good_run(), testing::fresh_dir("validation_pairs"));
  const fs::path file = dir / "transfer" / "transfer_matrix.json";
  json doc = json::parse(read_text_file(file));
  doc["transfer_matrix"].erase("gamma_layer4__to__alpha_layer2");
  BOOST_REQUIRE_EQUAL(doc["transfer_matrix"].size(), 399u);
  atomic_write_text(file, doc.dump());
  const json gates = validation::evaluate_gates(dir);
  BOOST_TEST(gates["verdict"] == "NO-GO");
  const json& gate3 = find_check(gates, "must_pass", "gate3_pairs");
  BOOST_TEST(gate3["status"] == "FAIL");
  BOOST_TEST(any_reason_contains(gate3, "399 pairs, expected 20 x 20 = 400"), gate3.dump());
  BOOST_TEST(any_reason_contains(gate3, "gamma_layer4__to__alpha_layer2"), gate3.dump());
}

BOOST_AUTO_TEST_CASE(nonfinite_metric_or_diagonal_q_fails_gate3) {
  const fs::path dir = testing::copy_run(good_run(), testing::fresh_dir("validation_pairs_values"));
  const fs::path file = dir / "transfer" / "transfer_matrix.json";
  json doc = json::parse(read_text_file(file));
  doc["transfer_matrix"]["alpha_layer2__to__beta_layer2"]["cka"] = nullptr;  // NaN is written as null
  doc["transfer_matrix"]["delta_layer3__to__delta_layer3"]["q"] = 0.999;
  atomic_write_text(file, doc.dump());
  const json gate3 = find_check(validation::evaluate_gates(dir), "must_pass", "gate3_pairs");
  BOOST_TEST(any_reason_contains(gate3, "alpha_layer2__to__beta_layer2.cka"), gate3.dump());
  BOOST_TEST(any_reason_contains(gate3, "delta_layer3__to__delta_layer3"), gate3.dump());
}

BOOST_AUTO_TEST_CASE(wrong_pixel_size_or_missing_figures_fail_gate4) {
  const fs::path dir = testing::copy_run(good_run(), testing::fresh_dir("validation_figures"));
  const fs::path index_file = dir / "figures" / "figures.json";
  json index = json::parse(read_text_file(index_file));
  index["figures"][0]["width_in"] = index["figures"][0]["width_in"].get<double>() + 0.5;  // stated size no longer matches
  atomic_write_text(index_file, index.dump());
  fs::remove(dir / "figures" / "layer_universality_curve.pdf");
  const json gates = validation::evaluate_gates(dir);
  const json& gate4 = find_check(gates, "must_pass", "gate4_figures");
  BOOST_TEST(gate4["status"] == "FAIL");
  BOOST_TEST(any_reason_contains(gate4, index["figures"][0]["name"].get<std::string>() + ": PNG is"), gate4.dump());
  BOOST_TEST(any_reason_contains(gate4, "layer_universality_curve.pdf missing"), gate4.dump());
  fs::remove_all(dir / "figures");
  const json none = find_check(validation::evaluate_gates(dir), "must_pass", "gate4_figures");
  BOOST_TEST(any_reason_contains(none, "figures.json is missing"), none.dump());
}

BOOST_AUTO_TEST_CASE(should_pass_failures_do_not_block) {
  const fs::path dir = testing::copy_run(good_run(), testing::fresh_dir("validation_should"));
  const fs::path file = dir / "transfer" / "transfer_matrix.json";
  json doc = json::parse(read_text_file(file));
  // Flatten the universality curve at 0.7 and widen one depth's spread: no decline, no divergence.
  for (auto& score : doc["layer_universality_scores"])
    score["mean_cross_model_q_excess"] = score["model"] == "alpha" && score["layer"] == 2 ? 0.95 : 0.7;
  atomic_write_text(file, doc.dump());
  const json gates = validation::evaluate_gates(dir);
  BOOST_TEST(gates["verdict"] == "GO");
  BOOST_TEST(find_check(gates, "should_pass", "early_layer_transfer")["status"] == "FAIL");
  BOOST_TEST(find_check(gates, "should_pass", "monotonic_decline")["status"] == "FAIL");
  BOOST_TEST(find_check(gates, "should_pass", "cross_model_spread")["status"] == "FAIL");
  BOOST_TEST(find_check(gates, "should_pass", "divergence_point")["status"] == "FAIL");
  BOOST_TEST(any_reason_contains(find_check(gates, "should_pass", "cross_model_spread"), "depth 0.40: spread 0.250"));
}

BOOST_AUTO_TEST_CASE(expected_cells_can_be_given_explicitly) {
  std::vector<validation::ExpectedCell> cells = {{"alpha", 1, 8}, {"alpha", 2, 8}, {"zeta", 1, std::nullopt}};
  const json gates = validation::evaluate_gates(good_run(), {}, cells);
  BOOST_TEST(gates["expected_cells"].size() == 3);
  BOOST_TEST(any_reason_contains(find_check(gates, "must_pass", "gate1_stores"), "zeta_layer1: missing"));
  BOOST_TEST(any_reason_contains(find_check(gates, "must_pass", "gate3_pairs"), "expected 3 x 3 = 9"));
}

BOOST_AUTO_TEST_CASE(thresholds_map_from_the_gates_section) {
  const auto t = validation::GateThresholds::from_json(
      {{"max_fvu", 0.4}, {"early_transfer", 0.75}, {"early_max_depth", 0.3}, {"spread", 0.2},
       {"divergence_threshold", 0.5}, {"trend_alpha", 0.01}, {"min_dpi", 600}});
  BOOST_TEST(t.max_fvu == 0.4);
  BOOST_TEST(t.early_transfer == 0.75);
  BOOST_TEST(t.min_dpi == 600);
  BOOST_TEST(t.trend_alpha == 0.01);
  BOOST_CHECK_THROW(validation::GateThresholds::from_json({{"max_fuv", 0.4}}), strata::Error);
  BOOST_CHECK_THROW(validation::GateThresholds::from_json({{"max_fvu", "high"}}), strata::Error);
  // The stricter FVU threshold from the run's config is applied.
  const fs::path dir = testing::copy_run(good_run(), testing::fresh_dir("validation_thresholds"));
  json resolved = json::parse(read_text_file(dir / "config.resolved.json"));
  resolved["gates"]["max_fvu"] = 0.1;
  atomic_write_text(dir / "config.resolved.json", resolved.dump());
  const auto run_thresholds = validation::thresholds_for_run(dir);
  BOOST_TEST(run_thresholds.max_fvu == 0.1);
  const json gate2 = find_check(validation::evaluate_gates(dir, run_thresholds), "must_pass", "gate2_saes");
  BOOST_TEST(gate2["status"] == "FAIL");
}
