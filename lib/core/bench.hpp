// Shared benchmark helpers: every throughput figure is reported against the GEMM ceiling measured here.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>

namespace strata::bench {

// fp32 GFLOP/s of [m x k] @ [k x n] on the CPU, best of `repeats` timed runs after a warm-up.
double gemm_gflops(int64_t m, int64_t k, int64_t n, int repeats = 10);

// Seconds per call of `fn`: one warm-up, then the median of `repeats` timed calls.
double median_seconds(const std::function<void()>& fn, int repeats);

}  // namespace strata::bench
