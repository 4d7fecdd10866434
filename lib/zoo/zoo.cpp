#include "zoo/zoo.hpp"

#include <fmt/ranges.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <fstream>

#include "core/error.hpp"
#include "core/read_bounded.hpp"
#include "core/fs.hpp"
#include "core/hash.hpp"
#include "core/log.hpp"
#include "core/random.hpp"
#include "core/runtime.hpp"
#include "io/safetensors.hpp"
#include "strata_build_info.hpp"

namespace strata::zoo {
namespace fs = std::filesystem;
using nlohmann::json;

double load_average() {
  std::ifstream in("/proc/loadavg");
  double one_minute = -1;
  in >> one_minute;
  return one_minute;
}

namespace {

constexpr const char* kEndOfText = "<|endoftext|>";  // id 0 of every strata-trained tokenizer
constexpr int64_t kMaxPositions = 256;

// HF config.json fields shared by the four families: dropout off, fp32, id 0 as BOS/EOS.
json common_config(json config) {
  config["bos_token_id"] = 0;
  config["eos_token_id"] = 0;
  config["initializer_range"] = 0.02;
  config["torch_dtype"] = "float32";
  config["transformers_version"] = "4.40.0";
  config["use_cache"] = true;
  return config;
}

// The model's tokenizer: byte-level BPE trained on the training corpus; Gemma-like members also get a
// TemplateProcessing post-processor prepending <|endoftext|> as BOS (read by HF and strata alike).
void train_tokenizer(const ModelPlan& plan, const std::vector<std::string>& texts, const fs::path& dir) {
  const fs::path file = dir / "tokenizer.json";
  text::train_byte_level_bpe(texts, plan.vocab_size, file);
  if (plan.add_bos) {
    json tok = json::parse(read_text_file(file));
    json bos_template = {
        {"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", kEndOfText}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
        {"pair", json::array({{{"SpecialToken", {{"id", kEndOfText}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                              {{"SpecialToken", {{"id", kEndOfText}, {"type_id", 1}}}},
                              {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}})},
        {"special_tokens", {{kEndOfText, {{"id", kEndOfText}, {"ids", {0}}, {"tokens", {kEndOfText}}}}}}};
    json previous = tok.value("post_processor", json());
    tok["post_processor"] = previous.is_null()
                                ? bos_template
                                : json{{"type", "Sequence"}, {"processors", json::array({previous, bos_template})}};
    atomic_write_text(file, tok.dump(2) + "\n");
  }
  json tokenizer_config = {{"tokenizer_class", "PreTrainedTokenizerFast"},
                           {"bos_token", kEndOfText},
                           {"eos_token", kEndOfText},
                           {"unk_token", kEndOfText},
                           {"add_bos_token", plan.add_bos},
                           {"add_eos_token", false},
                           {"clean_up_tokenization_spaces", false},
                           {"model_max_length", kMaxPositions}};
  atomic_write_text(dir / "tokenizer_config.json", tokenizer_config.dump(2) + "\n");
}

std::vector<std::vector<int32_t>> encode_all(const text::Tokenizer& tokenizer, const std::vector<text::Problem>& problems) {
  std::vector<std::vector<int32_t>> out;
  out.reserve(problems.size());
  for (const auto& p : problems) {
    out.push_back(encode_document(tokenizer, text::format_problem(p)));
    if (int64_t(out.back().size()) > kMaxPositions)
      fail("zoo: a synthetic document has {} tokens, more than the {} positions of the zoo models", out.back().size(),
           kMaxPositions);
  }
  return out;
}

// Right-padded [B, L] ids (pad 0), attention mask and next-token targets (-100 where there is none).
struct Batch {
  torch::Tensor ids, mask, targets;
};
Batch make_batch(const std::vector<std::vector<int32_t>>& docs, const std::vector<int64_t>& rows) {
  int64_t length = 0;
  for (int64_t r : rows) length = std::max<int64_t>(length, int64_t(docs[r].size()));
  const int64_t B = int64_t(rows.size());
  torch::Tensor ids = torch::zeros({B, length}, torch::kLong), mask = torch::zeros({B, length}, torch::kLong);
  torch::Tensor targets = torch::full({B, length - 1}, -100, torch::kLong);
  auto I = ids.accessor<int64_t, 2>(), M = mask.accessor<int64_t, 2>(), Y = targets.accessor<int64_t, 2>();
  for (int64_t b = 0; b < B; ++b) {
    const auto& d = docs[rows[b]];
    for (size_t t = 0; t < d.size(); ++t) {
      I[b][t] = d[t];
      M[b][t] = 1;
      if (t > 0) Y[b][t - 1] = d[t];
    }
  }
  return {ids, mask, targets};
}

torch::Tensor batch_loss(const models::Transformer& model, const Batch& batch, torch::nn::functional::CrossEntropyFuncOptions::reduction_t reduction) {
  models::ForwardRequest request;
  request.logits = true;
  const torch::Tensor logits = model.forward(batch.ids, batch.mask, request).logits;
  const int64_t L = batch.ids.size(1), V = logits.size(2);
  const torch::Tensor predicting = logits.narrow(1, 0, L - 1).reshape({-1, V});
  return torch::nn::functional::cross_entropy(
      predicting, batch.targets.reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).reduction(reduction));
}

double learning_rate_at(const ZooOptions& o, int64_t step) {
  if (step < o.warmup_steps) return o.learning_rate * double(step + 1) / double(o.warmup_steps);
  const double progress = double(step - o.warmup_steps) / double(std::max<int64_t>(1, o.steps - o.warmup_steps));
  const double cosine = 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress)));
  return o.learning_rate * (o.min_lr_ratio + (1.0 - o.min_lr_ratio) * cosine);
}

std::string format_number(double x) { return fmt::format("{:.6f}", x); }

json train_member(const ModelPlan& plan, const fs::path& dir, const ZooOptions& o,
                  const std::vector<text::Problem>& train_problems, const std::vector<std::string>& train_texts,
                  const std::vector<text::Problem>& heldout_problems) {
  const auto start = std::chrono::steady_clock::now();
  const std::clock_t cpu_start = std::clock();
  const double load_before = load_average();
  fs::create_directories(dir);
  log::info("zoo: {}: training a {}-token BPE tokenizer on {} documents", plan.name, plan.vocab_size, train_texts.size());
  train_tokenizer(plan, train_texts, dir);
  const text::Tokenizer tokenizer = text::Tokenizer::load(dir);

  json config = plan.config;
  config["vocab_size"] = tokenizer.vocab_size();
  models::ModelSpec spec = models::parse_config(config, (dir / "config.json").string());

  const auto train_docs = encode_all(tokenizer, train_problems);
  const auto heldout_docs = encode_all(tokenizer, heldout_problems);
  int64_t train_tokens = 0;
  for (const auto& d : train_docs) train_tokens += int64_t(d.size());

  // Seeds of this member: parameters and data order, each derived from the zoo seed and the member's name
  // (so a positive control, same plan under another name, gets its own init and order).
  const uint64_t init_seed = derive(o.seed, "zoo/init", plan.name);
  const uint64_t order_seed = derive(o.seed, "zoo/data-order", plan.name);
  auto params = models::Transformer::init_parameters(spec, init_seed);
  std::vector<torch::Tensor> decayed, not_decayed, all;
  for (auto& [name, t] : params) {
    t.requires_grad_(true);
    (t.dim() >= 2 ? decayed : not_decayed).push_back(t);
    all.push_back(t);
  }
  int64_t n_params = 0;
  for (const auto& t : all) n_params += t.numel();
  const models::Transformer model = models::Transformer::from_parameters(spec, params);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decayed, std::make_unique<torch::optim::AdamWOptions>(
                                   torch::optim::AdamWOptions(o.learning_rate).betas({0.9, 0.95}).weight_decay(o.weight_decay)));
  groups.emplace_back(not_decayed, std::make_unique<torch::optim::AdamWOptions>(
                                       torch::optim::AdamWOptions(o.learning_rate).betas({0.9, 0.95}).weight_decay(0.0)));
  torch::optim::AdamW optimizer(std::move(groups));

