// The embedded model zoo: four tiny language models (gpt2, gpt_neox, phi, gemma wiring), each with its own
// byte-level BPE tokenizer, plus a positive control (zoo-gpt2 again, other init and data order), trained by strata on the synthetic reasoning corpus so that the default
// experiment runs offline on real, trained models. Each model is a genuine Hugging Face checkpoint
// directory (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) plus its training
// record (training_log.csv, zoo_report.json). Training is bit-for-bit deterministic for a fixed seed,
// platform and thread count.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "core/options.hpp"
#include "models/transformer.hpp"
#include "text/dataset.hpp"
#include "text/tokenizer.hpp"

namespace strata::zoo {

// One zoo member: its directory name, its HF config.json (vocab_size is filled in from the trained
// tokenizer) and the vocabulary size its tokenizer is trained to.
struct ModelPlan {
  std::string name;         // e.g. "zoo-gpt2"
  nlohmann::json config;    // genuine HF config.json fields for the family
  int64_t vocab_size = 0;   // target vocabulary of the model's own BPE tokenizer
  bool add_bos = false;     // the tokenizer prepends <|endoftext|> as BOS (Gemma-like)
  // Non-empty for a positive control: the member whose config, tokenizer and data this one shares; only
  // the seeds (derived from the name) differ.
  std::string control_of;
};
// The members in training order: zoo-gpt2, zoo-neox, zoo-phi, zoo-gemma, then the control zoo-gpt2-control.
std::vector<ModelPlan> model_plans();

struct ZooOptions {
  uint64_t seed = 0;  // model init and data order: derive(seed, "zoo/init" | "zoo/data-order", member name)
  // Intra-op threads; bit-identity holds for the same count. One thread: the zoo's matrices are too small
  // to gain from two, and on a shared machine two spinning OpenMP threads ran 18x slower than one.
  int threads = 1;
  uint64_t train_corpus_seed = 1;     // synthetic_problems(train_corpus_seed, train_problems)
  int64_t train_problems = 3000;
  uint64_t heldout_corpus_seed = 2;   // synthetic_problems(heldout_corpus_seed, heldout_problems)
  int64_t heldout_problems = 200;
  int64_t answer_problems = 50;       // the first N held-out problems are answered greedily
  int64_t steps = 1000;               // optimizer steps per model
  int64_t batch_size = 16;            // documents per step
  double learning_rate = 3e-3;        // peak; linear warm-up then cosine decay to min_lr_ratio * peak
  double min_lr_ratio = 0.1;
  int64_t warmup_steps = 20;
  double weight_decay = 0.1;          // AdamW, on matrices and embeddings only
  double grad_clip = 1.0;
  int64_t eval_every = 50;            // held-out loss is logged every N steps (and at the end)
  std::vector<std::string> only;      // train only these members (names); empty = all members

