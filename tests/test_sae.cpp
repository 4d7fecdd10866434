#define BOOST_TEST_MODULE sae
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include <cmath>
#include <fstream>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "io/activation_store.hpp"
#include "io/safetensors.hpp"
#include "sae/metrics.hpp"
#include "sae/sae.hpp"
#include "sae/train.hpp"
#include "test_helpers.hpp"

using namespace strata;
namespace fs = std::filesystem;

namespace {

// A store of `x` in shards of `shard_rows` rows, through the real writer.
io::ActivationStore write_store(const fs::path& dir, const torch::Tensor& x, int64_t shard_rows) {
  io::ActivationStoreWriter writer(dir, "toy_layer1_activations", x.size(1), torch::kFloat32,
                                   shard_rows * x.size(1) * 4);
  const int64_t n = x.size(0);
  io::RowIndex index;
  auto ids = torch::arange(n, torch::kInt64);
  index.doc_id = ids.div(16, "floor");
  index.seq_id = index.doc_id;
  index.token_index = ids.remainder(16);
  index.byte_begin = ids * 4;
  index.byte_end = ids * 4 + 4;
  writer.append(x, index);
  writer.finish({{"model", "toy"}, {"layer", 1}});
  return io::ActivationStore::open(dir / "toy_layer1_activations.meta.json");
}

struct Planted {
  torch::Tensor dictionary;  // [m, d] unit rows
  torch::Tensor x;           // [n, d]
};

// x = sum of `active` of m known unit directions with coefficients in [1, 2], plus a little noise and an
// offset (so that b_dec has something to learn).
Planted planted_data(int64_t n, int64_t d, int64_t m, int64_t active, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  Planted p;
  p.dictionary = torch::randn({m, d}, gen);
  p.dictionary /= p.dictionary.norm(2, {1}, true);
  auto scores = torch::rand({n, m}, gen);
  auto chosen = std::get<1>(scores.topk(active, 1));
  auto coef = torch::zeros({n, m}).scatter_(1, chosen, torch::rand({n, active}, gen) + 1.0);
  auto offset = torch::randn({d}, gen) * 0.5;
  p.x = (coef.mm(p.dictionary) + offset + 0.01 * torch::randn({n, d}, gen)).contiguous();
  return p;
}

double dictionary_recovery(const torch::Tensor& dictionary, const torch::Tensor& W_dec) {
  auto dec = W_dec / W_dec.norm(2, {1}, true).clamp_min(1e-12);
  auto cos = dictionary.mm(dec.t()).abs();  // [m, d_sae]
  return std::get<0>(cos.max(1)).mean().item<double>();
}

std::string file_bytes(const fs::path& f) { return read_text_file(f); }

}  // namespace

BOOST_AUTO_TEST_CASE(fvu_of_predicting_the_mean_is_one) {
  auto gen = at::detail::createCPUGenerator(1);
  auto x = torch::randn({1000, 8}, gen) * 3 + 100;  // a dominant mean: the shifted sums must still be exact
  auto mean = x.mean(0, true).expand_as(x);
  sae::ReconstructionStats stats;
  for (int64_t b = 0; b < 1000; b += 300) {
    int64_t e = std::min<int64_t>(1000, b + 300);
    stats.add(x.slice(0, b, e), mean.slice(0, b, e));
  }
  BOOST_TEST(stats.tokens() == 1000);
  BOOST_TEST(stats.fvu() == 1.0, boost::test_tools::tolerance(1e-5));
  BOOST_TEST(stats.explained_variance() == 0.0, boost::test_tools::tolerance(1e-5));
}

BOOST_AUTO_TEST_CASE(fvu_of_a_perfect_reconstruction_is_zero) {
  auto gen = at::detail::createCPUGenerator(2);
  auto x = torch::randn({500, 16}, gen);
  sae::ReconstructionStats stats;
  stats.add(x, x.clone());
  BOOST_TEST(stats.fvu() == 0.0);
  BOOST_TEST(stats.mse() == 0.0);
  BOOST_TEST(stats.explained_variance() == 1.0);
}

BOOST_AUTO_TEST_CASE(fvu_of_a_constant_offset_matches_the_formula) {
  auto gen = at::detail::createCPUGenerator(3);
  auto x = torch::randn({800, 4}, gen).to(torch::kFloat64);
  auto c = torch::tensor({0.5, -1.0, 0.25, 2.0}, torch::kFloat64);
  sae::ReconstructionStats stats;
  stats.add(x.slice(0, 0, 400), x.slice(0, 0, 400) + c);
  stats.add(x.slice(0, 400, 800), x.slice(0, 400, 800) + c);
  const double n = 800, c2 = c.square().sum().item<double>();
  const double variance = (x - x.mean(0)).square().sum().item<double>();
  BOOST_TEST(stats.sum_squared_error() == n * c2, boost::test_tools::tolerance(1e-9));
  BOOST_TEST(stats.fvu() == n * c2 / variance, boost::test_tools::tolerance(1e-9));
  BOOST_TEST(stats.mse() == c2 / 4.0, boost::test_tools::tolerance(1e-9));
}