  log::info("zoo: {}: {} ({} parameters, hidden {}, {} layers, vocab {}), {} steps x {} documents", plan.name,
            spec.model_type, n_params, spec.hidden_size, spec.n_layers, spec.vocab_size, o.steps, o.batch_size);
  auto order_generator = at::detail::createCPUGenerator(order_seed);
  std::vector<int64_t> order;
  size_t cursor = 0;
  auto next_rows = [&]() {
    std::vector<int64_t> rows;
    while (int64_t(rows.size()) < o.batch_size) {
      if (cursor == order.size()) {
        const torch::Tensor perm = torch::randperm(int64_t(train_docs.size()), order_generator, torch::kLong);
        order.assign(perm.data_ptr<int64_t>(), perm.data_ptr<int64_t>() + perm.numel());
        cursor = 0;
      }
      rows.push_back(order[cursor++]);
    }
    return rows;
  };

  std::string csv = "step,learning_rate,train_loss,heldout_loss\n";
  double last_train_loss = 0, last_heldout = 0;
  log::Progress progress(plan.name + " training", o.steps);
  for (int64_t step = 0; step < o.steps; ++step) {
    const double lr = learning_rate_at(o, step);
    for (auto& group : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
    const Batch batch = make_batch(train_docs, next_rows());
    optimizer.zero_grad();
    const torch::Tensor loss = batch_loss(model, batch, torch::kMean);
    loss.backward();
    torch::nn::utils::clip_grad_norm_(all, o.grad_clip);
    optimizer.step();
    last_train_loss = loss.item<double>();
    std::string heldout_field;
    if ((step + 1) % o.eval_every == 0 || step + 1 == o.steps) {
      last_heldout = mean_next_token_loss(model, heldout_docs).first;
      heldout_field = format_number(last_heldout);
      log::info("zoo: {}: step {}/{} train loss {:.4f}, held-out loss {:.4f}", plan.name, step + 1, o.steps,
                last_train_loss, last_heldout);
    }
    csv += fmt::format("{},{:.8g},{},{}\n", step + 1, lr, format_number(last_train_loss), heldout_field);
    progress.advance();
  }
  progress.finish();
  const double train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  std::map<std::string, torch::Tensor> trained;
  for (const auto& [name, t] : params) trained[name] = t.detach().contiguous();
  models::save_checkpoint(dir, spec, trained);
  atomic_write_text(dir / "training_log.csv", csv);

  // Evaluation of the saved checkpoint, read back as any user would read it.
  const models::Transformer loaded = models::Transformer::load(dir);
  Evaluation ev;
  std::tie(ev.heldout_loss, ev.target_tokens) = mean_next_token_loss(loaded, heldout_docs);
  ev.unigram_loss = unigram_cross_entropy(train_docs, heldout_docs, spec.vocab_size);
  const int64_t answering = std::min<int64_t>(o.answer_problems, int64_t(heldout_problems.size()));
  for (int64_t i = 0; i < answering; ++i) {
    torch::NoGradGuard no_grad;
    ev.answers_correct += greedy_answer_is_correct(loaded, tokenizer, heldout_problems[size_t(i)]) ? 1 : 0;
  }
  ev.answers_total = answering;
  const double wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  json report = {
      {"name", plan.name},
      {"model_type", spec.model_type},
      {"parameters", n_params},
      {"hidden_size", spec.hidden_size},
      {"layers", spec.n_layers},
      {"heads", spec.n_heads},
      {"kv_heads", spec.n_kv_heads},
      {"head_dim", spec.head_dim},
      {"vocab_size", spec.vocab_size},
      {"tokenizer_vocab_target", plan.vocab_size},
      {"seed", o.seed},
      {"init_seed", init_seed},
      {"data_order_seed", order_seed},
      {"control_of", plan.control_of.empty() ? json() : json(plan.control_of)},
      {"threads", o.threads},
      {"steps", o.steps},
      {"batch_size", o.batch_size},
      {"learning_rate", o.learning_rate},
      {"warmup_steps", o.warmup_steps},
      {"min_lr_ratio", o.min_lr_ratio},
      {"weight_decay", o.weight_decay},
      {"grad_clip", o.grad_clip},
      {"train_corpus", {{"dataset", fmt::format("synthetic:{}", o.train_corpus_seed)},
                        {"problems", o.train_problems}, {"tokens", train_tokens}}},
      {"heldout_corpus", {{"dataset", fmt::format("synthetic:{}", o.heldout_corpus_seed)},
                          {"problems", o.heldout_problems}, {"target_tokens", ev.target_tokens}}},
      {"final_train_loss", last_train_loss},
      {"heldout_loss", ev.heldout_loss},
      {"unigram_baseline_loss", ev.unigram_loss},
      {"heldout_over_unigram", ev.heldout_loss / ev.unigram_loss},
      {"greedy_answer_accuracy", double(ev.answers_correct) / double(std::max<int64_t>(1, ev.answers_total))},
      {"greedy_answers_correct", ev.answers_correct},
      {"greedy_answers_total", ev.answers_total},
      {"train_seconds", train_seconds},
      {"wall_seconds", wall_seconds},
      {"cpu_seconds", double(std::clock() - cpu_start) / CLOCKS_PER_SEC},
      {"load_average_1min", {{"before", load_before}, {"after", load_average()}}},
      {"model_sha256", sha256_file(dir / "model.safetensors")},
      {"tokenizer_sha256", sha256_file(dir / "tokenizer.json")},
  };
  atomic_write_text(dir / "zoo_report.json", report.dump(2) + "\n");
  log::info("zoo: {}: held-out loss {:.4f} vs unigram {:.4f} nats; greedy answers {}/{}; {:.1f} s", plan.name,
            ev.heldout_loss, ev.unigram_loss, ev.answers_correct, ev.answers_total, wall_seconds);
  return report;
}

}  // namespace