  // Every option, recorded in zoo.json "options" and read back by `zoo verify` to retrain exactly.
  static const auto& fields() {
    using O = ZooOptions;
    namespace o = options;
    static const auto table = std::make_tuple(
        o::field("seed", &O::seed, "model init and data order"),
        o::field("threads", &O::threads, "compute threads (bit-identical results need the same count)", o::at_least(1)),
        o::field("train_corpus_seed", &O::train_corpus_seed, "seed of the synthetic training problems"),
        o::field("train_problems", &O::train_problems, "training problems",
                 o::rule([](const O& z, int64_t v) { return v >= z.batch_size; }, "must be >= batch_size")),
        o::field("heldout_corpus_seed", &O::heldout_corpus_seed, "seed of the synthetic held-out problems"),
        o::field("heldout_problems", &O::heldout_problems, "held-out problems", o::at_least(1)),
        o::field("answer_problems", &O::answer_problems, "held-out problems answered greedily", o::at_least(0)),
        o::field("steps", &O::steps, "optimizer steps per model", o::at_least(1)),
        o::field("batch_size", &O::batch_size, "documents per step", o::at_least(1)),
        o::field("learning_rate", &O::learning_rate, "peak learning rate", o::above(0)),
        o::field("min_lr_ratio", &O::min_lr_ratio, "cosine decay ends at this fraction of the peak", o::within(0, 1)),
        o::field("warmup_steps", &O::warmup_steps, "linear warm-up steps",
                 o::rule([](const O& z, int64_t v) { return v >= 0 && v <= z.steps; }, "must lie in [0, steps]")),
        o::field("weight_decay", &O::weight_decay, "AdamW weight decay (matrices and embeddings)", o::at_least(0)),
        o::field("grad_clip", &O::grad_clip, "gradient-norm clip", o::above(0)),
        o::field("eval_every", &O::eval_every, "held-out loss logged every this many steps", o::at_least(1)),
        o::field("only", &O::only, "train only these members (names); empty = all"));
    return table;
  }
};

// Every field of ZooOptions, as recorded in zoo.json "options" (so a retrain can use exactly them).
nlohmann::json options_to_json(const ZooOptions& options);
ZooOptions options_from_json(const nlohmann::json& options);  // throws naming a missing or mistyped key

// The held-out figures of one model on a set of documents.
struct Evaluation {
  double heldout_loss = 0;    // mean next-token cross-entropy (nats) over the held-out targets
  double unigram_loss = 0;    // same targets under the training unigram distribution (add-one smoothed)
  int64_t target_tokens = 0;
  int64_t answers_correct = 0, answers_total = 0;  // greedy answers after problem_prompt
};

// Token ids of one training/evaluation document: the tokenizer's default special tokens (the BOS of
// Gemma-like members), then the document, then <|endoftext|>.
std::vector<int32_t> encode_document(const text::Tokenizer& tokenizer, const std::string& text);

// Mean next-token loss of `model` over `documents` (each already encoded), in batches, no grad.
std::pair<double, int64_t> mean_next_token_loss(const models::Transformer& model,
                                                const std::vector<std::vector<int32_t>>& documents);

// Cross-entropy (nats) of the target tokens of `documents` (every token after the first) under the
// unigram distribution of the targets of `training_documents`, add-one smoothed over `vocab_size`.
double unigram_cross_entropy(const std::vector<std::vector<int32_t>>& training_documents,
                             const std::vector<std::vector<int32_t>>& documents, int64_t vocab_size);

// The greedy continuation (at most `max_new_tokens`, stopping at a newline or <|endoftext|>) after
// problem_prompt(p), compared with p.answer.
bool greedy_answer_is_correct(const models::Transformer& model, const text::Tokenizer& tokenizer,
                              const text::Problem& problem, int64_t max_new_tokens = 8);

// Trains every member (or `options.only`) into out_dir/<name>/ and writes out_dir/zoo.json.
// Returns the summary (per model: held-out loss, unigram baseline, answer accuracy, wall time).
nlohmann::json train_zoo(const std::filesystem::path& out_dir, const ZooOptions& options);

// Writes out_dir/zoo.json for `members` (each one entry of a train_zoo summary's "models") and returns it.
// jobs: how many members were trained at once (in separate processes; see `strata zoo train --jobs`).
nlohmann::json write_zoo_summary(const std::filesystem::path& out_dir, const ZooOptions& options,
                                 const nlohmann::json& members, double wall_seconds, double load_before, int jobs);

// The 1-minute load average (/proc/loadavg), recorded with timings; -1 when unavailable.
double load_average();

// Compares two zoo directories member by member: per-tensor max |difference| of model.safetensors,
// and whether config.json and tokenizer.json are byte-identical. Result has "bit_identical" and
// "max_abs_diff" overall and per model.
nlohmann::json verify_zoo(const std::filesystem::path& shipped, const std::filesystem::path& regenerated);

// The shipped zoo: ./zoo when it holds the members, else <source dir>/zoo.
std::filesystem::path default_zoo_dir();

}  // namespace strata::zoo
