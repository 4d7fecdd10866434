#define BOOST_TEST_MODULE zoo
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <set>

#include "test_helpers.hpp"
#include "zoo/zoo.hpp"

namespace fs = std::filesystem;
using namespace strata;

namespace {

fs::path shipped_zoo() { return fs::path(STRATA_SOURCE_DIR) / "zoo"; }

// Mean next-token loss, computed here from the logits (independently of the zoo library).
double model_loss(const models::Transformer& model, const std::vector<std::vector<int32_t>>& docs) {
  torch::NoGradGuard no_grad;
  double nll = 0;
  int64_t n = 0;
  models::ForwardRequest request;
  request.logits = true;
  for (const auto& d : docs) {
    const auto ids = torch::tensor(std::vector<int64_t>(d.begin(), d.end())).unsqueeze(0);
    const auto logp = torch::log_softmax(model.forward(ids, {}, request).logits[0], -1);
    for (size_t t = 1; t < d.size(); ++t) nll -= logp[int64_t(t) - 1][d[t]].item<double>(), ++n;
  }
  return nll / double(n);
}

}  // namespace

BOOST_AUTO_TEST_CASE(shipped_members_have_their_family_wiring_and_beat_the_unigram_baseline) {
  const auto plans = zoo::model_plans();
  BOOST_REQUIRE_EQUAL(plans.size(), 4u);
  std::set<int64_t> hidden_sizes, vocab_sizes;
  // Training documents (the first problems of the training corpus) for the unigram distribution, and
  // problems from a seed no member was trained on for the held-out loss.
  const auto train_problems = text::synthetic_problems(1, 1000);
  const auto fresh_problems = text::synthetic_problems(777, 20);
  for (const auto& plan : plans) {
    BOOST_TEST_CONTEXT(plan.name) {
      const fs::path dir = shipped_zoo() / plan.name;
      const auto model = models::Transformer::load(dir);
      const auto tokenizer = text::Tokenizer::load(dir);
      const auto& s = model.spec();
      BOOST_TEST(s.n_layers == 6);
      BOOST_TEST(s.vocab_size == tokenizer.vocab_size());
      hidden_sizes.insert(s.hidden_size);
      vocab_sizes.insert(s.vocab_size);
      const auto bos = tokenizer.bos_id();
      if (s.model_type == "gpt2") {
        BOOST_TEST((s.positions == models::PositionKind::Learned));
        BOOST_TEST((s.activation == models::Activation::GeluTanh));
        BOOST_TEST((s.residual == models::ResidualKind::Sequential));
        BOOST_TEST((s.norm == models::NormKind::LayerNorm));
        BOOST_TEST(!bos.has_value());
      } else if (s.model_type == "gpt_neox") {
        BOOST_TEST((s.residual == models::ResidualKind::ParallelTwoNorms));
        BOOST_TEST((s.positions == models::PositionKind::Rotary));
        BOOST_TEST(s.rotary_dims == s.head_dim / 4);
        BOOST_TEST(!s.tie_word_embeddings);
      } else if (s.model_type == "phi") {
        BOOST_TEST((s.residual == models::ResidualKind::ParallelSharedNorm));
        BOOST_TEST(s.rotary_dims == int64_t(0.4 * double(s.head_dim)));
        BOOST_TEST(s.rotary_dims < s.head_dim);
        BOOST_TEST(s.lm_head_bias);
      } else if (s.model_type == "gemma") {
        BOOST_TEST((s.norm == models::NormKind::RMSNormOnePlus));
        BOOST_TEST((s.mlp == models::MlpKind::Gated));
        BOOST_TEST((s.activation == models::Activation::GeluTanh));
        BOOST_TEST(s.n_kv_heads == 1);
        BOOST_TEST(s.head_dim == 16);
        BOOST_TEST(s.head_dim * s.n_heads == s.hidden_size);
        BOOST_TEST(s.scale_embedding);
        BOOST_REQUIRE(bos.has_value());
        BOOST_TEST(tokenizer.encode("Question:", true).ids.front() == *bos);
      } else {
        BOOST_FAIL("unexpected model_type " + s.model_type);
      }

      // A forward pass gives finite logits of the right shape.
      const auto ids = tokenizer.encode(text::problem_prompt(fresh_problems[0]), true).ids;
      models::ForwardRequest request;
      request.logits = true;
      const auto logits =
          model.forward(torch::tensor(std::vector<int64_t>(ids.begin(), ids.end())).unsqueeze(0), {}, request).logits;
      BOOST_TEST(logits.size(1) == int64_t(ids.size()));
      BOOST_TEST(logits.size(2) == s.vocab_size);
      BOOST_TEST(torch::isfinite(logits).all().item<bool>());

      // Held-out loss vs the unigram distribution of the training tokens (add-one smoothed).
      std::vector<double> counts(size_t(s.vocab_size), 1.0);
      double total = double(s.vocab_size);
      for (const auto& p : train_problems) {
        const auto d = zoo::encode_document(tokenizer, text::format_problem(p));
        for (size_t t = 1; t < d.size(); ++t) counts[size_t(d[t])] += 1, total += 1;
      }
      std::vector<std::vector<int32_t>> fresh_docs;
      double unigram = 0;
      int64_t n = 0;
      for (const auto& p : fresh_problems) {
        fresh_docs.push_back(zoo::encode_document(tokenizer, text::format_problem(p)));
        for (size_t t = 1; t < fresh_docs.back().size(); ++t) unigram -= std::log(counts[size_t(fresh_docs.back()[t])] / total), ++n;
      }
      unigram /= double(n);
      const double loss = model_loss(model, fresh_docs);
      BOOST_TEST_MESSAGE(plan.name << ": held-out loss " << loss << " nats, unigram baseline " << unigram);
      BOOST_TEST(loss < 0.5 * unigram);
      // The library's evaluation agrees with this one.
      BOOST_TEST(zoo::mean_next_token_loss(model, fresh_docs).first == loss, boost::test_tools::tolerance(1e-4));
    }
  }
  BOOST_TEST(hidden_sizes.size() >= 3u);
  BOOST_TEST(vocab_sizes.size() == 4u);
}