std::vector<ModelPlan> model_plans() {
  std::vector<ModelPlan> plans;
  plans.push_back({"zoo-gpt2",
                   common_config({{"architectures", {"GPT2LMHeadModel"}},
                                  {"model_type", "gpt2"},
                                  {"n_embd", 64},
                                  {"n_layer", 6},
                                  {"n_head", 4},
                                  {"n_inner", nullptr},
                                  {"n_positions", kMaxPositions},
                                  {"n_ctx", kMaxPositions},
                                  {"activation_function", "gelu_new"},
                                  {"layer_norm_epsilon", 1e-5},
                                  {"resid_pdrop", 0.0},
                                  {"embd_pdrop", 0.0},
                                  {"attn_pdrop", 0.0},
                                  {"scale_attn_weights", true},
                                  {"tie_word_embeddings", true}}),
                   384, false});
  plans.push_back({"zoo-neox",
                   common_config({{"architectures", {"GPTNeoXForCausalLM"}},
                                  {"model_type", "gpt_neox"},
                                  {"hidden_size", 96},
                                  {"num_hidden_layers", 6},
                                  {"num_attention_heads", 4},
                                  {"intermediate_size", 384},
                                  {"hidden_act", "gelu"},
                                  {"rotary_pct", 0.25},
                                  {"rotary_emb_base", 10000},
                                  {"max_position_embeddings", kMaxPositions},
                                  {"layer_norm_eps", 1e-5},
                                  {"use_parallel_residual", true},
                                  {"attention_dropout", 0.0},
                                  {"hidden_dropout", 0.0},
                                  {"tie_word_embeddings", false}}),
                   512, false});
  plans.push_back({"zoo-phi",
                   common_config({{"architectures", {"PhiForCausalLM"}},
                                  {"model_type", "phi"},
                                  {"hidden_size", 80},
                                  {"num_hidden_layers", 6},
                                  {"num_attention_heads", 4},
                                  {"num_key_value_heads", 4},
                                  {"intermediate_size", 320},
                                  {"hidden_act", "gelu_new"},
                                  {"partial_rotary_factor", 0.4},
                                  {"rope_theta", 10000.0},
                                  {"rope_scaling", nullptr},
                                  {"qk_layernorm", false},
                                  {"max_position_embeddings", kMaxPositions},
                                  {"layer_norm_eps", 1e-5},
                                  {"resid_pdrop", 0.0},
                                  {"embd_pdrop", 0.0},
                                  {"attention_dropout", 0.0},
                                  {"tie_word_embeddings", false}}),
                   448, false});
  plans.push_back({"zoo-gemma",
                   common_config({{"architectures", {"GemmaForCausalLM"}},
                                  {"model_type", "gemma"},
                                  {"hidden_size", 64},
                                  {"num_hidden_layers", 6},
                                  {"num_attention_heads", 4},
                                  {"num_key_value_heads", 1},
                                  {"head_dim", 16},
                                  {"intermediate_size", 256},
                                  {"hidden_act", "gelu_pytorch_tanh"},
                                  {"hidden_activation", "gelu_pytorch_tanh"},
                                  {"rms_norm_eps", 1e-6},
                                  {"rope_theta", 10000.0},
                                  {"max_position_embeddings", kMaxPositions},
                                  {"attention_bias", false},
                                  {"attention_dropout", 0.0},
                                  {"pad_token_id", 0},
                                  {"tie_word_embeddings", true}}),
                   576, true});
  // The positive control: zoo-gpt2's config, tokenizer (trained on the same corpus to the same vocabulary,
  // hence the same bytes) and training data, with its own init and data order. Two trained models that
  // differ only by chance, so the cross-model path should find their features shared.
  ModelPlan control = plans.front();
  control.name = "zoo-gpt2-control";
  control.control_of = "zoo-gpt2";
  plans.push_back(std::move(control));
  return plans;
}

