// The hand-written SAE backward passes (lib/sae/architecture.cpp, kernels.cpp) against LibTorch autograd
// of the same losses written out in fp64, per parameter, and the Adam kernel against torch::optim::Adam.
//
// Losses (docs/sae.md), on a batch x [B, d_in] in the scaled space, xc = x - b_dec,
// pre = xc W_enc + b_enc, x_hat = f W_dec + b_dec:
//   standard: f = relu(pre); L = sum||x_hat - x||^2 / B + l1 * sum_{b,i} f_bi ||W_dec_i|| / B. The L1 term's
//             dW_dec part is not in grads->W_dec: the architecture hands it to Adam as a per-row decay
//             (g_i += decay_i W_dec_i), so the full gradient is grads->W_dec + decay * W_dec.
//   topk:     f = relu of the k largest pre per row (others 0); L = MSE + AuxK, AuxK = scale *
//             sum||aux + (x_hat - x).detach()||^2 / B with aux = the top aux_k dead latents' decode (no
//             bias), scale = aux_coefficient * min(1, n_dead / aux_k target). Decoder rows are unit norm,
//             so the W_dec gradient is autograd's projected onto the tangent of each row's sphere.
// Tolerance: max |hand - autograd| <= kTolerance * max |autograd| per parameter (fp32 against fp64; the
// measured worst case over these shapes is below 1e-6 of the scale).
#define BOOST_TEST_MODULE sae_gradients
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include "sae/architecture.hpp"
#include "sae/kernels.hpp"
#include "sae/train.hpp"

using namespace strata;

