#include "sae/train.hpp"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <fstream>

#include "core/bench.hpp"
#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/log.hpp"
#include "core/random.hpp"
#include "io/safetensors.hpp"
#include "sae/architecture.hpp"
#include "sae/batch_stream.hpp"
#include "sae/kernels.hpp"
#include "sae/metrics.hpp"

namespace strata::sae {
namespace fs = std::filesystem;

std::string hook_name(int64_t layer) {
  return layer == 0 ? std::string("hook_embed") : fmt::format("blocks.{}.hook_resid_post", layer - 1);
}

nlohmann::json TrainOptions::to_json() const {
  // cfg.json "training" keeps SAELens' names: architecture "standard", l1_coefficient; checkpointing is
  // how the SAE was made, not what it is, and is left out.
  nlohmann::json j = options::to_json(*this);
  j["architecture"] = architecture == "relu" ? "standard" : architecture;
  j["l1_coefficient"] = j.at("l1");
  j.erase("l1");
  j.erase("checkpoint_interval_steps");
  return j;
}

nlohmann::json EvalResult::to_json() const {
  return {{"mse", mse},
          {"fvu", fvu},
          {"explained_variance", explained_variance},
          {"l0", l0},
          {"sparsity", sparsity},
          {"dead_fraction", dead_fraction},
          {"dense_fraction", dense_fraction},
          {"eval_tokens", tokens}};
}

namespace {

std::pair<int64_t, int64_t> shard_span(const io::ActivationStore& store, size_t shard) {
  int64_t begin = 0;
  for (size_t s = 0; s < shard; ++s) begin += store.shard_rows(s);
  return {begin, begin + store.shard_rows(shard)};
}

// Held-out rows per shard: the last floor(rows * fraction) (at least one row overall).
std::vector<int64_t> heldout_counts(const io::ActivationStore& store, double fraction) {
  if (!(fraction > 0.0 && fraction < 1.0)) fail("heldout_fraction must be in (0, 1) (got {})", fraction);
  std::vector<int64_t> counts;
  int64_t total = 0;
  for (size_t s = 0; s < store.num_shards(); ++s) {
    counts.push_back(int64_t(std::floor(double(store.shard_rows(s)) * fraction)));
    total += counts.back();
  }
  if (total == 0 && !counts.empty()) counts.back() = std::min<int64_t>(1, store.shard_rows(counts.size() - 1));
  return counts;
}

}  // namespace

RowRanges heldout_ranges(const io::ActivationStore& store, double fraction) {
  auto counts = heldout_counts(store, fraction);
  RowRanges out;
  for (size_t s = 0; s < counts.size(); ++s) {
    auto [b, e] = shard_span(store, s);
    out.emplace_back(e - counts[s], e);
  }
  return out;
}

RowRanges training_ranges(const io::ActivationStore& store, double fraction) {
  auto counts = heldout_counts(store, fraction);
  RowRanges out;
  for (size_t s = 0; s < counts.size(); ++s) {
    auto [b, e] = shard_span(store, s);
    out.emplace_back(b, e - counts[s]);
  }
  return out;
}

EvalResult evaluate_sae(const Sae& sae, const io::ActivationStore& store, const RowRanges& rows, int64_t batch_size,
                        double dense_threshold) {
  torch::NoGradGuard no_grad;
  if (store.dim() != sae.d_in())
    fail("cannot evaluate an SAE with d_in {} on activations of width {}", sae.d_in(), store.dim());
  ReconstructionStats recon;
  SparsityStats sparsity(dense_threshold);
  for (const auto& [begin, end] : rows) {
    for (int64_t b = begin; b < end; b += batch_size) {
      auto x = store.read_rows(b, std::min(end, b + batch_size));
      auto f = sae.encode(x);
      recon.add(x, sae.decode(f, x));
      sparsity.add(f);
    }
  }
  EvalResult r;
  r.tokens = recon.tokens();
  if (r.tokens == 0) fail("evaluation set is empty");
  r.mse = recon.mse();
  r.fvu = recon.fvu();
  r.explained_variance = recon.explained_variance();
  r.l0 = sparsity.l0();
  r.sparsity = sparsity.sparsity();
  r.dead_fraction = sparsity.dead_fraction();
  r.dense_fraction = sparsity.dense_fraction();
  return r;
}

namespace {


// Weiszfeld's algorithm in fp64: the point minimising the summed Euclidean distance to the rows.
torch::Tensor geometric_median(const torch::Tensor& points, int max_iterations = 100, double tolerance = 1e-7) {
  auto x = points.to(torch::kFloat64);
  auto median = x.mean(0);
  for (int it = 0; it < max_iterations; ++it) {
    auto weights = 1.0 / (x - median).norm(2, {1}).clamp_min(1e-12);
    auto next = (weights.unsqueeze(1) * x).sum(0) / weights.sum();
    double shift = (next - median).norm().item<double>(), scale = next.norm().item<double>() + 1e-12;
    median = next;
    if (shift / scale < tolerance) break;
  }
  return median.to(torch::kFloat32);
}

// Evenly spaced rows over the training ranges (deterministic, no RNG).
torch::Tensor sample_rows(const io::ActivationStore& store, const RowRanges& train, int64_t want) {
  int64_t total = 0;
  for (const auto& [b, e] : train) total += e - b;
  want = std::min(want, total);
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < want; ++i) {
    int64_t pos = int64_t((__int128)i * total / want);
    for (const auto& [b, e] : train) {
      if (pos < e - b) {
        ids.push_back(b + pos);
        break;
      }
      pos -= e - b;
    }
  }
  return store.read_rows(torch::tensor(ids, torch::kInt64));
}

constexpr const char* kCurveHeader = "step,epoch,tokens,loss,mse,l1,l0,sparsity,lr";
constexpr int64_t kCurveColumns = 9;

// Everything a resumed run needs to continue bit-identically.
struct TrainingState {
  int64_t step = 0, epoch = 0, batch_in_epoch = 0;  // data cursor: batches taken in `epoch`
  double scaling_factor = 1.0;
  // Running sums of the current epoch (for its log line).
  double epoch_loss = 0, epoch_active = 0;
  int64_t epoch_batches = 0, epoch_tokens = 0;
  std::vector<double> heldout_history;  // held-out loss after each finished epoch
  std::vector<double> train_history;    // mean training loss of each finished epoch
  int64_t resamples = 0;
  std::vector<double> curve;            // flattened rows of kCurveColumns
  torch::Tensor tokens_since_fired;     // I64 [d_sae]