std::vector<int32_t> encode_document(const text::Tokenizer& tokenizer, const std::string& document) {
  std::vector<int32_t> ids = tokenizer.encode(document, /*add_special_tokens=*/true).ids;
  const auto eos = tokenizer.token_to_id(kEndOfText);
  if (!eos) fail("zoo: tokenizer {} has no {} token", tokenizer.source().string(), kEndOfText);
  ids.push_back(*eos);
  return ids;
}

std::pair<double, int64_t> mean_next_token_loss(const models::Transformer& model,
                                                const std::vector<std::vector<int32_t>>& documents) {
  torch::NoGradGuard no_grad;
  constexpr size_t kBatch = 32;
  double total = 0;
  int64_t count = 0;
  for (size_t begin = 0; begin < documents.size(); begin += kBatch) {
    std::vector<int64_t> rows;
    for (size_t i = begin; i < std::min(documents.size(), begin + kBatch); ++i) rows.push_back(int64_t(i));
    const Batch batch = make_batch(documents, rows);
    total += batch_loss(model, batch, torch::kSum).item<double>();
    count += (batch.targets != -100).sum().item<int64_t>();
  }
  if (count == 0) fail("zoo: no held-out targets to evaluate");
  return {total / double(count), count};
}

double unigram_cross_entropy(const std::vector<std::vector<int32_t>>& training_documents,
                             const std::vector<std::vector<int32_t>>& documents, int64_t vocab_size) {
  std::vector<double> counts(size_t(vocab_size), 1.0);  // add-one smoothing
  double total = double(vocab_size);
  for (const auto& d : training_documents)
    for (size_t t = 1; t < d.size(); ++t) counts.at(size_t(d[t])) += 1, total += 1;
  double nll = 0;
  int64_t n = 0;
  for (const auto& d : documents)
    for (size_t t = 1; t < d.size(); ++t) nll -= std::log(counts.at(size_t(d[t])) / total), ++n;
  if (n == 0) fail("zoo: no held-out targets for the unigram baseline");
  return nll / double(n);
}

