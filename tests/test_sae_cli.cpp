#define BOOST_TEST_MODULE sae_cli
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include "core/fs.hpp"
#include "io/safetensors.hpp"
#include "sae/sae.hpp"
#include "test_helpers.hpp"

using namespace strata;
namespace fs = std::filesystem;

namespace {
// A plain safetensors file with two 2-D tensors, so that --tensor is needed.
fs::path write_plain_file(const fs::path& dir, bool with_nan) {
  auto gen = at::detail::createCPUGenerator(5);
  auto dictionary = torch::randn({12, 8}, gen);
  auto codes = torch::relu(torch::randn({3000, 12}, gen) - 1.0);
  auto acts = codes.mm(dictionary).contiguous();
  if (with_nan) acts[100][2] = std::numeric_limits<float>::infinity();
  fs::path file = dir / "acts.safetensors";
  io::save_safetensors(file, {{"acts", acts}, {"other", torch::zeros({4, 4})}});
  return file;
}
std::string command(const fs::path& file, const fs::path& out, const std::string& extra) {
  return fmt::format("{} --threads 1 train-sae --activations {} {} --arch topk --k 4 --expansion 2 --epochs 2 "
                     "--batch-size 128 --lr 1e-3 --out {}",
                     testing::strata_binary().string(), file.string(), extra, out.string());
}
}  // namespace

BOOST_AUTO_TEST_CASE(train_sae_writes_an_saelens_directory) {
  auto dir = testing::fresh_dir("sae_cli");
  auto file = write_plain_file(dir, false);
  std::string output;
  // Two 2-D tensors: without --tensor the command must say which to pick.
  BOOST_TEST(testing::run_command(command(file, dir / "sae", ""), &output) == 1);
  BOOST_TEST(output.find("--tensor") != std::string::npos, output);
  int status = testing::run_command(command(file, dir / "sae", "--tensor acts"), &output);
  BOOST_TEST_REQUIRE(status == 0, output);
  BOOST_TEST(output.find("epoch 2/2: loss=") != std::string::npos, output);
  auto sae = sae::Sae::load(dir / "sae");
  BOOST_TEST(sae.architecture == "topk");
  BOOST_TEST(sae.k == 4);
  BOOST_TEST(sae.d_in() == 8);
  BOOST_TEST(sae.d_sae() == 16);
  BOOST_TEST(sae.cfg["metrics"]["fvu"].get<double>() < 1.0);
  BOOST_TEST(fs::exists(dir / "sae" / "training_curve.csv"));
}

BOOST_AUTO_TEST_CASE(train_sae_fails_cleanly_on_non_finite_input) {
  auto dir = testing::fresh_dir("sae_cli_nan");
  auto file = write_plain_file(dir, true);
  std::string output;
  BOOST_TEST(testing::run_command(command(file, dir / "sae", "--tensor acts"), &output) == 1);
  BOOST_TEST(output.find("strata: error:") != std::string::npos, output);
  BOOST_TEST(output.find("NaN/Inf") != std::string::npos, output);
}

// Every [sae] option is a flag (from sae::TrainOptions::fields()), held to the same rules as an
// experiment file; before, train-sae had 10 of the 24 options and checked 3 of them.
BOOST_AUTO_TEST_CASE(train_sae_flags_come_from_the_options_table_and_its_rules) {
  auto dir = testing::fresh_dir("sae_cli_rules");
  auto file = write_plain_file(dir, false);
  std::string output;
  BOOST_TEST(testing::run_command(command(file, dir / "bad", "--tensor acts --heldout-fraction 0.9"), &output) == 1);
  BOOST_TEST(output.find("--heldout-fraction must lie in (0, 0.5]") != std::string::npos, output);
  BOOST_TEST(!fs::exists(dir / "bad" / "cfg.json"));
  BOOST_TEST(testing::run_command(command(file, dir / "bad", "--tensor acts --min-epochs 3"), &output) == 1);
  BOOST_TEST(output.find("--min-epochs must lie in [1, epochs]") != std::string::npos, output);
  // A flag that did not exist before reaches the trainer.
  BOOST_TEST_REQUIRE(testing::run_command(command(file, dir / "sae", "--tensor acts --dense-threshold 0.25 --aux-k 3"), &output) == 0, output);
  auto sae = sae::Sae::load(dir / "sae");
  BOOST_TEST(sae.cfg["training"]["dense_threshold"].get<double>() == 0.25);
  BOOST_TEST(sae.cfg["training"]["aux_k"].get<int64_t>() == 3);
}
