#define BOOST_TEST_MODULE models
#include <boost/test/unit_test.hpp>

#include "core/error.hpp"
#include "io/safetensors.hpp"
#include "models/transformer.hpp"
#include "test_helpers.hpp"

using namespace strata;
namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kFixtures{"gpt2-tiny",   "gpt2-tiny-prefixed", "gpt-neox-tiny", "gpt-neox-tiny-fp16",
                                         "phi-tiny",    "phi-tiny-sharded",   "gemma-tiny",    "gemma-tiny-bf16"};

fs::path fixture(const std::string& name) { return testing::data_dir() / "models" / name; }

models::ForwardRequest everything(const models::ModelSpec& spec) {
  models::ForwardRequest request;
  for (int i = 0; i < spec.n_layers; ++i) request.blocks.push_back(i);
  request.embed = request.final_norm = request.logits = true;
  return request;
}

// Largest |got - ref| / (5e-5 + 1e-5 |ref|) over the positions selected by `rows` ([B, T] bool);
// <= 1 means within the tolerance everywhere.
double tolerance_ratio(const torch::Tensor& got, const torch::Tensor& ref, const torch::Tensor& rows) {
  BOOST_REQUIRE(got.defined());
  BOOST_REQUIRE(got.sizes() == ref.sizes());
  torch::Tensor ratio = (got.to(torch::kFloat64) - ref.to(torch::kFloat64)).abs() /
                        (5e-5 + 1e-5 * ref.to(torch::kFloat64).abs());
  return ratio.index({rows}).max().item<double>();
}

}  // namespace

BOOST_AUTO_TEST_CASE(every_fixture_matches_hf_reference_at_every_position) {
  for (const auto& name : kFixtures) {
    BOOST_TEST_CONTEXT("fixture " << name) {
      auto model = models::Transformer::load(fixture(name));
      io::SafetensorsFile reference(fixture(name) / "reference.safetensors");
      torch::Tensor ids = reference.load("input_ids"), mask = reference.load("attention_mask");
      torch::NoGradGuard no_grad;
      auto out = model.forward(ids, mask, everything(model.spec()));
      // The model masks padded keys exactly like HF, so padded positions are compared too.
      torch::Tensor all = torch::ones(ids.sizes(), torch::kBool);
      double worst = tolerance_ratio(out.embed, reference.load("embed"), all);
      for (int i = 0; i < model.spec().n_layers; ++i)
        worst = std::max(worst, tolerance_ratio(out.resid_post.at(i), reference.load(fmt::format("resid_post.{}", i)), all));
      worst = std::max(worst, tolerance_ratio(out.final_norm, reference.load("final_norm"), all));
      worst = std::max(worst, tolerance_ratio(out.logits, reference.load("logits"), all));
      BOOST_TEST_MESSAGE(name << ": worst |got-ref| / (5e-5 + 1e-5|ref|) = " << worst);
      BOOST_TEST(worst <= 1.0);
    }
  }
}