namespace {

constexpr double kTolerance = 1e-5;

struct Shape {
  int64_t batch, d_in, d_sae, k;
};
// d_sae 61, 100, 257 and d_in 33 are not multiples of the 16-float SIMD width: the kernels' tails run.
const Shape kShapes[] = {{37, 16, 61, 8}, {64, 24, 100, 12}, {29, 33, 257, 16}};

// Random parameters (not the training init: W_enc is not W_dec^T, decoder norms vary, biases non-zero,
// so that a transposed or dropped term shows).
sae::Parameters random_parameters(const Shape& s, bool unit_decoder, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  sae::Parameters p;
  p.W_enc_t = (torch::randn({s.d_sae, s.d_in}, gen) * 0.3).contiguous();
  p.W_dec = torch::randn({s.d_sae, s.d_in}, gen);
  const auto norms = unit_decoder ? torch::ones({s.d_sae, 1}) : torch::rand({s.d_sae, 1}, gen) * 0.45 + 0.05;
  p.W_dec = (p.W_dec / p.W_dec.norm(2, {1}, true) * norms).contiguous();
  p.b_enc = (torch::randn({s.d_sae}, gen) * 0.2).contiguous();
  p.b_dec = (torch::randn({s.d_in}, gen) * 0.1).contiguous();
  return p;
}

sae::Parameters empty_like(const sae::Parameters& p) {
  return {torch::empty_like(p.W_enc_t), torch::empty_like(p.b_enc), torch::empty_like(p.W_dec),
          torch::empty_like(p.b_dec)};
}

// fp64 leaves of the same values, for autograd.
struct Reference {
  torch::Tensor W_enc_t, b_enc, W_dec, b_dec;
  explicit Reference(const sae::Parameters& p)
      : W_enc_t(p.W_enc_t.to(torch::kFloat64).requires_grad_()),
        b_enc(p.b_enc.to(torch::kFloat64).requires_grad_()),
        W_dec(p.W_dec.to(torch::kFloat64).requires_grad_()),
        b_dec(p.b_dec.to(torch::kFloat64).requires_grad_()) {}
  std::vector<torch::Tensor> all() const { return {W_enc_t, b_enc, W_dec, b_dec}; }
};

struct Losses {
  torch::Tensor total, mse, penalty;  // penalty: L1 (standard) or AuxK (topk)
};

Losses standard_loss(const Reference& r, const torch::Tensor& x64, double l1) {
  const double B = double(x64.size(0));
  const auto f = torch::relu(torch::addmm(r.b_enc, x64 - r.b_dec, r.W_enc_t.t()));
  const auto x_hat = torch::addmm(r.b_dec, f, r.W_dec);
  const auto mse = (x_hat - x64).square().sum() / B;
  const auto l1_term = (f * r.W_dec.norm(2, {1})).sum() / B;
  return {mse + l1 * l1_term, mse, l1_term};
}

Losses topk_loss(const Reference& r, const torch::Tensor& x64, int64_t k, const torch::Tensor& dead, int64_t aux_k_option,
                 double aux_coefficient) {
  const int64_t B = x64.size(0), d_in = x64.size(1);
  const auto pre = torch::addmm(r.b_enc, x64 - r.b_dec, r.W_enc_t.t());
  const auto [top_values, top_ids] = pre.topk(k, 1);
  const auto codes = torch::zeros_like(pre).scatter(1, top_ids, torch::relu(top_values));
  const auto error = torch::addmm(r.b_dec, codes, r.W_dec) - x64;
  const auto mse = error.square().sum() / double(B);
  const int64_t n_dead = dead.numel();
  const int64_t target = aux_k_option > 0 ? aux_k_option : d_in / 2;
  const int64_t aux_k = std::min(target, n_dead);
  const auto dead64 = dead.to(torch::kInt64);
  const auto dead_pre = pre.index_select(1, dead64);
  const auto [aux_values, aux_ids] = dead_pre.topk(aux_k, 1);
  const auto aux_codes = torch::zeros_like(dead_pre).scatter(1, aux_ids, torch::relu(aux_values));
  const auto aux = aux_codes.mm(r.W_dec.index_select(0, dead64));
  const double scale = aux_coefficient * std::min(1.0, double(n_dead) / double(target));
  const auto aux_loss = scale * (aux + error.detach()).square().sum() / double(B);
  return {mse + aux_loss, mse, aux_loss};
}

std::vector<torch::Tensor> autograd(const Reference& r, const torch::Tensor& loss) {
  return torch::autograd::grad({loss}, r.all(), {}, /*retain_graph=*/true, false, /*allow_unused=*/true);
}

// max |a - b| / max |b| (b: the fp64 reference).
double relative_error(const torch::Tensor& a, const torch::Tensor& b) {
  const double scale = b.abs().max().item<double>();
  return (a.to(torch::kFloat64) - b).abs().max().item<double>() / std::max(scale, 1e-30);
}

torch::Tensor tangent(const torch::Tensor& g, const torch::Tensor& W) {
  return g - (g * W).sum(1, true) / W.square().sum(1, true) * W;
}

const char* const kNames[] = {"W_enc_t", "b_enc", "W_dec", "b_dec"};

}  // namespace

BOOST_AUTO_TEST_CASE(standard_relu_l1_gradients_match_autograd) {
  torch::manual_seed(0);
  sae::TrainOptions o;
  o.architecture = "standard";
  const double l1 = 0.3;
  for (const Shape& s : kShapes) {
    BOOST_TEST_CONTEXT("B " << s.batch << " d_in " << s.d_in << " d_sae " << s.d_sae) {
      const auto p = random_parameters(s, /*unit_decoder=*/false, 11 + s.d_sae);
      const auto x = torch::randn({s.batch, s.d_in}, at::detail::createCPUGenerator(7 + s.d_sae));
      auto arch = sae::make_architecture(o, runtime::KernelPath::native);
      sae::Parameters g = empty_like(p);
      const sae::StepResult step = arch->step(p, x, l1, torch::Tensor(), &g);
      const torch::Tensor W_dec_full = g.W_dec + arch->decoder_row_decay().unsqueeze(1) * p.W_dec;

      const Reference r(p);
      const auto x64 = x.to(torch::kFloat64);
      const Losses loss = standard_loss(r, x64, l1);
      BOOST_TEST(step.mse == loss.mse.item<double>(), boost::test_tools::tolerance(1e-5));
      BOOST_TEST(step.l1 == loss.penalty.item<double>(), boost::test_tools::tolerance(1e-5));
      BOOST_TEST(step.loss == loss.total.item<double>(), boost::test_tools::tolerance(1e-5));
      const auto expected = autograd(r, loss.total);
      const torch::Tensor hand[] = {g.W_enc_t, g.b_enc, W_dec_full, g.b_dec};
      for (int i = 0; i < 4; ++i) {
        const double error = relative_error(hand[i], expected[i]);
        BOOST_TEST_MESSAGE("standard " << s.d_sae << " " << kNames[i] << ": relative error " << error);
        BOOST_TEST(error <= kTolerance, kNames[i] << " relative error " << error);
      }
      // The L1 term matters at this coefficient, so dropping it (or its decoder-norm part) would fail above.
      const auto mse_only = autograd(r, loss.mse);
      BOOST_TEST(relative_error(mse_only[2].to(torch::kFloat32), expected[2]) > 100 * kTolerance);
      BOOST_TEST(relative_error(g.W_dec, expected[2]) > 100 * kTolerance);  // the row decay is needed
    }
  }
}

