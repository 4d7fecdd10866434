#define BOOST_TEST_MODULE zoo
#include <boost/test/unit_test.hpp>

#include <cmath>
#include <set>

#include "test_helpers.hpp"
#include "core/fs.hpp"
#include "core/random.hpp"
#include "io/safetensors.hpp"
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
  BOOST_REQUIRE_EQUAL(plans.size(), 5u);  // four families and the positive control
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

// The positive control: zoo-gpt2's config, tokenizer and data, its own init and data order (derived from the
// member's name). Trained briefly here; the shipped pair is checked below.
BOOST_AUTO_TEST_CASE(control_member_shares_config_and_tokenizer_but_not_seeds) {
  const auto plans = zoo::model_plans();
  BOOST_REQUIRE_EQUAL(plans.back().name, "zoo-gpt2-control");
  BOOST_TEST(plans.back().control_of == "zoo-gpt2");
  BOOST_TEST(plans.back().config == plans.front().config);
  BOOST_TEST(plans.back().vocab_size == plans.front().vocab_size);
  for (size_t i = 0; i + 1 < plans.size(); ++i) BOOST_TEST(plans[i].control_of.empty(), plans[i].name);

  zoo::ZooOptions o;
  o.only = {"zoo-gpt2", "zoo-gpt2-control"};
  o.train_problems = 64;
  o.heldout_problems = 8;
  o.answer_problems = 1;
  o.steps = 2;
  o.warmup_steps = 1;
  o.batch_size = 8;
  o.eval_every = 2;
  const fs::path dir = testing::fresh_dir("zoo_control");
  const auto summary = zoo::train_zoo(dir, o);
  BOOST_REQUIRE_EQUAL(summary["models"].size(), 2u);
  const auto& gpt2 = summary["models"][0];
  const auto& control = summary["models"][1];
  BOOST_TEST(control["name"] == "zoo-gpt2-control");
  BOOST_TEST(control["control_of"] == "zoo-gpt2");
  BOOST_TEST(gpt2["control_of"].is_null());
  BOOST_TEST(gpt2["init_seed"].get<uint64_t>() == derive(0, "zoo/init", "zoo-gpt2"));
  BOOST_TEST(control["init_seed"].get<uint64_t>() == derive(0, "zoo/init", "zoo-gpt2-control"));
  BOOST_TEST(control["data_order_seed"].get<uint64_t>() == derive(0, "zoo/data-order", "zoo-gpt2-control"));
  BOOST_TEST(control["tokenizer_sha256"] == gpt2["tokenizer_sha256"]);
  BOOST_TEST(read_text_file(dir / "zoo-gpt2" / "config.json") == read_text_file(dir / "zoo-gpt2-control" / "config.json"));
  BOOST_TEST(control["model_sha256"] != gpt2["model_sha256"]);
}

BOOST_AUTO_TEST_CASE(shipped_control_differs_from_its_original_only_by_seeds) {
  const fs::path a = shipped_zoo() / "zoo-gpt2", b = shipped_zoo() / "zoo-gpt2-control";
  BOOST_REQUIRE(fs::exists(b / "model.safetensors"));
  BOOST_TEST(read_text_file(a / "config.json") == read_text_file(b / "config.json"));
  BOOST_TEST(read_text_file(a / "tokenizer.json") == read_text_file(b / "tokenizer.json"));
  const auto report_a = nlohmann::json::parse(read_text_file(a / "zoo_report.json"));
  const auto report_b = nlohmann::json::parse(read_text_file(b / "zoo_report.json"));
  BOOST_TEST(report_b["control_of"] == "zoo-gpt2");
  BOOST_TEST(report_b["init_seed"] != report_a["init_seed"]);
  BOOST_TEST(report_b["data_order_seed"] != report_a["data_order_seed"]);
  BOOST_TEST(report_b["train_corpus"] == report_a["train_corpus"]);
  // Two independently trained models: different weights, comparable quality.
  const auto ta = io::SafetensorsFile(a / "model.safetensors").load("wte.weight");
  const auto tb = io::SafetensorsFile(b / "model.safetensors").load("wte.weight");
  BOOST_TEST((ta - tb).abs().max().item<double>() > 0.01);
  BOOST_TEST(std::abs(report_b["heldout_loss"].get<double>() - report_a["heldout_loss"].get<double>()) <
             0.25 * report_a["heldout_loss"].get<double>());
}
