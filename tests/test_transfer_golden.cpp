// Numbers do not move (issue 14 item 7): a small fixed case (two models of different widths with an
// alignment gap, random ReLU, dense and TopK SAEs, seed ceilings) is run through the whole transfer step and
// every number of transfer_matrix.json and per_model_transfer_analysis.json is compared with
// tests/data/transfer_golden.json, written by the implementation before the per-cell / shared-product rewrite
// (tests/transfer_reference.inc: HEAD 1833094 with issue 13 items 1, 3, 9, 12 applied).
//
// Two comparisons: the current implementation against the reference implementation run in the same process
// (this machine's roundings on both sides), and both against the stored file, written on another machine. The
// reference shares the library's SAE, statistics and I/O code with the current implementation; the stored
// file also pins those.
// Tolerances (relative to the golden value, plus a 1e-9 absolute floor for values near 0):
//   - every fp64 quantity (FVU, q, q_null, q_excess and CIs, variance ratio, Spearman, decoder similarity,
//     CKA and CI, map_r2, scales, layer/per-model means):                         1e-6
//   - MMAC family (max of Pearson correlations whose cross moments accumulate in fp32 GEMMs): 1e-5
//   - p-values from counts (cka_p, p_adjusted) and integer counts: exact up to 1e-12.
//   - against the stored file only: q_excess, its CIs and its means (per model, per layer): 1e-3 (tolerance_for).
//   - pairs (and the seed ceiling) whose source is a TopK SAE decoded from its sparse codes (cell 2: k 6 of 128
//     latents, below transfer::kTopkSparseBelow): 1e-5. Its reconstructions are a sum of k decoder rows, not
//     the reference's dense GEMM, so x_hat differs by fp32 rounding; the residual ||x - x_hat||^2 and then
//     q_excess = (q - q_null) / (1 - q_null) amplify it (4e-6 measured on a bootstrap CI endpoint). The pass
//     itself is checked against the dense one in test_transfer_metrics.
// Regenerate (only when a definition changes on purpose, and say so in the commit):
//   STRATA_WRITE_TRANSFER_GOLDEN=1 build/tests/test_transfer_golden   (runs the reference implementation)
#define BOOST_TEST_MODULE transfer_golden
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>

#include "core/fs.hpp"
#include "io/activation_store.hpp"
#include "sae/sae.hpp"
#include "test_helpers.hpp"
#include "transfer/metrics.hpp"
#include "transfer/planted.hpp"
#include "transfer/transfer.hpp"
#include "transfer_reference.inc"  // the implementation before the rewrite: writes the golden file only

using namespace strata;
namespace fs = std::filesystem;

