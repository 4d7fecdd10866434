// `strata bench gemm`: the fp32 GEMM ceiling every other benchmark is measured against.
#include "command.hpp"
#include "core/bench.hpp"
#include "core/runtime.hpp"

namespace {

void setup(strata::cli::Commands& commands) {
  auto* bench = commands.group("bench", "Benchmarks that print figures (GFLOP/s, tokens/s)");
  auto* gemm = bench->add_subcommand("gemm", "fp32 GEMM GFLOP/s at [M x K] @ [K x N]");
  auto shape = std::make_shared<std::array<int64_t, 4>>(std::array<int64_t, 4>{4096, 1024, 8192, 10});
  gemm->add_option("--m", (*shape)[0], "rows of A")->capture_default_str();
  gemm->add_option("--k", (*shape)[1], "inner dimension")->capture_default_str();
  gemm->add_option("--n", (*shape)[2], "columns of B")->capture_default_str();
  gemm->add_option("--repeats", (*shape)[3], "timed repetitions")->capture_default_str();
  commands.bind(gemm, [shape]() {
    auto [m, k, n, repeats] = *shape;
    double gflops = strata::bench::gemm_gflops(m, k, n, static_cast<int>(repeats));
    auto blas = strata::runtime::blas_info();
    fmt::print("gemm fp32 [{}x{}]@[{}x{}]: {:.1f} GFLOP/s ({} threads, BLAS {} core {})\n", m, k, k, n, gflops,
               strata::runtime::threads(), blas.library, blas.core);
    return 0;
  });
}

STRATA_REGISTER_COMMAND(setup);

}  // namespace