bool greedy_answer_is_correct(const models::Transformer& model, const text::Tokenizer& tokenizer,
                              const text::Problem& problem, int64_t max_new_tokens) {
  torch::NoGradGuard no_grad;
  std::vector<int32_t> ids = tokenizer.encode(text::problem_prompt(problem), true).ids;
  const size_t prompt_length = ids.size();
  const auto eos = tokenizer.token_to_id(kEndOfText);
  models::ForwardRequest request;
  request.logits = true;
  std::string continuation;
  for (int64_t k = 0; k < max_new_tokens && int64_t(ids.size()) < model.spec().max_positions; ++k) {
    const torch::Tensor input = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kLong).unsqueeze(0);
    const torch::Tensor logits = model.forward(input, {}, request).logits;
    const int32_t next = int32_t(logits[0][int64_t(ids.size()) - 1].argmax().item<int64_t>());
    if (eos && next == *eos) break;
    ids.push_back(next);
    continuation = tokenizer.decode(std::vector<int32_t>(ids.begin() + int64_t(prompt_length), ids.end()));
    if (continuation.find('\n') != std::string::npos) break;
  }
  continuation = continuation.substr(0, continuation.find('\n'));
  const size_t first = continuation.find_first_not_of(' ');
  const size_t last = continuation.find_last_not_of(' ');
  const std::string answer = first == std::string::npos ? "" : continuation.substr(first, last - first + 1);
  return answer == problem.answer;
}