namespace {

fs::path golden_path() { return testing::data_dir() / "transfer_golden.json"; }

sae::Sae random_sae(int64_t d, int64_t d_sae, double bias, int64_t topk, uint64_t seed) {
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  sae::Sae sae;
  torch::Tensor dec = torch::randn({d_sae, d}, generator, torch::kFloat32);
  sae.W_dec = (dec / dec.norm(2, 1, true)).contiguous();
  sae.W_enc = (sae.W_dec.t() + 0.3 * torch::randn({d, d_sae}, generator, torch::kFloat32)).contiguous();
  sae.b_enc = torch::full({d_sae}, float(bias)) + 0.1f * torch::randn({d_sae}, generator, torch::kFloat32);
  sae.b_dec = 0.05f * torch::randn({d}, generator, torch::kFloat32);
  if (topk > 0) {
    sae.architecture = "topk";
    sae.k = topk;
  }
  return sae;
}

constexpr int64_t kWidths[] = {24, 32}, kTopk[] = {0, 0, 6, 20};  // per model; per cell (0 = ReLU)

// Two models (widths 24 and 32) x 2 layers, 20 sequences of 20 tokens, 10 % of model 1's tokens dropped.
// SAEs: 4x expansion; cell 0 sparse ReLU, cell 1 dense ReLU (positive bias: most latents fire), cells 2-3
// TopK (k = 6 and 20); second-seed ceilings on cells 0 and 2.
std::vector<transfer::Cell> golden_cells(const fs::path& dir) {
  transfer::PlantedSpec spec;
  spec.widths = {kWidths[0], kWidths[1]};
  spec.layers = 2;
  spec.shared_dim = 16;
  spec.features_per_cell = 12;
  spec.layer_shift = 4;
  spec.model_shift = 2;
  spec.sequences = 20;
  spec.tokens_per_sequence = 20;
  spec.drop_fraction = 0.1;
  std::vector<transfer::Cell> cells = transfer::make_planted(spec, 1234, dir).cells;
  const double bias[] = {-0.4, 0.6, 0.0, 0.0};
  for (size_t c = 0; c < cells.size(); ++c) {
    const int64_t d = spec.widths[c / 2];
    random_sae(d, 4 * d, bias[c], kTopk[c], 100 + c).save(cells[c].sae_dir);
    if (c % 2 == 0) {
      fs::path ceiling = dir / "saes" / (cells[c].name + "_ceiling");
      random_sae(d, 4 * d, bias[c], kTopk[c], 200 + c).save(ceiling);
      cells[c].ceiling_sae_dir = ceiling;
    }
  }
  return cells;
}

transfer::TransferOptions golden_options() {
  transfer::TransferOptions options;
  options.top_k = 8;
  options.cka_permutations = 300;
  options.cka_max_tokens = 64;
  options.bootstrap = 40;
  options.max_fit_tokens = 200;  // caps bite: whole sequences in seeded order
  options.max_eval_tokens = 90;
  options.mmac_min_firings = 3;
  options.batch_size = 37;  // several batches, the last one partial
  return options;
}

template <class Run>
nlohmann::json run_golden_case(const std::string& name, Run&& run) {
  fs::path dir = testing::fresh_dir(name);
  auto result = run(golden_cells(dir), golden_options(), 99, dir / "transfer");
  nlohmann::json per_model = nlohmann::json::parse(std::ifstream(dir / "transfer" / "per_model_transfer_analysis.json"));
  return {{"transfer_matrix", result.matrix}, {"per_model", per_model}};
}

// The golden case's cells whose TopK codes take the sparse form (see the tolerances above).
const std::vector<std::string>& sparse_decoded_cells() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (int c = 0; c < 4; ++c)
      if (kTopk[c] > 0 && double(kTopk[c]) < transfer::kTopkSparseBelow * double(4 * kWidths[c / 2]))
        out.push_back(fmt::format("planted{}_layer{}", c / 2, c % 2 + 1));
    return out;
  }();
  return names;
}

// Where the golden values come from: the reference implementation run on this machine, or the stored file
// (written on another machine, whose CPU rounds the fp32 GEMMs of the SAE passes and maps differently).
enum class Source { this_machine, stored_file };

double tolerance_for(const std::string& path, Source source = Source::this_machine) {
  if (path.find("cka_p") != std::string::npos || path.find("p_adjusted") != std::string::npos) return 1e-12;
  // q_excess = (q - q_null) / (1 - q_null) amplifies fp32 rounding by 1 / (1 - q_null), and its bootstrap CI
  // endpoints and layer means take the replicates where q_null is nearest 1: the reference implementation
  // run on an AMD EPYC differed from the file by up to 1.5e-4 relative there (q and q_null within 1e-6).
  if (source == Source::stored_file &&
      (path.find("q_excess") != std::string::npos || path.find("layer_universality_scores") != std::string::npos))
    return 1e-3;
  if (path.find("mmac") != std::string::npos) return 1e-5;
  for (const std::string& cell : sparse_decoded_cells())
    if (path.find("." + cell + "__to__") != std::string::npos || path.find("seed_ceilings." + cell + ".") != std::string::npos)
      return 1e-5;
  return 1e-6;
}

