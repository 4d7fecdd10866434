// `strata zoo train` regenerates the embedded model zoo; `strata zoo verify` retrains it (or takes a
// regenerated copy) and reports how closely the weights match the shipped ones.
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <thread>

#include "command.hpp"
#include "option_flags.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "zoo/zoo.hpp"

extern char** environ;

namespace {

namespace fs = std::filesystem;

int default_jobs() { return std::max(1, static_cast<int>(std::thread::hardware_concurrency())); }

struct TrainArgs {
  std::string out = "zoo", options_json;
  int jobs = default_jobs();
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
  fmt::print("total wall time {:.1f} s with {} thread(s) per member, {} member(s) at once\n",
             summary["wall_seconds"].get<double>(), summary["threads"].get<int>(), summary.value("jobs", 1));
}

// The options the shipped zoo was trained with, so that a retrain can reproduce it.
strata::zoo::ZooOptions shipped_options(const fs::path& zoo_dir) {
  const fs::path summary_file = zoo_dir / "zoo.json";
  if (!fs::exists(summary_file)) strata::fail("{}: not found; is {} a zoo directory?", summary_file.string(), zoo_dir.string());
  const auto summary = nlohmann::json::parse(strata::read_text_file(summary_file));
  if (!summary.contains("options"))
    strata::fail("{}: no \"options\" record (written by an older strata); retrain with `strata zoo train`",
                 summary_file.string());
  return strata::zoo::options_from_json(summary["options"]);
}

// Trains the members `jobs` at a time, each in its own `strata zoo train --only M --jobs 1` process, then
// moves them into out_dir and writes one zoo.json. Processes rather than threads: each member keeps its
// own single-threaded BLAS/OpenMP state, so its weights are the bytes it gets when trained alone.
nlohmann::json train_in_processes(const fs::path& out_dir, const strata::zoo::ZooOptions& options, int jobs) {
  namespace zoo = strata::zoo;
  std::vector<std::string> members = options.only;
  if (members.empty())
    for (const auto& plan : zoo::model_plans()) members.push_back(plan.name);
  const auto start = std::chrono::steady_clock::now();
  const double load_before = zoo::load_average();
  fs::create_directories(out_dir);
  const fs::path work = out_dir / fmt::format(".zoo-train-{}", ::getpid());
  fs::create_directories(work);
  const fs::path self = fs::read_symlink("/proc/self/exe");
  std::map<pid_t, std::string> running;
  std::vector<std::string> failed;
  auto wait_one = [&] {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, 0);
    if (pid <= 0) strata::fail("zoo train: waitpid failed: {}", std::strerror(errno));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) failed.push_back(running.at(pid));
    running.erase(pid);
  };
  for (const auto& member : members) {
    while (static_cast<int>(running.size()) >= jobs) wait_one();
    zoo::ZooOptions one = options;
    one.only = {member};
    const fs::path options_file = work / (member + ".options.json");
    strata::atomic_write_text(options_file, zoo::options_to_json(one).dump(2));
    std::vector<std::string> args{self.string(), "zoo", "train", "--options-json", options_file.string(),
                                  "--out", (work / member).string(), "--jobs", "1"};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    if (::posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv.data(), environ) != 0)
      strata::fail("zoo train: cannot start {}: {}", self.string(), std::strerror(errno));
    running[pid] = member;
  }
  while (!running.empty()) wait_one();
  if (!failed.empty()) {
    fs::remove_all(work);
    strata::fail("zoo train: member(s) {} failed (see their log above); nothing was replaced in {}",
                 fmt::join(failed, ", "), out_dir.string());
  }
  nlohmann::json models = nlohmann::json::array();
  for (const auto& member : members) {
    const auto summary = nlohmann::json::parse(strata::read_text_file(work / member / "zoo.json"));
    models.push_back(summary.at("models").at(0));
    fs::remove_all(out_dir / member);
    fs::rename(work / member / member, out_dir / member);
  }
  fs::remove_all(work);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return zoo::write_zoo_summary(out_dir, options, models, wall, load_before, jobs);
}

// In this process when one job (or one member) is asked for, else in parallel processes.
nlohmann::json train_members(const fs::path& out_dir, const strata::zoo::ZooOptions& options, int jobs) {
  const size_t members = options.only.empty() ? strata::zoo::model_plans().size() : options.only.size();
  if (jobs <= 1 || members <= 1) return strata::zoo::train_zoo(out_dir, options);
  return train_in_processes(out_dir, options, jobs);
}

void setup(strata::cli::Commands& commands) {
  auto* zoo = commands.group("zoo", "The embedded model zoo: four tiny LMs trained by strata, plus a positive control");

  auto train_args = std::make_shared<TrainArgs>();
  auto* train = zoo->add_subcommand("train", "Train the zoo models (gpt2, gpt_neox, phi, gemma wiring, and the zoo-gpt2 control)");
  train->add_option("--out", train_args->out, "Output directory (one sub-directory per model)")->capture_default_str();
  // Every zoo option (ZooOptions::fields()); threads keeps --train-threads, apart from the global --threads.
  strata::cli::add_option_flags(train, train_args->options, {{"threads", "--train-threads"}});
  train->add_option("--jobs", train_args->jobs,
                    "Members trained at once, each in its own process (the weights do not depend on it)")
      ->capture_default_str();
  train->add_option("--options-json", train_args->options_json,
                    "Every training option from a JSON file (zoo.json \"options\"), instead of the flags above");
  commands.bind(train, [train_args]() {
    const auto options = train_args->options_json.empty()
                             ? train_args->options
                             : strata::zoo::options_from_json(
                                   nlohmann::json::parse(strata::read_text_file(train_args->options_json)));
    strata::cli::check_option_flags(options, {{"threads", "--train-threads"}});
    print_summary(train_members(train_args->out, options, train_args->jobs));
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
      fmt::print("retraining the zoo into {} (seed {}, {} threads per member, {} members at once)\n",
                 regenerated.string(), options.seed, options.threads, default_jobs());
      train_members(regenerated, options, default_jobs());
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