BOOST_AUTO_TEST_CASE(topk_and_auxk_gradients_match_autograd) {
  for (const int64_t aux_k_option : {int64_t{0}, int64_t{5}}) {
    for (const Shape& s : kShapes) {
      BOOST_TEST_CONTEXT("aux_k " << aux_k_option << " B " << s.batch << " d_in " << s.d_in << " d_sae " << s.d_sae) {
        sae::TrainOptions o;
        o.architecture = "topk";
        o.k = s.k;
        o.aux_k = aux_k_option;
        o.aux_coefficient = 0.5;
        const auto p = random_parameters(s, /*unit_decoder=*/true, 23 + s.d_sae);
        const auto x = torch::randn({s.batch, s.d_in}, at::detail::createCPUGenerator(5 + s.d_sae));
        // Every third latent counts as dead: n_dead = d_sae / 3 (with aux_k 0 the target is d_in / 2).
        const auto dead = torch::arange(0, s.d_sae, 3, torch::kInt32);
        auto arch = sae::make_architecture(o, runtime::KernelPath::native);
        sae::Parameters g = empty_like(p);
        const sae::StepResult step = arch->step(p, x, 0.0, dead, &g);

        const Reference r(p);
        const Losses loss = topk_loss(r, x.to(torch::kFloat64), s.k, dead, aux_k_option, o.aux_coefficient);
        BOOST_TEST(step.mse == loss.mse.item<double>(), boost::test_tools::tolerance(1e-5));
        BOOST_TEST(step.aux == loss.penalty.item<double>(), boost::test_tools::tolerance(1e-5));
        BOOST_TEST(step.aux > 0.0);
        auto expected = autograd(r, loss.total);
        expected[2] = tangent(expected[2], r.W_dec.detach());
        const torch::Tensor hand[] = {g.W_enc_t, g.b_enc, g.W_dec, g.b_dec};
        for (int i = 0; i < 4; ++i) {
          const double error = relative_error(hand[i], expected[i]);
          BOOST_TEST_MESSAGE("topk aux_k " << aux_k_option << " " << s.d_sae << " " << kNames[i] << ": relative error "
                                           << error);
          BOOST_TEST(error <= kTolerance, kNames[i] << " relative error " << error);
        }
        // AuxK moves every parameter measurably, so a dropped or mis-scaled AuxK term would fail above.
        auto main_only = autograd(r, loss.mse);
        main_only[2] = tangent(main_only[2], r.W_dec.detach());
        for (int i = 0; i < 4; ++i)
          BOOST_TEST(relative_error(main_only[i].to(torch::kFloat32), expected[i]) > 100 * kTolerance, kNames[i]);
      }
    }
  }
}