// Walks the golden value; every number, string, bool and null in it must be in `actual` (extra keys allowed).
void compare(const nlohmann::json& golden, const nlohmann::json& actual, const std::string& path,
             std::vector<std::string>& differences, Source source = Source::this_machine) {
  if (golden.is_object()) {
    if (!actual.is_object()) return differences.push_back(path + ": not an object");
    for (auto& [key, value] : golden.items()) {
      if (!actual.contains(key)) {
        differences.push_back(path + "." + key + ": missing");
        continue;
      }
      compare(value, actual[key], path + "." + key, differences, source);
    }
  } else if (golden.is_array()) {
    if (!actual.is_array() || actual.size() != golden.size()) return differences.push_back(path + ": array size");
    for (size_t i = 0; i < golden.size(); ++i) compare(golden[i], actual[i], path + "[" + std::to_string(i) + "]", differences, source);
  } else if (golden.is_number()) {
    if (!actual.is_number()) return differences.push_back(path + ": " + golden.dump() + " vs " + actual.dump());
    const double g = golden.get<double>(), a = actual.get<double>();
    const double allowed = tolerance_for(path, source) * std::abs(g) + 1e-9;
    if (!(std::abs(a - g) <= allowed))
      differences.push_back(fmt::format("{}: {:.17g} vs golden {:.17g} (|diff| {:.3g} > {:.3g})", path, a, g,
                                        std::abs(a - g), allowed));
  } else if (golden != actual) {
    differences.push_back(path + ": " + actual.dump() + " vs golden " + golden.dump());
  }
}

}  // namespace

// The current implementation against the reference implementation run here (the tolerances above), and both
// against the stored file (the same tolerances but for q_excess and its means and CIs: see tolerance_for).
BOOST_AUTO_TEST_CASE(every_metric_matches_the_golden_file) {
  nlohmann::json reference = run_golden_case("transfer_golden_reference", transfer::reference::run_transfer);
  if (std::getenv("STRATA_WRITE_TRANSFER_GOLDEN")) {
    atomic_write_text(golden_path(), reference.dump(1) + "\n");
    BOOST_TEST_MESSAGE("wrote " << golden_path());
  }
  nlohmann::json actual = run_golden_case("transfer_golden", transfer::run_transfer);
  nlohmann::json golden = nlohmann::json::parse(std::ifstream(golden_path()));
  std::vector<std::string> from_file;
  compare(golden, reference, "", from_file, Source::stored_file);
  compare(golden, actual, "", from_file, Source::stored_file);
  for (size_t i = 0; i < from_file.size() && i < 40; ++i) BOOST_ERROR("against the stored file: " << from_file[i]);
  BOOST_CHECK_EQUAL(from_file.size(), 0u);
  // The case is not trivial: 16 pairs, cross-model pairs, ceilings, computed permutation p-values.
  BOOST_REQUIRE_EQUAL(golden["transfer_matrix"]["transfer_matrix"].size(), 16u);
  BOOST_REQUIRE_EQUAL(golden["transfer_matrix"]["seed_ceilings"].size(), 2u);
  // Both forms of TopK codes are in the case: k 6 sparse, k 20 dense.
  BOOST_REQUIRE_EQUAL(sparse_decoded_cells().size(), 1u);
  BOOST_REQUIRE(golden["transfer_matrix"]["transfer_matrix"].contains(sparse_decoded_cells()[0] + "__to__planted0_layer1"));
  std::vector<std::string> differences;
  compare(reference, actual, "", differences);
  for (size_t i = 0; i < differences.size() && i < 40; ++i) BOOST_ERROR(differences[i]);
  BOOST_CHECK_EQUAL(differences.size(), 0u);
}

// The comparison itself can fail: a perturbed metric beyond its tolerance is reported.
BOOST_AUTO_TEST_CASE(golden_comparison_detects_a_moved_number) {
  nlohmann::json golden = nlohmann::json::parse(std::ifstream(golden_path()));
  nlohmann::json moved = golden;
  auto& pairs = moved["transfer_matrix"]["transfer_matrix"];
  std::string key = pairs.begin().key();
  pairs[key]["q_excess"] = pairs[key]["q_excess"].get<double>() * (1 + 1e-5) + 1e-8;
  std::vector<std::string> differences;
  compare(golden, moved, "", differences);
  BOOST_REQUIRE_EQUAL(differences.size(), 1u);
  BOOST_CHECK(differences[0].find("q_excess") != std::string::npos);
}

