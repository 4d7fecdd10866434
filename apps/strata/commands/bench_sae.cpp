// `strata bench sae`: tokens/s of one SAE training step per architecture, and the GFLOP/s it achieves
// against a plain GEMM of the encoder's shape measured in the same process.
#include "command.hpp"
#include "core/bench.hpp"
#include "core/runtime.hpp"
#include "sae/train.hpp"

namespace {

struct BenchSaeArgs {
  int64_t d_in = 1024, expansion = 8, batch = 4096, k = 32, repeats = 3;
  bool reference = true;
  std::string device = "cpu";
};

void setup(strata::cli::Commands& commands) {
  auto* bench = commands.group("bench", "Benchmarks that print figures (GFLOP/s, tokens/s)");
  auto* sae = bench->add_subcommand("sae", "one SAE training step (ReLU and TopK): tokens/s and GFLOP/s vs GEMM");
  auto args = std::make_shared<BenchSaeArgs>();
  sae->add_option("--d-in", args->d_in, "input width")->capture_default_str();
  sae->add_option("--expansion", args->expansion, "d_sae / d_in")->capture_default_str();
  sae->add_option("--batch", args->batch, "tokens per step")->capture_default_str();
  sae->add_option("--k", args->k, "TopK active latents")->capture_default_str();
  sae->add_option("--repeats", args->repeats, "timed steps per architecture (median)")->capture_default_str();
  sae->add_flag("!--no-reference", args->reference, "skip the LibTorch autograd reference step");
  sae->add_option("--device", args->device, "cpu or cuda[:N] (the kernel path follows it; STRATA_KERNELS overrides)")
      ->capture_default_str();
  commands.bind(sae, [args]() {
    const auto& a = *args;
    const int64_t d_sae = a.d_in * a.expansion;
    const int repeats = int(a.repeats);
    const torch::Device device = strata::runtime::parse_device(a.device);
    const char* kernels = strata::runtime::to_string(strata::runtime::kernel_path(device));
    const double gemm = strata::bench::gemm_gflops(a.batch, a.d_in, d_sae, repeats, device);
    auto blas = strata::runtime::blas_info();
    fmt::print("SAE training step: d_in {}, d_sae {}, batch {}, fp32, device {}, {} kernels, {} threads (BLAS core {})\n",
               a.d_in, d_sae, a.batch, device.str(), kernels, strata::runtime::threads(), blas.core);
    fmt::print("  plain GEMM [{}x{}]@[{}x{}]: {:.1f} GFLOP/s\n", a.batch, a.d_in, a.d_in, d_sae, gemm);
    for (const char* arch : {"standard", "topk"}) {
      strata::sae::TrainOptions o;
      o.architecture = arch;
      o.k = a.k;
      o.expansion = a.expansion;
      o.device = device;
      auto t = strata::sae::time_training_step(o, a.d_in, a.batch, repeats);
      double gflops = t.flop / t.seconds / 1e9;
      fmt::print("  {:<8} {:8.0f} tok/s  {:.3f} s/step  {:.1f} GFLOP/s = {:.0f}% of GEMM{}\n",
                 std::string(arch) == "standard" ? "relu" : "topk", double(a.batch) / t.seconds, t.seconds, gflops,
                 100.0 * gflops / gemm, std::string(arch) == "topk"
                     ? fmt::format(" (k={}, {} decoder)", a.k, std::string(kernels) == "native" ? "sparse" : "dense masked")
                     : "");
    }
    if (a.reference && device.is_cpu()) {
      double s = strata::sae::time_autograd_reference_step(a.d_in, d_sae, a.batch, repeats);
      fmt::print("  relu via LibTorch autograd + torch::optim::Adam (reference): {:.0f} tok/s  {:.3f} s/step\n",
                 double(a.batch) / s, s);
    }
    return 0;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
