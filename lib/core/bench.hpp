// Shared benchmark helpers: every throughput figure is reported against the GEMM ceiling measured here.
#pragma once
#include <chrono>
#include <cstdint>
#include <functional>

#include <torch/types.h>

namespace strata::bench {

// GFLOP/s of [m x k] @ [k x n] in `dtype` on `device` (median of `repeats` timed runs after a warm-up;
// device work is waited for inside each timed run).
double gemm_gflops(int64_t m, int64_t k, int64_t n, int repeats = 10, torch::Device device = torch::kCPU,
                   torch::ScalarType dtype = torch::kFloat32);

// Seconds per call of `fn`: one warm-up, then the median of `repeats` timed calls.
double median_seconds(const std::function<void()>& fn, int repeats);

}  // namespace strata::bench
