// `strata bench forward`: tokens/s and GFLOP/s of the LibTorch forward pass on a random-weight model
// with gpt2-medium's real config (24 layers, 1024 hidden, 16 heads, vocab 50257), batch 8 x 128:
// (a) the full forward with the LM head, (b) a capture forward that stops after the deepest requested
// layer and skips the LM head. Figures are set against the fp32 GEMM ceiling of `strata bench gemm`.
#include <fmt/ranges.h>

#include "command.hpp"
#include "core/bench.hpp"
#include "core/error.hpp"
#include "core/runtime.hpp"
#include "models/transformer.hpp"

namespace {

struct Options {
  int64_t batch = 8, seq_len = 128;
  int repeats = 3;
  std::vector<int> layers{12};  // 1-based: layer L = residual stream after block L
  bool skip_full = false;
  std::string device = "cpu", dtype = "f32";
};

nlohmann::json gpt2_medium_config() {
  return {{"model_type", "gpt2"}, {"n_embd", 1024},      {"n_layer", 24},         {"n_head", 16},
          {"vocab_size", 50257},  {"n_positions", 1024}, {"activation_function", "gelu_new"}};
}

// Multiply-adds x 2 of one forward over `tokens` tokens in batches of seq_len through `blocks` blocks.
double forward_flops(const strata::models::ModelSpec& s, int64_t tokens, int64_t seq_len, int64_t blocks,
                     bool lm_head) {
  const double H = static_cast<double>(s.hidden_size), I = static_cast<double>(s.intermediate_size);
  const double per_token_block = 2.0 * (3 * H * H + H * H + 2 * H * I)  // qkv, out, MLP
                                 + 2.0 * 2.0 * static_cast<double>(seq_len) * H;  // q k^T and p v
  double flops = static_cast<double>(tokens) * per_token_block * static_cast<double>(blocks);
  if (lm_head) flops += 2.0 * static_cast<double>(tokens) * H * static_cast<double>(s.vocab_size);
  return flops;
}

int run(const Options& o) {
  torch::NoGradGuard no_grad;
  auto spec = strata::models::parse_config(gpt2_medium_config(), "gpt2-medium config");
  const torch::Device device = strata::runtime::parse_device(o.device);
  const torch::ScalarType dtype = strata::models::parse_compute_dtype(o.dtype, "bench forward --dtype");
  auto params = strata::models::Transformer::init_parameters(spec, 0);
  for (auto& [name, tensor] : params) tensor = tensor.to(device, dtype);
  auto model = strata::models::Transformer::from_parameters(spec, std::move(params));
  auto generator = at::detail::createCPUGenerator(1);
  torch::Tensor ids = torch::randint(spec.vocab_size, {o.batch, o.seq_len}, generator, torch::kInt64).to(device);
  torch::Tensor mask = torch::ones({o.batch, o.seq_len}, torch::TensorOptions().dtype(torch::kInt64).device(device));
  const int64_t tokens = o.batch * o.seq_len;

  const double ceiling = strata::bench::gemm_gflops(4096, 1024, 8192, 5, device, dtype);
  const double ceiling_model_shape =
      strata::bench::gemm_gflops(tokens, spec.hidden_size, spec.intermediate_size, 5, device, dtype);
  auto blas = strata::runtime::blas_info();
  fmt::print("gpt2-medium shape (24 x 1024, 16 heads, vocab 50257), random weights, {} on {}, batch {} x {}, {} "
             "threads, BLAS core {}\n",
             o.dtype, device.str(), o.batch, o.seq_len, strata::runtime::threads(), blas.core);
  fmt::print("GEMM ceiling: {:.1f} GFLOP/s at [4096x1024]@[1024x8192] (strata bench gemm), {:.1f} GFLOP/s at "
             "[{}x{}]@[{}x{}]\n",
             ceiling, ceiling_model_shape, tokens, spec.hidden_size, spec.hidden_size, spec.intermediate_size);

  auto report = [&](const std::string& label, const strata::models::ForwardRequest& request, int64_t blocks,
                    bool lm_head) {
    const double seconds = strata::bench::median_seconds(
        [&] {
          model.forward(ids, mask, request);
          strata::runtime::synchronize(device);
        },
        o.repeats);
    const double flops = forward_flops(spec, tokens, o.seq_len, blocks, lm_head);
    const double gflops = flops / seconds / 1e9;
    fmt::print("{}: {:.1f} tok/s ({:.3f} s per batch), {:.1f} GFLOP/s = {:.0f}% of the GEMM ceiling "
               "(GEMM-bound limit {:.0f} tok/s)\n",
               label, static_cast<double>(tokens) / seconds, seconds, gflops, 100.0 * gflops / ceiling,
               ceiling * 1e9 / (flops / static_cast<double>(tokens)));
    return seconds;
  };

  double full_seconds = 0;
  if (!o.skip_full) {
    strata::models::ForwardRequest full;
    for (int i = 0; i < spec.n_layers; ++i) full.blocks.push_back(i);
    full.logits = true;
    full_seconds = report("(a) full forward, 24 blocks + LM head", full, spec.n_layers, true);
  }
  strata::models::ForwardRequest capture;
  int deepest = 0;
  for (int layer : o.layers) {
    if (layer < 1 || layer > spec.n_layers)
      strata::fail("--layers: layer {} does not exist (1..{}; layer L is the output of block L)", layer, spec.n_layers);
    capture.blocks.push_back(layer - 1);
    deepest = std::max(deepest, layer);
  }
  const double capture_seconds =
      report(fmt::format("(b) capture layers {{{}}}, stop after block {}, no LM head", fmt::join(o.layers, ","), deepest),
             capture, deepest, false);
  if (full_seconds > 0) fmt::print("capture / full cost: {:.2f}\n", capture_seconds / full_seconds);
  return 0;
}

void setup(strata::cli::Commands& commands) {
  auto options = std::make_shared<Options>();
  auto* bench = commands.group("bench", "Benchmarks that print figures (GFLOP/s, tokens/s)");
  auto* cmd = bench->add_subcommand("forward", "Forward-pass tokens/s on a random gpt2-medium-shaped model");
  cmd->add_option("--batch", options->batch, "sequences per batch")->capture_default_str();
  cmd->add_option("--seq-len", options->seq_len, "tokens per sequence")->capture_default_str();
  cmd->add_option("--repeats", options->repeats, "timed repetitions (median reported)")->capture_default_str();
  cmd->add_option("--layers", options->layers,
                  "layers to capture in (b), 1-based (layer L = output of block L), e.g. 4,8,12,16,20")
      ->delimiter(',')
      ->capture_default_str();
  cmd->add_flag("--skip-full", options->skip_full, "skip (a), the full forward with LM head");
  cmd->add_option("--device", options->device, "cpu or cuda[:N]")->capture_default_str();
  cmd->add_option("--dtype", options->dtype, "compute dtype: f32, bf16 or f16")->capture_default_str();
  commands.bind(cmd, [options] { return run(*options); });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