  nlohmann::json to_json() const {
    return {{"step", step},
            {"epoch", epoch},
            {"batch_in_epoch", batch_in_epoch},
            {"scaling_factor", scaling_factor},
            {"epoch_loss", epoch_loss},
            {"epoch_active", epoch_active},
            {"epoch_batches", epoch_batches},
            {"epoch_tokens", epoch_tokens},
            {"heldout_history", heldout_history},
            {"train_history", train_history},
            {"resamples", resamples}};
  }
  void from_json(const nlohmann::json& j) {
    step = j.at("step");
    epoch = j.at("epoch");
    batch_in_epoch = j.at("batch_in_epoch");
    scaling_factor = j.at("scaling_factor");
    epoch_loss = j.at("epoch_loss");
    epoch_active = j.at("epoch_active");
    epoch_batches = j.at("epoch_batches");
    epoch_tokens = j.at("epoch_tokens");
    heldout_history = j.at("heldout_history").get<std::vector<double>>();
    train_history = j.at("train_history").get<std::vector<double>>();
    resamples = j.at("resamples");
  }
};

// The options that change the trajectory: a checkpoint only resumes a run with the same ones.
nlohmann::json trajectory_fingerprint(const TrainOptions& o, uint64_t seed, const io::ActivationStore& store,
                                      runtime::KernelPath path) {
  nlohmann::json files = nlohmann::json::array();
  for (const auto& f : store.files()) files.push_back(f.filename().string());
  return {{"options", o.to_json()}, {"seed", seed}, {"rows", store.rows()}, {"dim", store.dim()}, {"files", files},
          {"threads", at::get_num_threads()}, {"kernels", runtime::to_string(path)}};
}

void save_checkpoint(const fs::path& file, const Parameters& p, const Adam& adam, const TrainingState& s,
                     const nlohmann::json& fingerprint) {
  std::map<std::string, torch::Tensor> tensors{
      {"W_enc_t", p.W_enc_t},       {"b_enc", p.b_enc},           {"W_dec", p.W_dec},           {"b_dec", p.b_dec},
      {"adam_m.W_enc_t", adam.m.W_enc_t}, {"adam_m.b_enc", adam.m.b_enc}, {"adam_m.W_dec", adam.m.W_dec},
      {"adam_m.b_dec", adam.m.b_dec}, {"adam_v.W_enc_t", adam.v.W_enc_t}, {"adam_v.b_enc", adam.v.b_enc},
      {"adam_v.W_dec", adam.v.W_dec}, {"adam_v.b_dec", adam.v.b_dec},
      {"tokens_since_fired", s.tokens_since_fired},
      {"curve", torch::tensor(s.curve, torch::kFloat64).reshape({-1, kCurveColumns})}};
  for (auto& [name, tensor] : tensors) tensor = tensor.to(torch::kCPU);  // the file is written from host memory
  nlohmann::json state = s.to_json();
  state["adam_step"] = adam.t;
  io::save_safetensors(file, tensors,
                       {{"format", "strata-sae-checkpoint"}, {"state", state.dump()}, {"fingerprint", fingerprint.dump()}});
}

void load_checkpoint(const fs::path& file, Parameters& p, Adam& adam, TrainingState& s, const nlohmann::json& fingerprint,
                     torch::Device device) {
  io::SafetensorsFile f(file);
  auto meta = f.metadata();
  if (!meta.count("state") || !meta.count("fingerprint"))
    fail("{} is not an SAE training checkpoint; delete it to start over", file.string());
  auto saved = nlohmann::json::parse(meta.at("fingerprint"));
  if (saved != fingerprint)
    fail("checkpoint {} belongs to a different run (options, seed, data or thread count differ: saved {}, now {}); "
         "delete it or restore the original settings",
         file.string(), saved.dump(), fingerprint.dump());
  auto state = nlohmann::json::parse(meta.at("state"));
  s.from_json(state);
  adam.t = state.at("adam_step");
  auto load = [&](const char* name) { return f.load(name).contiguous(); };
  p = to_device({load("W_enc_t"), load("b_enc"), load("W_dec"), load("b_dec")}, device);
  adam.m = to_device({load("adam_m.W_enc_t"), load("adam_m.b_enc"), load("adam_m.W_dec"), load("adam_m.b_dec")}, device);
  adam.v = to_device({load("adam_v.W_enc_t"), load("adam_v.b_enc"), load("adam_v.W_dec"), load("adam_v.b_dec")}, device);
  s.tokens_since_fired = load("tokens_since_fired");  // host: bookkeeping, not arithmetic
  auto curve = load("curve").to(torch::kFloat64).contiguous();
  s.curve.assign(curve.data_ptr<double>(), curve.data_ptr<double>() + curve.numel());
}

void write_curve(const fs::path& file, const std::vector<double>& curve) {
  std::string text = std::string(kCurveHeader) + "\n";
  for (size_t r = 0; r + kCurveColumns <= curve.size(); r += kCurveColumns) {
    const double* row = &curve[r];
    text += fmt::format("{},{},{},{:.9g},{:.9g},{:.9g},{:.6g},{:.6g},{:.6g}\n", int64_t(row[0]), int64_t(row[1]),
                        int64_t(row[2]), row[3], row[4], row[5], row[6], row[7], row[8]);
  }
  atomic_write_text(file, text);
}

// Anthropic-style resampling of dead ReLU latents: each gets the direction of an input the SAE
// reconstructs badly (drawn with probability proportional to the squared loss), a fresh encoder row
// of 0.2x the mean alive encoder norm, b_enc = 0 and reset Adam moments.
int64_t resample_dead(Parameters& p, Adam& adam, const torch::Tensor& dead, const torch::Tensor& x_scaled,
                      uint64_t seed) {
  torch::NoGradGuard no_grad;
  const int64_t n_dead = dead.numel();
  if (n_dead == 0) return 0;
  const torch::Device device = p.W_dec.device();
  const torch::Tensor dead_ids = dead.to(device);
  auto pre = torch::addmm(p.b_enc, x_scaled - p.b_dec, p.W_enc_t.t());
  auto x_hat = torch::addmm(p.b_dec, torch::relu(pre), p.W_dec);
  auto loss = (x_hat - x_scaled).square().sum(1).to(torch::kFloat64);
  auto weights = loss.square();
  if (!(weights.sum().item<double>() > 0)) return 0;
  auto gen = at::detail::createCPUGenerator(seed);
  // Drawn on the host from the host generator: the same picks whatever the device.
  auto picks = torch::multinomial(weights.to(torch::kCPU), n_dead, /*replacement=*/true, gen).to(device);
  auto directions = x_scaled.index_select(0, picks) - p.b_dec;
  directions = directions / directions.norm(2, {1}, true).clamp_min(1e-12);
  auto alive = torch::ones({p.W_dec.size(0)}, torch::TensorOptions().dtype(torch::kBool).device(device));
  alive.index_put_({dead_ids}, false);
  auto enc_norms = p.W_enc_t.norm(2, {1});
  auto dec_norms = p.W_dec.norm(2, {1});
  bool any_alive = alive.any().item<bool>();
  double enc_norm = any_alive ? enc_norms.masked_select(alive).mean().item<double>() : 1.0;
  double dec_norm = any_alive ? dec_norms.masked_select(alive).mean().item<double>() : 1.0;
  p.W_dec.index_copy_(0, dead_ids, directions * dec_norm);
  p.W_enc_t.index_copy_(0, dead_ids, directions * (0.2 * enc_norm));
  p.b_enc.index_fill_(0, dead_ids, 0.0f);
  for (Parameters* st : {&adam.m, &adam.v}) {
    st->W_dec.index_fill_(0, dead_ids, 0.0f);
    st->W_enc_t.index_fill_(0, dead_ids, 0.0f);
    st->b_enc.index_fill_(0, dead_ids, 0.0f);
  }
  return n_dead;
}

torch::Tensor dead_latents(const TrainingState& s, int64_t window) {
  return (s.tokens_since_fired >= window).nonzero().squeeze(1).contiguous();
}

std::string describe_nonfinite(const torch::Tensor& batch, const TrainingState& s) {
  if (!torch::isfinite(batch).all().item<bool>())
    return fmt::format("the input activations contain NaN/Inf (batch at step {}, epoch {}); fix the capture or "
                       "exclude those rows",
                       s.step + 1, s.epoch + 1);
  return fmt::format("the loss became NaN/Inf at step {} (epoch {}): training diverged; lower the learning rate",
                     s.step + 1, s.epoch + 1);
}

}  // namespace

