#include "core/bench.hpp"

#include <algorithm>
#include <vector>

#include <torch/torch.h>

#include "core/runtime.hpp"

namespace strata::bench {

double median_seconds(const std::function<void()>& fn, int repeats) {
  fn();
  std::vector<double> times;
  for (int i = 0; i < std::max(1, repeats); ++i) {
    auto start = std::chrono::steady_clock::now();
    fn();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

double gemm_gflops(int64_t m, int64_t k, int64_t n, int repeats, torch::Device device, torch::ScalarType dtype) {
  torch::NoGradGuard no_grad;
  auto generator = at::detail::createCPUGenerator(0);
  auto a = torch::randn({m, k}, generator).to(device, dtype);
  auto b = torch::randn({k, n}, generator).to(device, dtype);
  auto c = torch::empty({m, n}, a.options());
  double seconds = median_seconds(
      [&] {
        torch::mm_out(c, a, b);
        runtime::synchronize(device);
      },
      repeats);
  return 2.0 * double(m) * double(k) * double(n) / seconds / 1e9;
}

}  // namespace strata::bench
