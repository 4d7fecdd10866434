#define BOOST_TEST_MODULE transfer
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include "io/activation_store.hpp"
#include "io/safetensors.hpp"
#include "stats/cka.hpp"
#include "stats/correlation.hpp"
#include "test_helpers.hpp"
#include "transfer/planted.hpp"
#include "transfer/transfer.hpp"

using namespace strata;

namespace {

struct PlantedRun {
  transfer::PlantedData data;
  transfer::TransferResult result;
  std::filesystem::path dir;
};

// One run shared by the planted-structure checks (3 models x 3 layers = 81 pairs).
const PlantedRun& planted_run() {
  static PlantedRun run = [] {
    PlantedRun r;
    r.dir = testing::fresh_dir("transfer_planted");
    transfer::PlantedSpec spec;
    spec.drop_fraction = 0.1;  // models 1 and 2 lose 10 % of the tokens: alignment must pair the rest
    r.data = transfer::make_planted(spec, 42, r.dir);
    transfer::TransferOptions options;
    options.top_k = 16;
    options.cka_permutations = 2000;
    options.cka_max_tokens = 512;
    options.bootstrap = 200;
    r.result = transfer::run_transfer(r.data.cells, options, 7, r.dir / "transfer");
    return r;
  }();
  return run;
}

double metric(const nlohmann::json& matrix, const std::string& src, const std::string& tgt, const std::string& name) {
  return matrix["transfer_matrix"][transfer::pair_key(src, tgt)][name].get<double>();
}

}  // namespace

BOOST_AUTO_TEST_CASE(planted_overlap_ranks_pairs) {
  const PlantedRun& run = planted_run();
  const auto& cells = run.data.cells;
  std::vector<double> truth, q_excess, cka, mmac, mmac_random, q_null;
  for (size_t i = 0; i < cells.size(); ++i)
    for (size_t j = 0; j < cells.size(); ++j) {
      if (i == j) continue;
      truth.push_back(run.data.overlap[i][j].item<double>());
      q_excess.push_back(metric(run.result.matrix, cells[i].name, cells[j].name, "q_excess"));
      cka.push_back(metric(run.result.matrix, cells[i].name, cells[j].name, "cka"));
      mmac.push_back(metric(run.result.matrix, cells[i].name, cells[j].name, "mmac"));
      mmac_random.push_back(metric(run.result.matrix, cells[i].name, cells[j].name, "mmac_random"));
      q_null.push_back(metric(run.result.matrix, cells[i].name, cells[j].name, "q_null"));
    }
  double rho_q = stats::spearman(truth, q_excess).r, rho_cka = stats::spearman(truth, cka).r;
  double rho_mmac = stats::spearman(truth, mmac).r;
  BOOST_TEST_MESSAGE("Spearman vs planted overlap: q_excess " << rho_q << ", cka " << rho_cka << ", mmac " << rho_mmac);
  BOOST_CHECK_GE(rho_q, 0.9);
  BOOST_CHECK_GE(rho_cka, 0.9);
  BOOST_CHECK_GE(rho_mmac, 0.9);
  // Fully shared and fully disjoint pairs sit at the two ends of q_excess and MMAC beats its random baseline
  // where features are shared.
  for (size_t k = 0; k < truth.size(); ++k) {
    if (truth[k] == 0) BOOST_CHECK_LT(q_excess[k], 0.25);
    if (truth[k] >= 0.75) {
      BOOST_CHECK_GT(q_excess[k], 0.5);
      BOOST_CHECK_GT(mmac[k], mmac_random[k] + 0.2);
    }
  }
}