TrainResult train_sae(const io::ActivationStore& store, const TrainOptions& options_in, uint64_t seed,
                      const fs::path& out_dir, const nlohmann::json& provenance) {
  torch::NoGradGuard no_grad;
  options::validate(options_in, "sae");  // every rule of the [sae] table (TrainOptions::fields())
  TrainOptions o = options_in;
  if (o.architecture == "relu") o.architecture = "standard";
  const torch::Device device = o.device;
  const runtime::KernelPath path = runtime::kernel_path(device);
  auto arch = make_architecture(o, path);
  const std::string name = o.name.empty() ? out_dir.filename().string() : o.name;
  const int64_t d_in = store.dim(), d_sae = o.expansion * d_in;

  TrainResult result;
  result.out_dir = out_dir;
  fs::create_directories(out_dir);
  const fs::path checkpoint_file = out_dir / "checkpoint.safetensors";

  RowRanges train = training_ranges(store, o.heldout_fraction), heldout = heldout_ranges(store, o.heldout_fraction);
  int64_t train_rows = 0;
  for (const auto& [b, e] : train) train_rows += e - b;
  if (train_rows == 0) fail("{}: no training rows after holding out {}", name, o.heldout_fraction);
  if (o.batch_size > train_rows) {
    log::warn("{}: batch size {} exceeds the {} training rows; using {}", name, o.batch_size, train_rows, train_rows);
    o.batch_size = train_rows;
  }
  BatchStream stream(store, train, o.batch_size, o.shuffle_buffer_rows, seed);
  const int64_t B = o.batch_size, steps_per_epoch = stream.batches_per_epoch();
  const int64_t max_steps = steps_per_epoch * o.epochs;
  const int64_t lr_warmup = std::min(o.lr_warmup_steps, max_steps / 10);
  const int64_t l1_warmup = std::min(o.l1_warmup_steps, max_steps / 10);
  const nlohmann::json fingerprint = trajectory_fingerprint(o, seed, store, path);

  Parameters p;
  Adam adam;
  TrainingState s;
  auto fail_result = [&](const std::string& why) {
    result.ok = false;
    result.diverged = true;
    result.error = fmt::format("SAE {}: {}", name, why);
    result.metrics = {{"converged", false}, {"diverged", true}, {"error", result.error},
                      {"epochs_run", s.epoch}, {"scaling_factor", s.scaling_factor}};
    nlohmann::json cfg = provenance;
    cfg["architecture"] = arch->name();
    cfg["d_in"] = d_in;
    cfg["d_sae"] = d_sae;
    if (arch->name() == "topk") cfg["k"] = o.k;
    cfg["seed"] = seed;
    cfg["metrics"] = result.metrics;
    cfg["training"] = o.to_json();
    std::error_code ec;
    fs::remove(out_dir / "sae_weights.safetensors", ec);
    atomic_write_text(out_dir / "cfg.json", cfg.dump(2));
    write_curve(out_dir / "training_curve.csv", s.curve);
    log::warn("{}", result.error);
    return result;
  };

  bool resumed = false;
  if (o.resume && fs::exists(checkpoint_file)) {
    load_checkpoint(checkpoint_file, p, adam, s, fingerprint, device);
    adam.path = path;
    resumed = true;
    log::info("{}: resuming from step {} (epoch {}, batch {})", name, s.step, s.epoch + 1, s.batch_in_epoch);
  } else {
    auto sample = sample_rows(store, train, o.b_dec_init_rows);
    double mean_sq = sample.to(torch::kFloat64).square().sum(1).mean().item<double>();
    if (!std::isfinite(mean_sq))
      return fail_result("the input activations contain NaN/Inf (found while estimating the scaling factor); fix "
                         "the capture or exclude those rows");
    if (mean_sq <= 0) fail("{}: the activations are all zero; nothing to train on", name);
    s.scaling_factor = std::sqrt(double(d_in) / mean_sq);
    auto scaled = sample * float(s.scaling_factor);
    if (o.b_dec_init == "geometric_median")
      p.b_dec = geometric_median(scaled);
    else if (o.b_dec_init == "mean")
      p.b_dec = scaled.mean(0);
    else
      p.b_dec = torch::zeros({d_in});
    arch->init_parameters(p, d_in, d_sae, seed);
    p = to_device(p, device);
    adam.init(p, path);
    s.tokens_since_fired = torch::zeros({d_sae}, torch::kInt64);
  }
  Parameters grads{torch::empty_like(p.W_enc_t), torch::empty_like(p.b_enc), torch::empty_like(p.W_dec),
                   torch::empty_like(p.b_dec)};
  if (!resumed)
    log::info("{}: training {} SAE d_in={} d_sae={} on {} rows ({} held out), {} steps/epoch, up to {} epochs", name,
              arch->name(), d_in, d_sae, train_rows, store.rows() - train_rows, steps_per_epoch, o.epochs);

  const float scale = float(s.scaling_factor);
  bool converged = false, finished = false;
  torch::Tensor batch;
  auto heldout_loss = [&](double l1c) {
    double total = 0;
    int64_t rows = 0;
    for (const auto& [begin, end] : heldout)
      for (int64_t b = begin; b < end; b += B) {
        auto x = store.read_rows(b, std::min(end, b + B)).to(device).mul_(scale);
        total += arch->step(p, x, l1c, torch::Tensor(), nullptr).loss * double(x.size(0));
        rows += x.size(0);
      }
    return total / double(std::max<int64_t>(1, rows));
  };

  while (!finished) {
    stream.begin_epoch(s.epoch, s.batch_in_epoch);
    while (stream.next(batch)) {
      batch = batch.to(device).mul_(scale);
      const double lr = o.lr * std::min(1.0, double(s.step + 1) / double(std::max<int64_t>(1, lr_warmup)));
      const double l1c = o.l1 * std::min(1.0, double(s.step + 1) / double(std::max<int64_t>(1, l1_warmup)));
      auto dead = dead_latents(s, o.dead_window_tokens);
      StepResult r = arch->step(p, batch, l1c, dead, &grads);
      if (!std::isfinite(r.loss)) return fail_result(describe_nonfinite(batch, s));
      adam.update(p, grads, arch->decoder_row_decay(), lr, o.adam_beta1, o.adam_beta2, o.adam_eps);
      arch->after_update(p);
      s.tokens_since_fired.add_(B).masked_fill_(r.fired, 0);
      ++s.step;
      ++s.batch_in_epoch;
      s.epoch_loss += r.loss;
      s.epoch_active += double(r.active);
      s.epoch_batches += 1;
      s.epoch_tokens += B;
      const double l0 = double(r.active) / double(B);
      s.curve.insert(s.curve.end(), {double(s.step), double(s.epoch + 1), double(s.step * B), r.loss, r.mse, r.l1, l0,
                                     l0 / double(d_sae), lr});
      if (arch->name() == "standard" && o.resample_interval_steps > 0 && s.step % o.resample_interval_steps == 0 &&
          s.step <= max_steps / 2) {
        auto to_resample = dead_latents(s, o.dead_window_tokens);
        int64_t n = resample_dead(p, adam, to_resample, batch, derive(seed, "sae/resample", s.step));
        if (n > 0) {
          s.tokens_since_fired.index_fill_(0, to_resample, 0);
          s.resamples += n;
          log::info("{}: resampled {} dead latents at step {}", name, n, s.step);
        }
      }
      if (o.stop_after_steps > 0 && s.step >= o.stop_after_steps) {
        save_checkpoint(checkpoint_file, p, adam, s, fingerprint);
        write_curve(out_dir / "training_curve.csv", s.curve);
        result.interrupted = true;
        result.error = fmt::format("SAE {}: stopped after {} steps (stop_after_steps); rerun to resume", name, s.step);
        return result;
      }
      if (o.checkpoint_interval_steps > 0 && s.step % o.checkpoint_interval_steps == 0)
        save_checkpoint(checkpoint_file, p, adam, s, fingerprint);
    }
    // Epoch end: held-out loss with the coefficient in force now, the log line, convergence.
    const double l1_now = o.l1 * std::min(1.0, double(s.step) / double(std::max<int64_t>(1, l1_warmup)));
    const double held = heldout_loss(l1_now);
    if (!std::isfinite(held)) return fail_result(fmt::format("held-out loss is NaN/Inf after epoch {}", s.epoch + 1));
    const double train_loss = s.epoch_loss / double(std::max<int64_t>(1, s.epoch_batches));
    const double sparsity = s.epoch_active / double(std::max<int64_t>(1, s.epoch_tokens)) / double(d_sae);
    log::info("  epoch {}/{}: loss={:.2f}, sparsity={:.1f}%", s.epoch + 1, o.epochs, train_loss, 100.0 * sparsity);
    if (!s.heldout_history.empty()) {
      double prev = s.heldout_history.back();
      double change = std::abs(prev - held) / std::max(std::abs(prev), 1e-12);
      converged = s.epoch + 1 >= o.min_epochs && change < o.convergence_tolerance;
      log::info("  epoch {}/{}: held-out loss={:.4g} (change {:.2f}%{})", s.epoch + 1, o.epochs, held, 100.0 * change,
                converged ? ", converged" : "");
    } else {
      log::info("  epoch {}/{}: held-out loss={:.4g}", s.epoch + 1, o.epochs, held);
    }
    s.heldout_history.push_back(held);
    s.train_history.push_back(train_loss);
    s.epoch += 1;
    s.batch_in_epoch = 0;
    s.epoch_loss = s.epoch_active = 0;
    s.epoch_batches = s.epoch_tokens = 0;
    finished = converged || s.epoch >= o.epochs;
    if (!finished) save_checkpoint(checkpoint_file, p, adam, s, fingerprint);
  }

  // Fold the input scaling into the weights so that the saved SAE acts on raw activations.
  Sae sae;
  sae.architecture = arch->name();
  sae.k = sae.architecture == "topk" ? o.k : 0;
  sae.W_enc = (p.W_enc_t * scale).t().contiguous().to(torch::kCPU);
  sae.W_dec = (p.W_dec / scale).contiguous().to(torch::kCPU);
  sae.b_enc = p.b_enc.clone().to(torch::kCPU);
  sae.b_dec = (p.b_dec / scale).contiguous().to(torch::kCPU);
  EvalResult eval = evaluate_sae(sae, store, heldout, B, o.dense_threshold);
  nlohmann::json metrics = eval.to_json();
  metrics["converged"] = converged;
  metrics["diverged"] = false;
  metrics["epochs_run"] = s.epoch;
  metrics["steps"] = s.step;
  metrics["tokens_trained"] = s.step * B;
  metrics["final_train_loss"] = s.train_history.back();
  metrics["heldout_loss"] = s.heldout_history.back();
  metrics["scaling_factor"] = s.scaling_factor;
  metrics["resampled_latents"] = s.resamples;
  for (const char* key : {"model", "layer", "n_layers", "relative_depth", "hook_name"})
    if (provenance.contains(key)) metrics[key] = provenance[key];
  metrics["seed"] = seed;

  nlohmann::json cfg = provenance;
  cfg["seed"] = seed;
  cfg["dtype"] = "float32";
  cfg["device"] = device.str();
  cfg["apply_b_dec_to_input"] = true;
  cfg["normalize_activations"] = "none";  // the scaling factor is folded into the weights
  if (sae.architecture == "topk") cfg["activation_fn_kwargs"] = {{"k", o.k}};
  cfg["metrics"] = metrics;
  nlohmann::json training = o.to_json();
  training["lr_warmup_steps_effective"] = lr_warmup;
  training["l1_warmup_steps_effective"] = l1_warmup;
  training["batch_size"] = B;
  training["steps_per_epoch"] = steps_per_epoch;
  training["train_rows"] = train_rows;
  training["heldout_rows"] = store.rows() - train_rows;
  training["heldout_history"] = s.heldout_history;
  training["train_history"] = s.train_history;
  training["threads"] = at::get_num_threads();
  training["kernels"] = runtime::to_string(path);
  cfg["training"] = training;
  sae.cfg = cfg;
  sae.save(out_dir);
  write_curve(out_dir / "training_curve.csv", s.curve);
  if (!o.keep_checkpoint) {
    std::error_code ec;
    fs::remove(checkpoint_file, ec);
  }
  log::info("{}: done in {} epochs: FVU={:.4f}, L0={:.1f}, dead={:.1f}%{}", name, s.epoch, eval.fvu, eval.l0,
            100.0 * eval.dead_fraction, converged ? "" : " (not converged)");
  result.ok = true;
  result.metrics = metrics;
  result.sae = std::move(sae);
  return result;
}