BOOST_AUTO_TEST_CASE(training_is_bit_identical_across_runs) {
  zoo::ZooOptions o;
  o.only = {"zoo-gemma", "zoo-neox"};
  o.train_problems = 64;
  o.heldout_problems = 8;
  o.answer_problems = 2;
  o.steps = 3;
  o.warmup_steps = 1;
  o.batch_size = 8;
  o.eval_every = 2;
  const fs::path a = testing::fresh_dir("zoo_determinism_a"), b = testing::fresh_dir("zoo_determinism_b");
  zoo::train_zoo(a, o);
  zoo::train_zoo(b, o);
  const auto result = zoo::verify_zoo(a, b);
  BOOST_TEST(result["models"].size() == 2u);
  BOOST_TEST(result["bit_identical"].get<bool>());
  BOOST_TEST(result["max_abs_diff"].get<double>() == 0.0);
  // The weights did move away from the init: a different seed gives different weights.
  o.seed = 1;
  const fs::path c = testing::fresh_dir("zoo_determinism_c");
  zoo::train_zoo(c, o);
  BOOST_TEST(zoo::verify_zoo(a, c)["max_abs_diff"].get<double>() > 0.0);
}

// zoo.json records every option, so `strata zoo verify` (and each member process of `zoo train --jobs`)
// trains with exactly the recorded ones.
BOOST_AUTO_TEST_CASE(options_round_trip_through_json) {
  zoo::ZooOptions o;
  o.seed = 9, o.threads = 2, o.steps = 123, o.batch_size = 7, o.learning_rate = 1.25e-3, o.only = {"zoo-phi"};
  o.train_problems = 11, o.heldout_problems = 5, o.answer_problems = 3, o.warmup_steps = 4, o.grad_clip = 0.5;
  const auto back = zoo::options_from_json(zoo::options_to_json(o));
  BOOST_TEST(zoo::options_to_json(back) == zoo::options_to_json(o));
  BOOST_TEST(back.learning_rate == 1.25e-3);
  BOOST_TEST(back.only == std::vector<std::string>{"zoo-phi"});
  auto broken = zoo::options_to_json(o);
  broken.erase("steps");
  testing::expect_error([&] { zoo::options_from_json(broken); }, {"zoo options", "steps"});
  broken = zoo::options_to_json(o);
  broken["steps"] = "many";
  testing::expect_error([&] { zoo::options_from_json(broken); }, {"zoo options", "steps"});
}