json train_zoo(const fs::path& out_dir, const ZooOptions& o) {
  options::validate(o, "zoo");
  const std::vector<ModelPlan> all = model_plans();
  std::vector<std::string> names;
  for (const auto& plan : all) names.push_back(plan.name);
  for (const auto& name : o.only)
    if (std::find(names.begin(), names.end(), name) == names.end())
      fail("zoo: unknown member {}; the members are {}", shown_text(name), fmt::join(names, ", "));
  auto selected = [&](const ModelPlan& plan) {
    return o.only.empty() || std::find(o.only.begin(), o.only.end(), plan.name) != o.only.end();
  };
  runtime::set_threads(o.threads);
  runtime::apply_determinism();
  const auto start = std::chrono::steady_clock::now();
  const double load_before = load_average();

  const auto train_problems = text::synthetic_problems(o.train_corpus_seed, o.train_problems);
  const auto heldout_problems = text::synthetic_problems(o.heldout_corpus_seed, o.heldout_problems);
  std::vector<std::string> train_texts;
  for (const auto& p : train_problems) train_texts.push_back(text::format_problem(p));

  fs::create_directories(out_dir);
  json members = json::array();
  for (const auto& plan : all)
    if (selected(plan))
      members.push_back(train_member(plan, out_dir / plan.name, o, train_problems, train_texts, heldout_problems));
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return write_zoo_summary(out_dir, o, members, wall, load_before, 1);
}

json options_to_json(const ZooOptions& o) { return options::to_json(o); }

ZooOptions options_from_json(const json& j) {
  ZooOptions o;
  options::apply_json(o, j, "zoo options", /*require_all=*/true);
  return o;
}

json write_zoo_summary(const fs::path& out_dir, const ZooOptions& o, const json& members, double wall_seconds,
                       double load_before, int jobs) {
  json summary = {{"seed", o.seed},
                  {"threads", o.threads},
                  {"jobs", jobs},
                  {"options", options_to_json(o)},
                  {"wall_seconds", wall_seconds},
                  {"load_average_1min", {{"before", load_before}, {"after", load_average()}}},
                  {"environment", runtime::environment_json()},
                  {"models", members}};
  atomic_write_text(out_dir / "zoo.json", summary.dump(2) + "\n");
  log::info("zoo: trained {} model(s) in {:.1f} s", members.size(), wall_seconds);
  return summary;
}

json verify_zoo(const fs::path& shipped, const fs::path& regenerated) {
  json models = json::array();
  double overall = 0;
  bool all_identical = true;
  int64_t compared = 0;
  for (const auto& plan : model_plans()) {
    const fs::path a = shipped / plan.name, b = regenerated / plan.name;
    if (!fs::exists(a / "model.safetensors")) continue;
    if (!fs::exists(b / "model.safetensors"))
      fail("zoo verify: {} is missing from {} (regenerate it with `strata zoo train --out {}`)", plan.name,
           regenerated.string(), regenerated.string());
    io::SafetensorsFile fa(a / "model.safetensors"), fb(b / "model.safetensors");
    if (fa.names() != fb.names())
      fail("zoo verify: {}: the two checkpoints hold different tensor names", plan.name);
    json tensors = json::object();
    double model_max = 0;
    bool identical = true;
    for (const auto& name : fa.names()) {
      const torch::Tensor ta = fa.load(name, torch::kFloat32), tb = fb.load(name, torch::kFloat32);
      if (ta.sizes() != tb.sizes()) fail("zoo verify: {}: tensor {} differs in shape", plan.name, name);
      const double diff = (ta - tb).abs().max().item<double>();
      identical &= ta.equal(tb);
      tensors[name] = diff;
      model_max = std::max(model_max, diff);
    }
    const bool same_config = sha256_file(a / "config.json") == sha256_file(b / "config.json");
    const bool same_tokenizer = sha256_file(a / "tokenizer.json") == sha256_file(b / "tokenizer.json");
    const bool same_file = sha256_file(a / "model.safetensors") == sha256_file(b / "model.safetensors");
    identical = identical && same_config && same_tokenizer && same_file;
    all_identical &= identical;
    overall = std::max(overall, model_max);
    ++compared;
    models.push_back({{"name", plan.name},
                      {"bit_identical", identical},
                      {"max_abs_diff", model_max},
                      {"config_identical", same_config},
                      {"tokenizer_identical", same_tokenizer},
                      {"safetensors_identical", same_file},
                      {"tensors", tensors}});
  }
  if (compared == 0) fail("zoo verify: {} holds no zoo members (zoo-gpt2, ...)", shipped.string());
  return {{"shipped", shipped.string()},
          {"regenerated", regenerated.string()},
          {"bit_identical", all_identical},
          {"max_abs_diff", overall},
          {"models", models}};
}

fs::path default_zoo_dir() {
  if (fs::exists(fs::path("zoo") / "zoo-gpt2" / "config.json")) return fs::absolute("zoo");
  return fs::path(STRATA_SOURCE_DIR) / "zoo";
}

}  // namespace strata::zoo