StepTiming time_training_step(const TrainOptions& options, int64_t d_in, int64_t batch, int repeats) {
  torch::NoGradGuard no_grad;
  const runtime::KernelPath path = runtime::kernel_path(options.device);
  auto arch = make_architecture(options, path);
  const int64_t d_sae = options.expansion * d_in;
  auto gen = at::detail::createCPUGenerator(0);
  Parameters p;
  p.b_dec = torch::zeros({d_in});
  arch->init_parameters(p, d_in, d_sae, 0);
  p = to_device(p, options.device);
  Adam adam;
  adam.init(p, path);
  Parameters grads{torch::empty_like(p.W_enc_t), torch::empty_like(p.b_enc), torch::empty_like(p.W_dec),
                   torch::empty_like(p.b_dec)};
  auto x = torch::randn({batch, d_in}, gen).to(options.device);
  torch::Tensor no_dead = torch::empty({0}, torch::kInt32);
  StepTiming t;
  t.seconds = bench::median_seconds(
      [&] {
        StepResult r = arch->step(p, x, options.l1, no_dead, &grads);
        adam.update(p, grads, arch->decoder_row_decay(), options.lr, options.adam_beta1, options.adam_beta2,
                    options.adam_eps);
        arch->after_update(p);
        if (!options.device.is_cpu()) (void)p.b_dec[0].item<float>();  // wait for the queued device work
        if (!std::isfinite(r.loss)) fail("benchmark step diverged");
      },
      repeats);
  const double gemm = 2.0 * double(batch) * double(d_in) * double(d_sae);
  // The portable TopK step runs the same 5 dense GEMMs as ReLU (codes dense, zero off the support).
  const bool sparse = arch->name() == "topk" && path == runtime::KernelPath::native;
  t.flop = sparse ? gemm + 4 * 2.0 * double(batch) * double(options.k) * double(d_in) : 5 * gemm;
  return t;
}

double time_autograd_reference_step(int64_t d_in, int64_t d_sae, int64_t batch, int repeats) {
  auto gen = at::detail::createCPUGenerator(0);
  auto W_enc = (torch::randn({d_in, d_sae}, gen) * 0.01).requires_grad_();
  auto W_dec = (torch::randn({d_sae, d_in}, gen) * 0.01).requires_grad_();
  auto b_enc = torch::zeros({d_sae}).requires_grad_();
  auto b_dec = torch::zeros({d_in}).requires_grad_();
  torch::optim::Adam optimizer({W_enc, W_dec, b_enc, b_dec}, torch::optim::AdamOptions(1e-4));
  auto x = torch::randn({batch, d_in}, gen);
  return bench::median_seconds(
      [&] {
        optimizer.zero_grad();
        auto f = torch::relu(torch::addmm(b_enc, x - b_dec, W_enc));
        auto x_hat = torch::addmm(b_dec, f, W_dec);
        auto mse = (x_hat - x).square().sum(-1).mean();
        auto l1 = (f * W_dec.norm(2, {1})).sum(-1).mean();
        auto loss = mse + 1e-4 * l1;
        loss.backward();
        optimizer.step();
      },
      repeats);
}

}  // namespace strata::sae
