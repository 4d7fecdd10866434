// `strata zoo train` regenerates the embedded model zoo; `strata zoo verify` retrains it (or takes a
// regenerated copy) and reports how closely the weights match the shipped ones.
#include <filesystem>

#include "command.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "zoo/zoo.hpp"

namespace {

namespace fs = std::filesystem;

struct TrainArgs {
  std::string out = "zoo";
  strata::zoo::ZooOptions options;
};

struct VerifyArgs {
  std::string zoo, regenerated;
  double tolerance = 0;
};

void print_summary(const nlohmann::json& summary) {
  fmt::print("{:<10} {:>9} {:>8} {:>10} {:>9} {:>8} {:>9}\n", "model", "params", "vocab", "held-out", "unigram",
             "answers", "seconds");
  for (const auto& m : summary["models"])
    fmt::print("{:<10} {:>9} {:>8} {:>10.4f} {:>9.4f} {:>4}/{:<3} {:>9.1f}\n", m["name"].get<std::string>(),
               m["parameters"].get<int64_t>(), m["vocab_size"].get<int64_t>(), m["heldout_loss"].get<double>(),
               m["unigram_baseline_loss"].get<double>(), m["greedy_answers_correct"].get<int64_t>(),
               m["greedy_answers_total"].get<int64_t>(), m["wall_seconds"].get<double>());
  fmt::print("total wall time {:.1f} s with {} threads\n", summary["wall_seconds"].get<double>(),
             summary["threads"].get<int>());
}

// The options the shipped zoo was trained with (seed, threads), so that a retrain can reproduce it.
strata::zoo::ZooOptions shipped_options(const fs::path& zoo_dir) {
  strata::zoo::ZooOptions options;
  const fs::path summary_file = zoo_dir / "zoo.json";
  if (!fs::exists(summary_file)) strata::fail("{}: not found; is {} a zoo directory?", summary_file.string(), zoo_dir.string());
  const auto summary = nlohmann::json::parse(strata::read_text_file(summary_file));
  options.seed = summary.at("seed").get<uint64_t>();
  options.threads = summary.at("threads").get<int>();
  if (!summary.at("models").empty()) {
    const auto& first = summary["models"][0];
    options.steps = first.at("steps").get<int64_t>();
    options.batch_size = first.at("batch_size").get<int64_t>();
    options.learning_rate = first.at("learning_rate").get<double>();
    options.warmup_steps = first.at("warmup_steps").get<int64_t>();
    options.min_lr_ratio = first.at("min_lr_ratio").get<double>();
    options.weight_decay = first.at("weight_decay").get<double>();
    options.grad_clip = first.at("grad_clip").get<double>();
    options.train_problems = first.at("train_corpus").at("problems").get<int64_t>();
    options.heldout_problems = first.at("heldout_corpus").at("problems").get<int64_t>();
  }
  return options;
}

void setup(strata::cli::Commands& commands) {
  auto* zoo = commands.group("zoo", "The embedded model zoo: four tiny LMs trained by strata");

  auto train_args = std::make_shared<TrainArgs>();
  auto* train = zoo->add_subcommand("train", "Train the four zoo models (gpt2, gpt_neox, phi, gemma wiring)");
  train->add_option("--out", train_args->out, "Output directory (one sub-directory per model)")->capture_default_str();
  train->add_option("--seed", train_args->options.seed, "Seed of model init and data order")->capture_default_str();
  train->add_option("--train-threads", train_args->options.threads,
                    "Compute threads (bit-identical results need the same count)")
      ->capture_default_str();
  train->add_option("--steps", train_args->options.steps, "Optimizer steps per model")->capture_default_str();
  train->add_option("--only", train_args->options.only, "Train only these members (e.g. zoo-gpt2)");
  commands.bind(train, [train_args]() {
    print_summary(strata::zoo::train_zoo(train_args->out, train_args->options));
    return 0;
  });

  auto verify_args = std::make_shared<VerifyArgs>();
  auto* verify = zoo->add_subcommand(
      "verify", "Retrain the zoo into a temporary directory (or take --regenerated) and compare with the shipped one");
  verify->add_option("--zoo", verify_args->zoo, "The shipped zoo (default: ./zoo, else the source tree's zoo/)");
  verify->add_option("--regenerated", verify_args->regenerated, "An already regenerated zoo to compare instead");
  verify->add_option("--tolerance", verify_args->tolerance, "Largest accepted per-tensor max |difference|")
      ->capture_default_str();
  commands.bind(verify, [verify_args]() {
    const fs::path shipped = verify_args->zoo.empty() ? strata::zoo::default_zoo_dir() : fs::path(verify_args->zoo);
    fs::path regenerated = verify_args->regenerated;
    std::optional<fs::path> temporary;
    if (regenerated.empty()) {
      temporary = fs::temp_directory_path() / fmt::format("strata-zoo-verify-{}", ::getpid());
      regenerated = *temporary;
      const auto options = shipped_options(shipped);
      fmt::print("retraining the zoo into {} (seed {}, {} threads)\n", regenerated.string(), options.seed,
                 options.threads);
      strata::zoo::train_zoo(regenerated, options);
    }
    const auto result = strata::zoo::verify_zoo(shipped, regenerated);
    if (temporary) fs::remove_all(*temporary);
    for (const auto& m : result["models"])
      fmt::print("{:<10} max |diff| over {} tensors {:.3g}  safetensors {}  config {}  tokenizer {}\n",
                 m["name"].get<std::string>(), m["tensors"].size(), m["max_abs_diff"].get<double>(),
                 m["safetensors_identical"].get<bool>() ? "identical" : "differ",
                 m["config_identical"].get<bool>() ? "identical" : "differ",
                 m["tokenizer_identical"].get<bool>() ? "identical" : "differ");
    const double diff = result["max_abs_diff"].get<double>();
    const bool identical = result["bit_identical"].get<bool>();
    fmt::print("{}: max per-tensor |difference| {:.3g}\n", identical ? "bit-identical" : "NOT bit-identical", diff);
    if (diff > verify_args->tolerance) {
      fmt::print("the difference exceeds the tolerance {:.3g}\n", verify_args->tolerance);
      return 1;
    }
    return 0;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
