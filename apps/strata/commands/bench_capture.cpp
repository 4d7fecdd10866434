// `strata bench capture`: capture throughput on a random-weight model with gpt2-medium's real config
// (24 layers, hidden 1024, 16 heads, vocab 50257), against a full forward with LM head and against
// the fp32 GEMM ceiling of this machine.
#include <torch/torch.h>

#include "command.hpp"
#include "core/bench.hpp"
#include "core/error.hpp"
#include "core/runtime.hpp"
#include "io/activation_store.hpp"
#include "models/spec.hpp"
#include "models/transformer.hpp"

namespace {

struct BenchArgs {
  int64_t batch = 8, seq_len = 128, repeats = 3;
  std::vector<int> layers{4, 8, 12, 16, 20};
  std::string device = "cpu", dtype = "f32";
};

// gpt2-medium's config.json as published on the hub (the fields parse_config reads).
nlohmann::json gpt2_medium_config() {
  return {{"model_type", "gpt2"},          {"n_embd", 1024},          {"n_layer", 24},
          {"n_head", 16},                  {"n_inner", nullptr},      {"n_positions", 1024},
          {"n_ctx", 1024},                 {"vocab_size", 50257},     {"activation_function", "gelu_new"},
          {"layer_norm_epsilon", 1e-5},    {"initializer_range", 0.02}, {"scale_attn_weights", true},
          {"scale_attn_by_inverse_layer_idx", false}, {"reorder_and_upcast_attn", false},
          {"bos_token_id", 50256},         {"eos_token_id", 50256}};
}

// Multiply-adds x 2 per token through `blocks` blocks at sequence length T: q/k/v/out projections (4 H^2),
// MLP (2 H I), attention scores and context (2 T H, the full T x T product as computed), plus the LM
// head (H V) when asked.
double flops_per_token(const strata::models::ModelSpec& s, int blocks, int64_t T, bool lm_head) {
  const double H = double(s.hidden_size), I = double(s.intermediate_size), V = double(s.vocab_size);
  double per_block = 2.0 * (4 * H * H + 2 * H * I + 2 * double(T) * H);
  return blocks * per_block + (lm_head ? 2.0 * H * V : 0.0);
}

int run(const BenchArgs& a) {
  using namespace strata;
  const models::ModelSpec spec = models::parse_config(gpt2_medium_config(), "gpt2-medium config (built in)");
  for (int layer : a.layers)
    if (layer < 1 || layer > spec.n_layers) fail("bench capture: layer {} outside 1..{}", layer, spec.n_layers);
  const torch::Device device = runtime::parse_device(a.device);
  const torch::ScalarType dtype = models::parse_compute_dtype(a.dtype, "bench capture --dtype");
  auto params = models::Transformer::init_parameters(spec, 0);
  for (auto& [name, tensor] : params) tensor = tensor.to(device, dtype);
  const models::Transformer model = models::Transformer::from_parameters(spec, std::move(params));
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  const torch::Tensor ids = torch::randint(spec.vocab_size, {a.batch, a.seq_len}, torch::kInt64).to(device);
  const torch::Tensor mask = torch::ones_like(ids);
  const int64_t tokens = a.batch * a.seq_len;
  const int deepest = *std::max_element(a.layers.begin(), a.layers.end());

  models::ForwardRequest capture_request;
  for (int layer : a.layers) capture_request.blocks.push_back(layer - 1);
  models::ForwardRequest full_request;
  full_request.logits = true;

  // The capture step as capture_model runs it: forward to the deepest layer, rows of every real
  // position copied out per layer, appended to a store (real files in a temporary directory).
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / fmt::format("strata-bench-capture-{}", getpid());
  std::vector<std::unique_ptr<io::ActivationStoreWriter>> writers;
  for (int layer : a.layers)
    writers.push_back(std::make_unique<io::ActivationStoreWriter>(dir, io::store_base_name("bench", layer),
                                                                  spec.hidden_size, torch::kFloat32, int64_t(1) << 40));
  const torch::Tensor positions = torch::arange(tokens, torch::kInt64);
  const io::RowIndex index{positions, positions, positions, positions, positions};
  const int repeats = static_cast<int>(a.repeats);
  const double forward_only = bench::median_seconds(
      [&] {
        model.forward(ids, mask, capture_request);
        runtime::synchronize(device);
      },
      repeats);
  const double with_store = bench::median_seconds(
      [&] {
        auto out = model.forward(ids, mask, capture_request);
        for (size_t i = 0; i < a.layers.size(); ++i)  // rows come to the host in f32, as capture_model does
          writers[i]->append(
              out.resid_post.at(a.layers[i] - 1).reshape({tokens, spec.hidden_size}).to(torch::kCPU, torch::kFloat32),
              index);
        runtime::release_free_memory();  // as capture does after every batch
      },
      repeats);
  writers.clear();  // unfinished: the temporary shards are removed
  std::filesystem::remove_all(dir);
  const double full = bench::median_seconds(
      [&] {
        model.forward(ids, mask, full_request);
        runtime::synchronize(device);
      },
      repeats);
  const double gemm = bench::gemm_gflops(4096, 1024, 8192, 5, device, dtype);

  const double capture_flops = flops_per_token(spec, deepest, a.seq_len, false) * double(tokens);
  const double full_flops = flops_per_token(spec, static_cast<int>(spec.n_layers), a.seq_len, true) * double(tokens);
  auto line = [&](const char* what, double seconds, double flops) {
    const double gflops = flops / seconds / 1e9;
    fmt::print("{:<44} {:8.1f} tok/s  {:7.1f} GFLOP/s  {:5.1f}% of GEMM\n", what, double(tokens) / seconds, gflops,
               100.0 * gflops / gemm);
  };
  const auto blas = runtime::blas_info();
  fmt::print("gpt2-medium config, random weights, {} on {} ({} attention), batch {}x{}, layers {} ({} threads, BLAS core {})\n",
             a.dtype, device.str(), runtime::to_string(runtime::kernel_path(device)), a.batch, a.seq_len,
             fmt::join(a.layers, ","), runtime::threads(), blas.core);
  fmt::print("GEMM ceiling ({}) [4096x1024]@[1024x8192]: {:.1f} GFLOP/s; GEMM-bound capture limit {:.1f} tok/s\n", a.dtype, gemm,
             gemm * 1e9 / flops_per_token(spec, deepest, a.seq_len, false));
  line(fmt::format("capture forward (blocks 1..{})", deepest).c_str(), forward_only, capture_flops);
  line("capture step (forward + store append)", with_store, capture_flops);
  line("full forward, 24 blocks + LM head", full, full_flops);
  fmt::print("capture speed-up over the full forward: {:.2f}x\n", full / with_store);
  return 0;
}

void setup(strata::cli::Commands& commands) {
  auto* bench = commands.group("bench", "Benchmarks that print figures (GFLOP/s, tokens/s)");
  auto* cmd = bench->add_subcommand("capture", "Capture tok/s on gpt2-medium's config vs a full forward and GEMM");
  auto args = std::make_shared<BenchArgs>();
  cmd->add_option("--batch", args->batch, "sequences per batch")->capture_default_str();
  cmd->add_option("--seq-len", args->seq_len, "tokens per sequence")->capture_default_str();
  cmd->add_option("--repeats", args->repeats, "timed repetitions (median)")->capture_default_str();
  cmd->add_option("--layers", args->layers, "layers captured")->delimiter(',');
  cmd->add_option("--device", args->device, "cpu or cuda[:N]")->capture_default_str();
  cmd->add_option("--dtype", args->dtype, "compute dtype: f32, bf16 or f16 (the store stays f32)")->capture_default_str();
  commands.bind(cmd, [args]() { return run(*args); });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
