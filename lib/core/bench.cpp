#include "core/bench.hpp"

#include <algorithm>
#include <vector>

#include <torch/torch.h>

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

double gemm_gflops(int64_t m, int64_t k, int64_t n, int repeats) {
  torch::NoGradGuard no_grad;
  auto generator = at::detail::createCPUGenerator(0);
  auto a = torch::randn({m, k}, generator);
  auto b = torch::randn({k, n}, generator);
  auto c = torch::empty({m, n});
  double seconds = median_seconds([&] { torch::mm_out(c, a, b); }, repeats);
  return 2.0 * double(m) * double(k) * double(n) / seconds / 1e9;
}

}  // namespace strata::bench