BOOST_AUTO_TEST_CASE(sparsity_stats_count_active_dead_and_dense_latents) {
  // 4 tokens, 5 latents: latent 0 always on (dense), latent 4 never (dead).
  auto f = torch::tensor({{1.f, 0.f, 0.f, 2.f, 0.f},
                          {1.f, 3.f, 0.f, 0.f, 0.f},
                          {1.f, 0.f, 0.f, 0.f, 0.f},
                          {1.f, 0.f, 5.f, 0.f, 0.f}});
  sae::SparsityStats stats(/*dense_threshold=*/0.5);
  stats.add(f);
  BOOST_TEST(stats.l0() == 7.0 / 4.0);
  BOOST_TEST(stats.sparsity() == 7.0 / 20.0);
  BOOST_TEST(stats.dead_fraction() == 1.0 / 5.0);
  BOOST_TEST(stats.dense_fraction() == 1.0 / 5.0);
}

namespace {
sae::TrainOptions planted_options(const std::string& arch) {
  sae::TrainOptions o;
  o.architecture = arch;
  o.k = 3;
  o.expansion = 4;
  o.lr = 3e-3;
  o.l1 = 0.5;
  o.batch_size = 256;
  o.epochs = 12;
  o.min_epochs = 12;
  o.lr_warmup_steps = 50;
  o.l1_warmup_steps = 100;
  o.shuffle_buffer_rows = 2048;
  o.dead_window_tokens = 20000;
  o.resample_interval_steps = 250;
  return o;
}
}  // namespace

BOOST_AUTO_TEST_CASE(both_architectures_recover_a_planted_dictionary) {
  auto data = planted_data(24000, 32, 48, 3, 7);
  auto dir = testing::fresh_dir("sae_planted");
  auto store = write_store(dir / "store", data.x, 5000);
  BOOST_TEST(store.num_shards() > 1);
  for (const std::string arch : {"standard", "topk"}) {
    auto result = sae::train_sae(store, planted_options(arch), 11, dir / arch, {{"model", "toy"}, {"layer", 1}});
    BOOST_TEST_REQUIRE(result.ok, result.error);
    double recovery = dictionary_recovery(data.dictionary, result.sae.W_dec);
    BOOST_TEST_MESSAGE(arch << ": recovery " << recovery << " fvu " << result.metrics["fvu"] << " l0 "
                            << result.metrics["l0"]);
    BOOST_TEST(recovery >= 0.9);
    BOOST_TEST(result.metrics["fvu"].get<double>() < 0.1);
    // The saved SAE acts on raw activations and reloads to the same numbers.
    auto loaded = sae::Sae::load(dir / arch);
    BOOST_TEST(loaded.architecture == arch);
    BOOST_TEST(torch::equal(loaded.W_dec, result.sae.W_dec));
    auto eval = sae::evaluate_sae(loaded, store, sae::heldout_ranges(store, 0.1), /*batch_size=*/256);
    BOOST_TEST(eval.fvu == result.metrics["fvu"].get<double>(), boost::test_tools::tolerance(1e-9));
    auto cfg = nlohmann::json::parse(read_text_file(dir / arch / "cfg.json"));
    for (const char* key : {"mse", "fvu", "explained_variance", "l0", "sparsity", "dead_fraction", "dense_fraction",
                            "converged", "diverged", "epochs_run", "final_train_loss", "heldout_loss", "scaling_factor"})
      BOOST_TEST(cfg["metrics"].contains(key), key);
    BOOST_TEST(cfg["model"] == "toy");
    BOOST_TEST(fs::exists(dir / arch / "training_curve.csv"));
    BOOST_TEST(!fs::exists(dir / arch / "checkpoint.safetensors"));
  }
}

