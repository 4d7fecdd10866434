#define BOOST_TEST_MODULE validation
#include <boost/test/unit_test.hpp>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "io/safetensors.hpp"
#include "harness/config.hpp"
#include "report/figures.hpp"
#include "report/report.hpp"
#include "test_helpers.hpp"
#include "test_report_fixture.hpp"
#include "validation/gates.hpp"

namespace fs = std::filesystem;
using nlohmann::json;
using namespace strata;

namespace {

// A good run (stores, SAEs, 400 pairs, figures, report), built once; each negative test breaks a copy.
const fs::path& good_run() {
  static const fs::path dir = [] {
    auto fx = testing::make_run_fixture(testing::fresh_dir("validation_good"));
    report::render_figures(fx.dir);
    report::write_report(fx.dir);
    return fx.dir;
  }();
  return dir;
}

json read_json_file(const fs::path& file) { return json::parse(read_text_file(file)); }

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
  for (const char* name : {"early_layer_transfer", "monotonic_decline", "cross_model_spread", "divergence_point", "sae_sparsity"})
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
  report::write_report(dir);  // the should-pass checks judge the report's analysis
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

// Issue 13.4 and 13.5: the gates judge the report's analysis, so both quote the same CI for the same
// claim, at the run's bootstrap settings and CI level (here not the defaults).
BOOST_AUTO_TEST_CASE(gates_and_report_quote_the_same_interval) {
  const fs::path dir = testing::copy_run(good_run(), testing::fresh_dir("validation_same_ci"));
  json resolved = read_json_file(dir / "config.resolved.json");
  resolved["experiment"]["seed"] = 7;
  resolved["transfer"] = {{"bootstrap", 300}, {"ci_level", 0.9}};
  atomic_write_text(dir / "config.resolved.json", resolved.dump(2));
  const auto result = report::write_report(dir);
  const json analysis = read_json_file(result.analysis);
  BOOST_TEST(analysis["options"]["bootstrap_resamples"] == 300);
  BOOST_TEST(analysis["options"]["ci_level"].get<double>() == 0.9);
  const json gates = validation::evaluate_gates(dir, validation::thresholds_for_run(dir));
  const json early = find_check(gates, "should_pass", "early_layer_transfer");
  BOOST_TEST(early["ci"] == analysis["early"]["ci"]);
  BOOST_TEST(early["value"] == analysis["early"]["mean_q_excess"]);
  const double lo = analysis["early"]["ci"][0].get<double>(), hi = analysis["early"]["ci"][1].get<double>();
  const std::string interval = fmt::format("90% CI [{:.3f}, {:.3f}]", lo, hi);
  BOOST_TEST(early["summary"].get<std::string>().find(interval) != std::string::npos, early["summary"]);
  BOOST_TEST(read_text_file(result.markdown).find(interval) != std::string::npos, interval);
  // The defaults (2000 resamples, seed 20260218, 95%) give another interval: the settings did matter.
  report::AnalysisOptions defaults;
  const report::Analysis other = report::analyse(report::load_transfer(dir), defaults);
  BOOST_TEST((other.early_ci_lo != lo || other.early_ci_hi != hi));
  const json divergence = find_check(gates, "should_pass", "divergence_point");
  BOOST_TEST(divergence["summary"].get<std::string>().find(
                 fmt::format("90% CI [{:.3f}, {:.3f}]", analysis["groups"][2]["ci"][0].get<double>(),
                             analysis["groups"][2]["ci"][1].get<double>())) != std::string::npos,
             divergence["summary"]);
  // Without the report's analysis the should-pass checks say which step to run.
  fs::remove_all(dir / "report");
  const json none = find_check(validation::evaluate_gates(dir), "should_pass", "early_layer_transfer");
  BOOST_TEST(none["status"] == "FAIL");
  BOOST_TEST(any_reason_contains(none, "analysis.json is missing; it is written by the report step"), none.dump());
}

// Issue 13.10: FVU alone passes a dense code; the sparsity check (L0 / d_in, dead fraction) does not.
BOOST_AUTO_TEST_CASE(dense_sae_fails_the_sparsity_check) {
  const fs::path dir = testing::copy_run(good_run(), testing::fresh_dir("validation_dense"));
  // A dense code: L0 = 9 of d_in = 8 at FVU 0.01 (which Gate 2 accepts), and many dead latents elsewhere.
  const fs::path dense = dir / "saes" / "delta_layer4" / "cfg.json";
  json cfg = read_json_file(dense);
  cfg["metrics"]["l0"] = 9.0;
  cfg["metrics"]["fvu"] = 0.01;
  atomic_write_text(dense, cfg.dump(2));
  const fs::path dead = dir / "saes" / "alpha_layer1" / "cfg.json";
  cfg = read_json_file(dead);
  cfg["metrics"]["dead_fraction"] = 0.35;
  atomic_write_text(dead, cfg.dump(2));
  report::write_report(dir);
  const json gates = validation::evaluate_gates(dir);
  BOOST_TEST(find_check(gates, "must_pass", "gate2_saes")["status"] == "PASS");
  BOOST_TEST(gates["verdict"] == "GO");  // should-pass: reported, not blocking
  const json sparsity = find_check(gates, "should_pass", "sae_sparsity");
  BOOST_TEST(sparsity["status"] == "FAIL");
  BOOST_TEST(sparsity["reasons"].size() == 2u);
  BOOST_TEST(any_reason_contains(sparsity, "delta_layer4: L0 9.0 is 1.12 of d_in 8 (max 0.5)"), sparsity.dump());
  BOOST_TEST(any_reason_contains(sparsity, "alpha_layer1: dead fraction 0.350 (max 0.2)"), sparsity.dump());
  BOOST_TEST(sparsity["value"]["l0_fraction"].get<double>() == 1.125);
  // The thresholds come from [gates]: looser ones pass the same SAEs.
  validation::GateThresholds loose;
  loose.max_l0_fraction = 1.5;
  loose.max_dead_fraction = 0.4;
  BOOST_TEST(find_check(validation::evaluate_gates(dir, loose), "should_pass", "sae_sparsity")["status"] == "PASS");
  const auto mapped = validation::GateThresholds::from_json({{"max_l0_fraction", 0.3}, {"max_dead_fraction", 0.1}});
  BOOST_TEST(mapped.max_l0_fraction == 0.3);
  BOOST_TEST(mapped.max_dead_fraction == 0.1);
}

// Issue 13.3: p-values the transfer step did not compute (null) are missing, not present.
BOOST_AUTO_TEST_CASE(null_p_values_fail_the_publication_check) {
  const fs::path dir = testing::copy_run(good_run(), testing::fresh_dir("validation_no_p"));
  const fs::path file = dir / "transfer" / "transfer_matrix.json";
  json doc = read_json_file(file);
  for (auto& [key, entry] : doc["transfer_matrix"].items()) {
    entry["cka_p"] = nullptr;
    entry["p_adjusted"] = nullptr;
  }
  atomic_write_text(file, doc.dump());
  const json check = find_check(validation::evaluate_gates(dir), "publication_ready", "p_values");
  BOOST_TEST(check["status"] == "FAIL");
  BOOST_TEST(any_reason_contains(check, "p-values missing: no CKA permutation test ran (380 pairs without cka_p / p_adjusted)"),
             check.dump());
  BOOST_TEST(check["summary"] == "0 off-diagonal pairs with BH-adjusted p-values");
}

// A positive control's cells are trained and stored like every other (Gates 1 and 2), but its pairs stay
// out of the main matrix Gate 3 counts (the seed's N x N).
BOOST_AUTO_TEST_CASE(positive_control_stays_out_of_gate3) {
  testing::FixtureOptions options;
  options.control = "alpha-control";
  options.control_of = "alpha";
  const auto fx = testing::make_run_fixture(testing::fresh_dir("validation_control"), options);
  report::render_figures(fx.dir);
  report::write_report(fx.dir);
  const json gates = validation::evaluate_gates(fx.dir);
  BOOST_TEST(gates["verdict"] == "GO", validation::format_gate_table(gates));
  BOOST_TEST(gates["expected_cells"].size() == 25u);
  const json gate3 = find_check(gates, "must_pass", "gate3_pairs");
  BOOST_TEST(gate3["value"] == 400);
  BOOST_TEST(gate3["threshold"] == 400);
  BOOST_TEST(find_check(gates, "must_pass", "gate2_saes")["summary"].get<std::string>().find("25/25 SAEs trained") == 0);
  // A missing control SAE is still a Gate 2 failure.
  fs::remove_all(fx.dir / "saes" / "alpha-control_layer2");
  BOOST_TEST(any_reason_contains(find_check(validation::evaluate_gates(fx.dir), "must_pass", "gate2_saes"),
                                 "alpha-control_layer2: not trained"));
}

// [[models]] control_of names another model of the experiment, which is not itself a control.
BOOST_AUTO_TEST_CASE(control_of_names_another_model_of_the_main_matrix) {
  const std::string base = "[experiment]\nname = \"c\"\nseed = 1\n\n"
                           "[[models]]\nname = \"a\"\ncheckpoint = \"nowhere/a\"\nlayers = [1]\n\n"
                           "[[models]]\nname = \"b\"\ncheckpoint = \"nowhere/b\"\nlayers = [1]\n";
  const auto exp = harness::parse_experiment(base + "\n[[models]]\nname = \"a2\"\ncheckpoint = \"nowhere/a2\"\nlayers = [1]\n"
                                                    "control_of = \"a\"\n",
                                             "good.toml", "/tmp");
  BOOST_TEST(exp.models[2].control_of == "a");
  BOOST_TEST(exp.to_json()["models"][2]["control_of"] == "a");
  BOOST_TEST(!exp.to_json()["models"][0].contains("control_of"));  // unset: configs hash as before
  BOOST_TEST(report::analysis_options(exp.to_json()).controls.at("a2") == "a");
  testing::expect_error(
      [&] {
        harness::parse_experiment(base + "\n[[models]]\nname = \"a2\"\ncheckpoint = \"nowhere/a2\"\nlayers = [1]\n"
                                         "control_of = \"zz\"\n",
                                  "unknown.toml", "/tmp");
      },
      {"unknown.toml:", "models.control_of", "names \"zz\", which is not a [[models]] name"});
  testing::expect_error(
      [&] {
        harness::parse_experiment(base + "\n[[models]]\nname = \"a2\"\ncheckpoint = \"nowhere/a2\"\nlayers = [1]\n"
                                         "control_of = \"a2\"\n",
                                  "self.toml", "/tmp");
      },
      {"self.toml:", "names the model itself"});
  testing::expect_error(
      [&] {
        harness::parse_experiment(base + "\n[[models]]\nname = \"a2\"\ncheckpoint = \"nowhere/a2\"\nlayers = [1]\n"
                                         "control_of = \"a\"\n\n[[models]]\nname = \"a3\"\ncheckpoint = \"nowhere/a3\"\n"
                                         "layers = [1]\ncontrol_of = \"a2\"\n",
                                  "chain.toml", "/tmp");
      },
      {"chain.toml:", "names \"a2\", which is itself a control (of \"a\")"});
}