// kernels::adam_rows (PyTorch's Adam, with the decoder's L1 row decay folded into the gradient) against
// torch::optim::Adam in fp64 given the full gradient, over three steps so that the bias corrections move.
BOOST_AUTO_TEST_CASE(adam_kernel_matches_torch_optim_adam) {
  const double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  for (const Shape& s : kShapes) {
    BOOST_TEST_CONTEXT("rows " << s.d_sae << " cols " << s.d_in) {
      auto gen = at::detail::createCPUGenerator(3 + s.d_sae);
      // Small parameters, so that fp32 rounding of the parameter itself stays far below the tolerance.
      torch::Tensor param = (torch::randn({s.d_sae, s.d_in}, gen) * 0.1).contiguous();
      const torch::Tensor initial = param.clone();
      const torch::Tensor decay = (torch::rand({s.d_sae}, gen) * 0.5).contiguous();
      torch::Tensor m = torch::zeros_like(param), v = torch::zeros_like(param);
      torch::Tensor reference = param.to(torch::kFloat64).requires_grad_();
      torch::optim::Adam optimizer({reference}, torch::optim::AdamOptions(lr).betas({beta1, beta2}).eps(eps));
      for (int t = 1; t <= 3; ++t) {
        const torch::Tensor grad = torch::randn({s.d_sae, s.d_in}, gen).contiguous();
        const double bc1 = 1.0 - std::pow(beta1, t), bc2 = 1.0 - std::pow(beta2, t);
        const sae::kernels::AdamStep step{float(beta1), float(beta2), float(eps), float(lr / bc1), float(std::sqrt(bc2))};
        // The reference's gradient: the same g plus decay * p at the parameters before the step.
        reference.mutable_grad() = grad.to(torch::kFloat64) + decay.to(torch::kFloat64).unsqueeze(1) * reference.detach();
        optimizer.step();
        sae::kernels::adam_rows(param.data_ptr<float>(), grad.data_ptr<float>(), m.data_ptr<float>(), v.data_ptr<float>(),
                                decay.data_ptr<float>(), s.d_in, 0, s.d_sae, step);
        // Each step moves a parameter by about lr; the fp32 update agrees with fp64 to 1e-4 of that.
        const double difference = (param.to(torch::kFloat64) - reference.detach()).abs().max().item<double>();
        BOOST_TEST_MESSAGE("adam " << s.d_sae << "x" << s.d_in << " step " << t << ": max |difference| " << difference);
        BOOST_TEST(difference <= 1e-4 * lr, "step " << t << " max |difference| " << difference);
      }
      // The parameters did move (about lr per step), so the comparison is not of two untouched tensors.
      BOOST_TEST((param - initial).abs().mean().item<double>() > lr);
    }
  }
}

// The kernels are compiled once per ISA (target_clones: AVX-512, AVX2, baseline) and the loader picks one per
// CPU; their comment promises the same bits on every CPU. A fused multiply-add would break that (it rounds
// once where the baseline clone rounds twice), so kernels.cpp turns contraction off. This test holds the
// clone this CPU runs to the baseline arithmetic, written out here in the kernel's lane order: on a CPU with
// AVX2 or AVX-512 it fails if the clone fuses `acc += d * d`.
BOOST_AUTO_TEST_CASE(kernels_round_like_the_baseline_clone_on_every_cpu) {
  constexpr int64_t n = 37, rows = 3, lanes = 16;  // two full 16-float vectors and a tail of 5 per row
  torch::manual_seed(29);
  torch::Tensor x = torch::randn({rows, n}), x_hat = torch::randn({rows, n});
  std::vector<float> colsum(n, 0.0f);
  torch::Tensor e = x_hat.clone();
  const double sse = sae::kernels::error_rows(e.data_ptr<float>(), x.data_ptr<float>(), n, 0, rows, colsum.data());
  const float* xp = x.data_ptr<float>();
  const float* hp = x_hat.data_ptr<float>();
  double want = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    float acc[lanes] = {};
    int64_t j = 0;
    for (; j + lanes <= n; j += lanes)
      for (int64_t l = 0; l < lanes; ++l) {
        const float d = hp[r * n + j + l] - xp[r * n + j + l];
        const volatile float square = d * d;  // rounded to fp32 on its own, as a separate multiply does
        acc[l] = acc[l] + square;
      }
    double row = 0.0;
    for (int64_t l = 0; l < lanes; ++l) row += double(acc[l]);
    for (; j < n; ++j) {
      const float d = hp[r * n + j] - xp[r * n + j];
      row += double(d) * d;
    }
    want += row;
  }
  BOOST_CHECK_EQUAL(sse, want);
}
