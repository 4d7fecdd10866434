// The training-time architectures behind train_sae: one hand-written forward + backward pass each.
// Parameters live in the scaled training space (E||x||^2 = d_in); the encoder is stored transposed,
// W_enc_t [d_sae, d_in], so that a latent's encoder and decoder weights are both contiguous rows (the
// sparse TopK kernels update whole rows). Adding an architecture = one subclass + a case in
// make_architecture.
//
// Each architecture has two implementations of the same arithmetic (runtime::KernelPath):
//   native    the x86 row kernels of kernels.hpp over host pointers, TopK decoding sparse (CPU only);
//   portable  LibTorch ops only, so the tensors may live on any device (CUDA). The gradients are the
//             same hand-written formulas in torch ops (not autograd): the two paths then differ only by
//             summation order, the L1 term keeps entering Adam as a per-row decay exactly as in the
//             native path, and no autograd graph holds [batch, d_sae] buffers. TopK decodes and
//             back-propagates with dense GEMMs over the code matrix, zero outside the support (no atomics,
//             so deterministic on CUDA, and a GEMM is what a GPU runs fastest).
// tests/test_sae_portable.cpp holds the two paths to each other on the CPU.
#pragma once
#include <torch/types.h>

#include "core/runtime.hpp"

#include <cstdint>
#include <memory>
#include <string>

namespace strata::sae {

struct TrainOptions;

struct Parameters {
  torch::Tensor W_enc_t, b_enc, W_dec, b_dec;  // [d_sae, d_in], [d_sae], [d_sae, d_in], [d_in]
};

struct StepResult {
  double mse = 0, l1 = 0, aux = 0, loss = 0;  // batch means (mse: sum over dims)
  int64_t active = 0;                         // nonzero codes in the batch
  torch::Tensor fired;                        // bool [d_sae]: latent active on some row of the batch
};

class Architecture {
 public:
  virtual ~Architecture() = default;
  virtual std::string name() const = 0;  // cfg.json "architecture"
  // Decoder rows random with norm decoder_init_norm(), W_enc = W_dec^T, b_enc = 0 (b_dec: the caller).
  void init_parameters(Parameters& p, int64_t d_in, int64_t d_sae, uint64_t seed) const;
  virtual double decoder_init_norm() const = 0;
  // Loss of the batch x [B, d_in] (scaled). With `grads` the gradients are written into it (every
  // tensor overwritten). `dead` (I32 latent ids, may be empty) feeds the dead-latent remedy.
  virtual StepResult step(const Parameters& p, const torch::Tensor& x, double l1_coefficient, const torch::Tensor& dead,
                          Parameters* grads) = 0;
  // Extra per-row decay of W_dec's gradient for Adam (g_row += decay * W_dec_row), or undefined.
  virtual torch::Tensor decoder_row_decay() const { return {}; }
  // Called after every optimiser update.
  virtual void after_update(Parameters&) {}
};

// The architecture of `options` on the given kernel path (default: the one runtime::kernel_path picks for
// the CPU).
std::unique_ptr<Architecture> make_architecture(const TrainOptions& options, runtime::KernelPath path);

// Every tensor of `p` moved to `device` (contiguous); undefined tensors stay undefined.
Parameters to_device(const Parameters& p, torch::Device device);

// Adam with PyTorch's semantics (no weight decay; the standard SAE's L1 term enters W_dec's gradient as a
// per-row decay, g_row += decay * W_dec_row). Native: kernels::adam_rows on host memory; portable: torch
// ops on the parameters' device.
struct Adam {
  Parameters m, v;
  int64_t t = 0;
  runtime::KernelPath path = runtime::KernelPath::native;
  void init(const Parameters& p, runtime::KernelPath kernel_path);
  void update(Parameters& p, const Parameters& g, const torch::Tensor& W_dec_row_decay, double lr, double beta1,
              double beta2, double eps);
};

// Row-parallel helper: splits [0, rows) into a fixed number of chunks (independent of the thread count,
// so per-chunk partial sums reduce in the same order on any machine) and runs fn(chunk, r0, r1).
constexpr int64_t kChunks = 16;
void for_chunks(int64_t rows, const std::function<void(int64_t chunk, int64_t r0, int64_t r1)>& fn);

}  // namespace strata::sae
