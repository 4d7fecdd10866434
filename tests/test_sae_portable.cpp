// The portable SAE training path (LibTorch ops, any device) against the native CPU kernels, on the CPU:
// CI has no GPU, so this is what vouches for the code that runs on one (docs/sae.md, issue 15).
#define BOOST_TEST_MODULE sae_portable
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include <cstdlib>
#include <optional>

#include "core/error.hpp"
#include "core/fs.hpp"
#include "core/runtime.hpp"
#include "io/activation_store.hpp"
#include "sae/architecture.hpp"
#include "sae/train.hpp"
#include "test_device.hpp"
#include "test_helpers.hpp"

using namespace strata;
using runtime::KernelPath;
namespace fs = std::filesystem;

namespace {
using testing::KernelsEnv;
using testing::test_device;

// max |a - b| / max |b|: one scale per tensor, so entries near zero do not dominate.
double relative_difference(const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor x = a.to(torch::kCPU), y = b.to(torch::kCPU);
  const double scale = y.abs().max().item<double>();
  return (x - y).abs().max().item<double>() / std::max(scale, 1e-30);
}

// Shapes: d_in = 20 and d_sae = 140 are not multiples of the kernels' 16-float vector width, so the
// scalar tails of every native kernel take part.
constexpr int64_t kDin = 20, kExpansion = 7, kBatch = 64;

sae::TrainOptions train_options(const std::string& architecture) {
  sae::TrainOptions o;
  o.architecture = architecture;
  o.expansion = kExpansion;
  o.k = 8;
  o.aux_k = 16;
  o.lr = 1e-3;
  o.l1 = 5e-3;
  return o;
}

// Sparse-ish inputs with an offset: each row mixes 4 of 40 fixed directions.
torch::Tensor batch(int64_t rows, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  auto directions = torch::randn({40, kDin}, at::detail::createCPUGenerator(7));
  auto scores = torch::rand({rows, 40}, gen);
  auto chosen = std::get<1>(scores.topk(4, 1));
  auto coef = torch::zeros({rows, 40}).scatter_(1, chosen, torch::rand({rows, 4}, gen) + 0.5);
  return (coef.mm(directions) + 0.3 + 0.05 * torch::randn({rows, kDin}, gen)).contiguous();
}

// Every third latent counts as dead, so TopK's AuxK term (and its gradient) takes part.
torch::Tensor some_dead_latents() { return torch::arange(0, kDin * kExpansion, 3, torch::kInt64); }

struct Trajectory {
  sae::Parameters p;
  std::vector<sae::StepResult> steps;
};

Trajectory train_steps(const sae::TrainOptions& o, KernelPath path, int steps) {
  torch::NoGradGuard no_grad;
  auto arch = sae::make_architecture(o, path);
  const int64_t d_sae = kDin * kExpansion;
  Trajectory t;
  t.p.b_dec = batch(256, 99).mean(0);
  arch->init_parameters(t.p, kDin, d_sae, 1234);
  const torch::Device device = path == KernelPath::portable ? test_device() : torch::Device(torch::kCPU);
  t.p = sae::to_device(t.p, device);
  sae::Adam adam;
  adam.init(t.p, path);
  sae::Parameters grads{torch::empty_like(t.p.W_enc_t), torch::empty_like(t.p.b_enc), torch::empty_like(t.p.W_dec),
                        torch::empty_like(t.p.b_dec)};
  const torch::Tensor dead = some_dead_latents();
  for (int s = 0; s < steps; ++s) {
    t.steps.push_back(arch->step(t.p, batch(kBatch, 1000 + s).to(device), o.l1, dead, &grads));
    adam.update(t.p, grads, arch->decoder_row_decay(), o.lr, o.adam_beta1, o.adam_beta2, o.adam_eps);
    arch->after_update(t.p);
  }
  t.p = sae::to_device(t.p, torch::kCPU);
  return t;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(kernel_path)

BOOST_AUTO_TEST_CASE(default_is_native_on_cpu_and_portable_elsewhere) {
  unsetenv("STRATA_KERNELS");
  BOOST_TEST((runtime::kernel_path(torch::kCPU) == KernelPath::native));
  BOOST_TEST((runtime::kernel_path(torch::Device(torch::kCUDA, 0)) == KernelPath::portable));
  BOOST_TEST(std::string(runtime::to_string(KernelPath::portable)) == "portable");
  BOOST_TEST(std::string(runtime::to_string(KernelPath::native)) == "native");
}

BOOST_AUTO_TEST_CASE(environment_overrides_and_bad_values_are_named) {
  {
    KernelsEnv env("portable");
    BOOST_TEST((runtime::kernel_path(torch::kCPU) == KernelPath::portable));
    BOOST_TEST(runtime::environment_json().at("strata_kernels_env") == "portable");
  }
  {
    KernelsEnv env("native");
    BOOST_TEST((runtime::kernel_path(torch::kCPU) == KernelPath::native));
    testing::expect_error([] { runtime::kernel_path(torch::Device(torch::kCUDA, 0)); },
                          {"STRATA_KERNELS=native", "CPU only", "cuda:0"});
  }
  KernelsEnv env("fast");
  testing::expect_error([] { runtime::kernel_path(torch::kCPU); }, {"STRATA_KERNELS='fast'", "native", "portable"});
}

BOOST_AUTO_TEST_CASE(determinism_sets_the_cublas_workspace_before_any_cuda_call) {
  unsetenv("CUBLAS_WORKSPACE_CONFIG");
  runtime::apply_determinism();
  BOOST_TEST(std::string(std::getenv("CUBLAS_WORKSPACE_CONFIG")) == ":4096:8");
  const auto recorded = runtime::determinism_json();
  BOOST_TEST(recorded.at("cublas_workspace_config") == ":4096:8");
  BOOST_TEST(recorded.at("deterministic_algorithms") == true);
  // A value the user chose is kept (and recorded as is).
  setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8", 1);
  runtime::apply_determinism();
  BOOST_TEST(runtime::determinism_json().at("cublas_workspace_config") == ":16:8");
  unsetenv("CUBLAS_WORKSPACE_CONFIG");
}

BOOST_AUTO_TEST_SUITE_END()

BOOST_AUTO_TEST_SUITE(portable_vs_native)

// One step from the same parameters: the losses and every gradient agree to f32 rounding (the paths
// differ only in summation order), and the discrete parts (active count, fired latents) exactly.
BOOST_AUTO_TEST_CASE(one_step_gradients_agree) {
  torch::NoGradGuard no_grad;
  for (const std::string architecture : {"standard", "topk"}) {
    BOOST_TEST_CONTEXT(architecture) {
      const auto o = train_options(architecture);
      sae::Parameters start;
      start.b_dec = batch(256, 99).mean(0);
      auto native = sae::make_architecture(o, KernelPath::native);
      auto portable = sae::make_architecture(o, KernelPath::portable);
      native->init_parameters(start, kDin, kDin * kExpansion, 5);
      // Perturb b_enc so that ReLU codes are neither all on nor all off.
      start.b_enc = torch::randn({kDin * kExpansion}, at::detail::createCPUGenerator(3)) * 0.2;
      const auto x = batch(kBatch, 42);
      auto fresh = [&] {
        return sae::Parameters{torch::full_like(start.W_enc_t, 7), torch::full_like(start.b_enc, 7),
                               torch::full_like(start.W_dec, 7), torch::full_like(start.b_dec, 7)};
      };
      const torch::Device device = test_device();
      sae::Parameters g_native = fresh(), g_portable = sae::to_device(fresh(), device);
      const auto dead = some_dead_latents();
      const auto a = native->step(start, x, o.l1, dead, &g_native);
      const auto b = portable->step(sae::to_device(start, device), x.to(device), o.l1, dead, &g_portable);
      BOOST_TEST(a.loss == b.loss, boost::test_tools::tolerance(1e-5));
      BOOST_TEST(a.mse == b.mse, boost::test_tools::tolerance(1e-5));
      BOOST_TEST(a.l1 == b.l1, boost::test_tools::tolerance(1e-5));
      BOOST_TEST(a.aux == b.aux, boost::test_tools::tolerance(1e-5));
      if (architecture == "topk") BOOST_TEST(a.aux > 0);  // AuxK took part
      BOOST_TEST(a.active == b.active);
      BOOST_TEST(a.active > 0);
      BOOST_TEST(a.active < kBatch * kDin * kExpansion);
      BOOST_TEST(torch::equal(a.fired, b.fired));
      BOOST_TEST_MESSAGE(architecture << " one step: dW_enc " << relative_difference(g_portable.W_enc_t, g_native.W_enc_t)
                                      << ", dW_dec " << relative_difference(g_portable.W_dec, g_native.W_dec) << ", db_enc "
                                      << relative_difference(g_portable.b_enc, g_native.b_enc) << ", db_dec "
                                      << relative_difference(g_portable.b_dec, g_native.b_dec));
      BOOST_TEST(relative_difference(g_portable.W_enc_t, g_native.W_enc_t) < 1e-5);
      BOOST_TEST(relative_difference(g_portable.W_dec, g_native.W_dec) < 1e-5);
      BOOST_TEST(relative_difference(g_portable.b_enc, g_native.b_enc) < 1e-5);
      BOOST_TEST(relative_difference(g_portable.b_dec, g_native.b_dec) < 1e-5);
      if (architecture == "standard") {
        BOOST_TEST(relative_difference(portable->decoder_row_decay(), native->decoder_row_decay()) < 1e-5);
      }
    }
  }
}

// 30 full steps (forward, backward, Adam, decoder renormalisation) from the same start: the weights stay
// within 1e-4 of each other relative to each tensor's largest entry. Adam divides by sqrt(v), so f32
// rounding differences of ~1e-7 in a gradient can move an entry by up to ~lr per step where the gradient
// is near zero; with lr = 1e-3 the observed difference is ~1e-6, and 1e-4 leaves room for other BLAS.
BOOST_AUTO_TEST_CASE(weights_after_thirty_steps_agree) {
  for (const std::string architecture : {"standard", "topk"}) {
    BOOST_TEST_CONTEXT(architecture) {
      const auto o = train_options(architecture);
      const auto native = train_steps(o, KernelPath::native, 30);
      const auto portable = train_steps(o, KernelPath::portable, 30);
      const double tolerance = 1e-4;
      BOOST_TEST_MESSAGE(architecture << " after 30 steps: W_enc " << relative_difference(portable.p.W_enc_t, native.p.W_enc_t)
                                      << ", W_dec " << relative_difference(portable.p.W_dec, native.p.W_dec) << ", b_enc "
                                      << relative_difference(portable.p.b_enc, native.p.b_enc) << ", b_dec "
                                      << relative_difference(portable.p.b_dec, native.p.b_dec));
      BOOST_TEST(relative_difference(portable.p.W_enc_t, native.p.W_enc_t) < tolerance);
      BOOST_TEST(relative_difference(portable.p.W_dec, native.p.W_dec) < tolerance);
      BOOST_TEST(relative_difference(portable.p.b_enc, native.p.b_enc) < tolerance);
      BOOST_TEST(relative_difference(portable.p.b_dec, native.p.b_dec) < tolerance);
      // The training moved the weights far more than the two paths differ.
      sae::Parameters start;
      start.b_dec = batch(256, 99).mean(0);
      sae::make_architecture(o, KernelPath::native)->init_parameters(start, kDin, kDin * kExpansion, 1234);
      BOOST_TEST(relative_difference(native.p.W_enc_t, start.W_enc_t) > 100 * tolerance);
      for (size_t s = 0; s < native.steps.size(); ++s) {
        BOOST_TEST(portable.steps[s].loss == native.steps[s].loss, boost::test_tools::tolerance(1e-4));
        BOOST_TEST(portable.steps[s].active == native.steps[s].active);
      }
      if (architecture == "topk") {  // unit-norm decoder rows on both paths
        BOOST_TEST((portable.p.W_dec.norm(2, {1}) - 1).abs().max().item<double>() < 1e-5);
      }
    }
  }
}

// Training end to end through train_sae (batch stream, dead-latent resampling, held-out evaluation,
// checkpoint and saved SAE) with STRATA_KERNELS=portable against the default native path.
BOOST_AUTO_TEST_CASE(train_sae_portable_matches_native) {
  const fs::path root = testing::fresh_dir("sae_portable_train");
  const torch::Tensor x = batch(2048, 5);
  {
    io::ActivationStoreWriter writer(root / "store", "toy_layer1_activations", kDin, torch::kFloat32, 1 << 20);
    io::RowIndex index;
    auto ids = torch::arange(x.size(0), torch::kInt64);
    index.doc_id = ids.div(16, "floor");
    index.seq_id = index.doc_id;
    index.token_index = ids.remainder(16);
    index.byte_begin = ids * 4;
    index.byte_end = ids * 4 + 4;
    writer.append(x, index);
    writer.finish({{"model", "toy"}, {"layer", 1}});
  }
  const auto store = io::ActivationStore::open(root / "store" / "toy_layer1_activations.meta.json");
  for (const std::string architecture : {"standard", "topk"}) {
    BOOST_TEST_CONTEXT(architecture) {
      auto o = train_options(architecture);
      o.batch_size = 128;
      o.epochs = 3;
      o.min_epochs = 3;
      o.lr_warmup_steps = 5;
      o.l1_warmup_steps = 5;
      o.resample_interval_steps = 10;  // resampling is checked at steps 10 and 20 on both paths (standard)
      o.dead_window_tokens = 256;
      std::optional<sae::TrainResult> native, portable;
      native = sae::train_sae(store, o, 11, root / ("native_" + architecture));
      {
        KernelsEnv env("portable");
        auto on_device = o;
        on_device.device = test_device();
        portable = sae::train_sae(store, on_device, 11, root / ("portable_" + architecture));
      }
      BOOST_REQUIRE(native->ok);
      BOOST_REQUIRE(portable->ok);
      BOOST_TEST(native->sae.cfg.at("training").at("kernels") == "native");
      BOOST_TEST(portable->sae.cfg.at("training").at("kernels") == "portable");
      BOOST_TEST(portable->sae.cfg.at("device") == test_device().str());
      BOOST_TEST(native->sae.cfg.at("device") == "cpu");
      BOOST_TEST(portable->metrics.at("steps") == native->metrics.at("steps"));
      BOOST_TEST(portable->metrics.at("resampled_latents") == native->metrics.at("resampled_latents"));
      const double tolerance = 1e-3;
      BOOST_TEST_MESSAGE(architecture << " train_sae: W_enc " << relative_difference(portable->sae.W_enc, native->sae.W_enc)
                                      << ", W_dec " << relative_difference(portable->sae.W_dec, native->sae.W_dec)
                                      << ", resampled " << native->metrics.at("resampled_latents") << ", fvu "
                                      << native->metrics.at("fvu") << " vs " << portable->metrics.at("fvu"));
      BOOST_TEST(relative_difference(portable->sae.W_enc, native->sae.W_enc) < tolerance);
      BOOST_TEST(relative_difference(portable->sae.W_dec, native->sae.W_dec) < tolerance);
      BOOST_TEST(relative_difference(portable->sae.b_dec, native->sae.b_dec) < tolerance);
      BOOST_TEST(portable->metrics.at("fvu").get<double>() == native->metrics.at("fvu").get<double>(),
                 boost::test_tools::tolerance(1e-3));
      BOOST_TEST(portable->metrics.at("l0").get<double>() == native->metrics.at("l0").get<double>(),
                 boost::test_tools::tolerance(1e-3));
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()