// Before/after on a real run (not part of ctest's default work): STRATA_TRANSFER_COMPARE_RUN=<run dir> reruns
// that run's transfer step (its cells, options and seed from transfer_matrix.json) with the reference
// implementation and with the current one, prints both wall times, and compares every number with the
// golden tolerances above. Disabled in ctest (it needs a run); run it with
//   STRATA_TRANSFER_COMPARE_RUN=RUN build/tests/test_transfer_golden --run_test=reference_and_current_agree_on_a_recorded_run
BOOST_AUTO_TEST_CASE(reference_and_current_agree_on_a_recorded_run, *boost::unit_test::disabled()) {
  const char* run_env = std::getenv("STRATA_TRANSFER_COMPARE_RUN");
  BOOST_TEST_REQUIRE(run_env != nullptr, "set STRATA_TRANSFER_COMPARE_RUN to a run directory");
  const fs::path run_dir = run_env;
  const nlohmann::json recorded = nlohmann::json::parse(std::ifstream(run_dir / "transfer" / "transfer_matrix.json"));
  const nlohmann::json& config = recorded.at("config");
  std::vector<transfer::Cell> cells;
  for (const auto& c : config.at("cells")) {
    transfer::Cell cell;
    cell.name = c.at("name").get<std::string>();
    cell.model = c.at("model").get<std::string>();
    cell.layer = c.at("layer").get<int>();
    cell.n_layers = c.at("n_layers").get<int>();
    cell.store = run_dir / "activations" / (io::store_base_name(cell.model, cell.layer) + ".meta.json");
    cell.sae_dir = run_dir / "saes" / cell.name;
    if (fs::exists(run_dir / "saes_ceiling" / cell.name / "sae_weights.safetensors"))
      cell.ceiling_sae_dir = run_dir / "saes_ceiling" / cell.name;
    cells.push_back(cell);
  }
  transfer::TransferOptions o;
  o.fit_fraction = config.at("fit_fraction").get<double>();
  o.top_k = config.at("top_k").get<int64_t>();
  o.cka_permutations = config.at("cka_permutations").get<int64_t>();
  o.cka_max_tokens = config.at("cka_max_tokens").get<int64_t>();
  o.bootstrap = config.at("bootstrap").get<int64_t>();
  o.ci_level = config.at("ci_level").get<double>();
  o.max_fit_tokens = config.at("max_fit_tokens").get<int64_t>();
  o.max_eval_tokens = config.at("max_eval_tokens").get<int64_t>();
  o.mmac_min_firings = config.at("mmac_min_firings").get<int64_t>();
  o.ridge_lambda = config.at("ridge_lambda").get<double>();
  o.high_threshold = config.at("thresholds").at("HIGH_UNIVERSALITY").get<double>();
  o.moderate_threshold = config.at("thresholds").at("MODERATE_UNIVERSALITY").get<double>();
  const uint64_t seed = config.at("seed").get<uint64_t>();
  auto timed_run = [&](auto&& run, const std::string& name, double& seconds) {
    const fs::path dir = testing::fresh_dir(name);
    auto start = std::chrono::steady_clock::now();
    auto result = run(cells, o, seed, dir / "transfer");
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    nlohmann::json per_model = nlohmann::json::parse(std::ifstream(dir / "transfer" / "per_model_transfer_analysis.json"));
    nlohmann::json out = {{"transfer_matrix", result.matrix}, {"per_model", per_model}};
    out["transfer_matrix"]["config"].erase("cells");  // paths differ between the two directories
    return out;
  };
  double before = 0, after = 0;
  nlohmann::json reference = timed_run(transfer::reference::run_transfer, "transfer_compare_reference", before);
  nlohmann::json current = timed_run(transfer::run_transfer, "transfer_compare_current", after);
  BOOST_TEST_MESSAGE("transfer step on " << run_dir << " (" << cells.size() << " cells): reference " << before
                                         << " s, current " << after << " s, speed-up " << before / after);
  std::vector<std::string> differences;
  compare(reference, current, "", differences);
  for (size_t i = 0; i < differences.size() && i < 40; ++i) BOOST_ERROR(differences[i]);
  BOOST_CHECK_EQUAL(differences.size(), 0u);
}