BOOST_AUTO_TEST_CASE(an_interrupted_run_resumes_bit_identically) {
  auto data = planted_data(6000, 16, 24, 2, 5);
  auto dir = testing::fresh_dir("sae_resume");
  auto store = write_store(dir / "store", data.x, 1500);
  for (const std::string arch : {"standard", "topk"}) {
    auto o = planted_options(arch);
    o.epochs = 3;
    o.min_epochs = 3;
    o.batch_size = 128;
    o.shuffle_buffer_rows = 1000;
    o.dead_window_tokens = 2000;  // so that AuxK / resampling run in this short test
    o.resample_interval_steps = 20;
    auto full = sae::train_sae(store, o, 3, dir / (arch + "_full"));
    BOOST_TEST_REQUIRE(full.ok, full.error);
    // Stop mid-epoch (37 is not a multiple of the 42 steps per epoch), then resume.
    auto stopped_options = o;
    stopped_options.stop_after_steps = 37;
    auto stopped = sae::train_sae(store, stopped_options, 3, dir / (arch + "_resumed"));
    BOOST_TEST(!stopped.ok);
    BOOST_TEST(stopped.interrupted);
    BOOST_TEST(fs::exists(dir / (arch + "_resumed") / "checkpoint.safetensors"));
    stopped_options.stop_after_steps = 60;  // a second interruption, in the next epoch
    BOOST_TEST(sae::train_sae(store, stopped_options, 3, dir / (arch + "_resumed")).interrupted);
    auto resumed = sae::train_sae(store, o, 3, dir / (arch + "_resumed"));
    BOOST_TEST_REQUIRE(resumed.ok, resumed.error);
    BOOST_TEST(file_bytes(dir / (arch + "_full") / "sae_weights.safetensors") ==
               file_bytes(dir / (arch + "_resumed") / "sae_weights.safetensors"));
    BOOST_TEST(file_bytes(dir / (arch + "_full") / "training_curve.csv") ==
               file_bytes(dir / (arch + "_resumed") / "training_curve.csv"));
    BOOST_TEST(full.metrics.dump() == resumed.metrics.dump());
  }
}

BOOST_AUTO_TEST_CASE(a_checkpoint_of_another_run_is_refused) {
  auto data = planted_data(2000, 8, 8, 2, 9);
  auto dir = testing::fresh_dir("sae_foreign_checkpoint");
  auto store = write_store(dir / "store", data.x, 2000);
  auto o = planted_options("topk");
  o.epochs = o.min_epochs = 2;
  o.stop_after_steps = 3;
  BOOST_TEST(sae::train_sae(store, o, 1, dir / "out").interrupted);
  o.lr *= 2;
  o.stop_after_steps = 0;
  BOOST_CHECK_THROW(sae::train_sae(store, o, 1, dir / "out"), Error);
}

// train_sae holds its options to the rules of the [sae] table (TrainOptions::fields()), the same an
// experiment file meets; before, it checked 3 of them and trained with min_epochs above epochs.
BOOST_AUTO_TEST_CASE(train_sae_applies_the_rules_of_its_options_table) {
  auto data = planted_data(2000, 8, 8, 2, 9);
  auto dir = testing::fresh_dir("sae_option_rules");
  auto store = write_store(dir / "store", data.x, 2000);
  auto o = planted_options("topk");
  o.epochs = 2;  // min_epochs stays 12
  std::string message;
  try {
    sae::train_sae(store, o, 1, dir / "out");
  } catch (const Error& e) {
    message = e.what();
  }
  BOOST_TEST(message == "sae: 'min_epochs' must lie in [1, epochs]");
  BOOST_TEST(!fs::exists(dir / "out"));
}

BOOST_AUTO_TEST_CASE(nan_input_fails_that_sae_with_a_clear_error) {
  auto data = planted_data(3000, 8, 8, 2, 4);
  data.x[1234][3] = std::numeric_limits<float>::quiet_NaN();
  auto dir = testing::fresh_dir("sae_nan");
  // A plain tensor file: the capture writer itself refuses NaN, but `train-sae` accepts any safetensors.
  io::save_safetensors(dir / "acts.safetensors", {{"acts", data.x}});
  auto store = io::ActivationStore::open(dir / "acts.safetensors");
  for (const std::string arch : {"standard", "topk"}) {
    auto o = planted_options(arch);
    o.epochs = o.min_epochs = 2;
    auto result = sae::train_sae(store, o, 1, dir / arch);
    BOOST_TEST(!result.ok);
    BOOST_TEST(result.diverged);
    BOOST_TEST(result.error.find("NaN") != std::string::npos, result.error);
    BOOST_TEST(result.error.find("input activations") != std::string::npos, result.error);
    auto cfg = nlohmann::json::parse(read_text_file(dir / arch / "cfg.json"));
    BOOST_TEST(cfg["metrics"]["diverged"] == true);
    BOOST_TEST(!fs::exists(dir / arch / "sae_weights.safetensors"));
  }
}