BOOST_AUTO_TEST_CASE(planted_pairs_are_complete_and_calibrated) {
  const PlantedRun& run = planted_run();
  const auto& cells = run.data.cells;
  const nlohmann::json& m = run.result.matrix;
  nlohmann::json gate = transfer::check_pair_matrix(m, cells.size(), cells.size());
  BOOST_CHECK_MESSAGE(gate["passed"].get<bool>(), gate.dump());
  for (const auto& cell : cells) {
    BOOST_CHECK_EQUAL(metric(m, cell.name, cell.name, "q"), 1.0);
    BOOST_CHECK_EQUAL(metric(m, cell.name, cell.name, "q_excess"), 1.0);
    BOOST_CHECK_CLOSE(metric(m, cell.name, cell.name, "transfer_recon_ratio"), 1.0, 1e-12);
  }
  // Cross-model pairs keep ~90 % of the target's tokens (10 % dropped in models 1 and 2).
  double retained = metric(m, "planted0_layer1", "planted1_layer1", "retained_fraction");
  BOOST_CHECK_GT(retained, 0.85);
  BOOST_CHECK_LE(retained, 1.0);
  // Strongly shared pairs: CKA is significant; the q_excess interval holds the estimate.
  const auto& entry = m["transfer_matrix"][transfer::pair_key("planted0_layer1", "planted1_layer1")];
  BOOST_CHECK_LT(entry["cka_p"].get<double>(), 0.01);
  BOOST_CHECK_LE(entry["q_excess_ci"][0].get<double>(), entry["q_excess"].get<double>());
  BOOST_CHECK_GE(entry["q_excess_ci"][1].get<double>(), entry["q_excess"].get<double>());
  BOOST_CHECK_LE(entry["cka_ci"][0].get<double>(), entry["cka"].get<double>() + 1e-9);
  BOOST_CHECK_GE(entry["cka_ci"][1].get<double>(), entry["cka"].get<double>() - 1e-9);
  // Disjoint pairs: CKA permutation p is not small.
  const auto& disjoint = m["transfer_matrix"][transfer::pair_key("planted0_layer1", "planted0_layer3")];
  BOOST_TEST_MESSAGE("disjoint pair: cka " << disjoint["cka"] << " p " << disjoint["cka_p"] << " q_excess "
                                           << disjoint["q_excess"] << " q_null " << disjoint["q_null"]);
  // Files and their shapes.
  for (const char* name : {"transfer_matrix.json", "per_model_transfer_analysis.json", "transfer_metrics.csv",
                           "transfer_matrices.safetensors"})
    BOOST_CHECK(std::filesystem::exists(run.dir / "transfer" / name));
  io::SafetensorsFile matrices(run.dir / "transfer" / "transfer_matrices.safetensors");
  torch::Tensor q = matrices.load("q_excess");
  BOOST_CHECK_EQUAL(q.size(0), int64_t(cells.size()));
  BOOST_CHECK_EQUAL(q.scalar_type(), torch::kFloat64);
  BOOST_CHECK_EQUAL(q[2][4].item<double>(), metric(m, cells[2].name, cells[4].name, "q_excess"));
  BOOST_CHECK(m["layer_universality_scores"].size() == cells.size());
  // A broken matrix fails the gate.
  nlohmann::json broken = m;
  broken["transfer_matrix"][transfer::pair_key(cells[0].name, cells[0].name)]["q"] = 0.99;
  broken["transfer_matrix"].erase(transfer::pair_key(cells[0].name, cells[1].name));
  nlohmann::json failed = transfer::check_pair_matrix(broken, cells.size(), cells.size());
  BOOST_CHECK(!failed["passed"].get<bool>());
}

BOOST_AUTO_TEST_CASE(shuffled_rows_give_cka_near_zero) {
  const PlantedRun& run = planted_run();
  auto a = io::ActivationStore::open(run.data.cells[0].store), b = io::ActivationStore::open(run.data.cells[1].store);
  torch::Tensor x = a.read_rows(0, a.rows()), y = b.read_rows(0, b.rows());
  BOOST_CHECK_GT(stats::linear_cka(x, y), 0.3);  // same model, half the features shared
  torch::manual_seed(0);
  torch::Tensor shuffled = y.index_select(0, torch::randperm(y.size(0), torch::kInt64));
  double null_cka = stats::linear_cka(x, shuffled);
  BOOST_TEST_MESSAGE("shuffled CKA " << null_cka);
  BOOST_CHECK_LT(null_cka, 0.02);
}

BOOST_AUTO_TEST_CASE(same_seed_same_matrix) {
  const PlantedRun& run = planted_run();
  transfer::TransferOptions options;
  options.top_k = 16;
  options.cka_permutations = 2000;
  options.cka_max_tokens = 512;
  options.bootstrap = 200;
  std::vector<transfer::Cell> two(run.data.cells.begin(), run.data.cells.begin() + 1);
  two.push_back(run.data.cells[3]);
  auto first = transfer::run_transfer(two, options, 7, testing::fresh_dir("transfer_repeat_a"));
  auto second = transfer::run_transfer(two, options, 7, testing::fresh_dir("transfer_repeat_b"));
  BOOST_CHECK(first.matrix["transfer_matrix"] == second.matrix["transfer_matrix"]);
}
