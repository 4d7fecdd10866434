// Where the portable-path tests run, and the kernel-path override, for the suites that compare the portable
// LibTorch path with the native CPU kernels (test_sae_portable, test_models, test_transfer).
#pragma once
#include <torch/types.h>

#include <cstdlib>

#include "core/runtime.hpp"

namespace strata::testing {

// Sets STRATA_KERNELS for the scope of one test (unset again afterwards).
class KernelsEnv {
 public:
  explicit KernelsEnv(const char* value) { setenv("STRATA_KERNELS", value, 1); }
  ~KernelsEnv() { unsetenv("STRATA_KERNELS"); }
  KernelsEnv(const KernelsEnv&) = delete;
  KernelsEnv& operator=(const KernelsEnv&) = delete;
};

// The CPU in CI; scripts/gpu-check.sh sets STRATA_TEST_DEVICE=cuda:0 so that the same comparisons hold the
// GPU's results to the native CPU kernels.
inline torch::Device test_device() {
  const char* spec = std::getenv("STRATA_TEST_DEVICE");
  return spec && *spec ? runtime::parse_device(spec) : torch::Device(torch::kCPU);
}

}  // namespace strata::testing
