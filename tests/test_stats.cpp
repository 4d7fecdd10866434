#define BOOST_TEST_MODULE stats
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <tuple>

#include "core/error.hpp"
#include "core/random.hpp"
#include "stats/cka.hpp"
#include "stats/correlation.hpp"
#include "stats/linalg.hpp"
#include "test_device.hpp"

using namespace strata::stats;

// Reference p-values: the two-sided Student-t tail of t = r sqrt((n-2)/(1-r^2)) with n-2 degrees of
// freedom (what scipy.stats.spearmanr/pearsonr report), evaluated with mpmath at 30 digits as
// betainc(df/2, 1/2, 0, df/(df+t^2), regularized=True). Ranks with average ties.
BOOST_AUTO_TEST_CASE(spearman_matches_reference_values) {
  Correlation a = spearman({1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, {2, 1, 4, 3, 7, 5, 6, 9, 10, 8});
  BOOST_CHECK_CLOSE(a.r, 0.90303030303030303, 1e-10);
  BOOST_CHECK_CLOSE(a.p, 0.0003436121977632801, 1e-8);
  std::vector<double> x = {3.1, 1.2, 4.4, 1.2, 5.0, 9.3, 2.6, 5.0, 3.5, 8.9, 7.9, 3.2};
  std::vector<double> y = {2.0, 0.5, 3.3, 1.1, 2.0, 7.7, 1.9, 6.1, 1.0, 5.5, 9.9, 2.0};
  Correlation ties = spearman(x, y);
  BOOST_CHECK_CLOSE(ties.r, 0.84806183161532096, 1e-10);
  BOOST_CHECK_CLOSE(ties.p, 0.00049126528995123562, 1e-8);
  Correlation linear = pearson(x, y);
  BOOST_CHECK_CLOSE(linear.r, 0.85718591084286996, 1e-10);
  BOOST_CHECK_CLOSE(linear.p, 0.00036629472550669196, 1e-8);
  Correlation weak = spearman({0.3, -1.2, 0.8, 2.5, -0.4, 1.1, 0.05}, {1.0, 0.2, -0.5, 0.9, -1.1, 0.4, 0.7});
  BOOST_CHECK_CLOSE(weak.r, 0.42857142857142857, 1e-10);
  BOOST_CHECK_CLOSE(weak.p, 0.33736831108582402, 1e-8);
  Correlation reversed = spearman({1, 2, 3, 4}, {9, 7, 5, 1});
  BOOST_CHECK_EQUAL(reversed.r, -1.0);
  BOOST_CHECK_EQUAL(reversed.p, 0.0);
  Correlation constant = spearman({1, 1, 1}, {1, 2, 3});
  BOOST_CHECK_EQUAL(constant.r, 0.0);
  BOOST_CHECK_EQUAL(constant.p, 1.0);
  BOOST_CHECK_THROW(spearman({1, 2}, {1}), strata::Error);
}

BOOST_AUTO_TEST_CASE(average_ranks_share_ties) {
  std::vector<double> ranks = average_ranks({10, 20, 10, 30, 20, 20});
  std::vector<double> expected = {1.5, 4, 1.5, 6, 4, 4};
  BOOST_CHECK_EQUAL_COLLECTIONS(ranks.begin(), ranks.end(), expected.begin(), expected.end());
}

// Reference: S = 27, Var(S) = (9*8*23 - 2*1*9)/18 = 91 (one tied pair), z = (S-1)/sqrt(91),
// p = erfc(|z|/sqrt 2), tau_b = S / sqrt((36-1)*36); mpmath.
BOOST_AUTO_TEST_CASE(mann_kendall_matches_reference) {
  TrendTest t = mann_kendall({1, 3, 2, 5, 4, 6, 8, 7, 7});
  BOOST_CHECK_EQUAL(t.s, 27.0);
  BOOST_CHECK_CLOSE(t.variance, 91.0, 1e-12);
  BOOST_CHECK_CLOSE(t.z, 2.7255405754769875, 1e-10);
  BOOST_CHECK_CLOSE(t.p, 0.0064196285414336949, 1e-8);
  BOOST_CHECK_CLOSE(t.tau, 0.76063882925566484, 1e-10);
  TrendTest down = mann_kendall({5, 4, 3, 2, 1});
  BOOST_CHECK_LT(down.z, 0);
  BOOST_CHECK_CLOSE(down.tau, -1.0, 1e-12);
  BOOST_CHECK_EQUAL(mann_kendall({1, 2}).p, 1.0);
}

BOOST_AUTO_TEST_CASE(benjamini_hochberg_known_example) {
  std::vector<double> adjusted = benjamini_hochberg({0.01, 0.04, 0.03, 0.005});
  std::vector<double> expected = {0.02, 0.04, 0.04, 0.02};
  for (size_t i = 0; i < expected.size(); ++i) BOOST_CHECK_CLOSE(adjusted[i], expected[i], 1e-12);
  std::vector<double> capped = benjamini_hochberg({0.9, 0.8});
  BOOST_CHECK_CLOSE(capped[0], 0.9, 1e-12);
  BOOST_CHECK_CLOSE(capped[1], 0.9, 1e-12);  // monotone step-up: min over larger ranks
}

BOOST_AUTO_TEST_CASE(percentile_interval_interpolates) {
  std::vector<double> values;
  for (int i = 0; i <= 100; ++i) values.push_back(i);
  auto [lo, hi] = percentile_interval(values, 0.95);
  BOOST_CHECK_CLOSE(lo, 2.5, 1e-12);
  BOOST_CHECK_CLOSE(hi, 97.5, 1e-12);
}

BOOST_AUTO_TEST_CASE(cka_invariances) {
  torch::manual_seed(1);
  torch::Tensor x = torch::randn({300, 20}, torch::kFloat64) * torch::linspace(0.1, 3, 20, torch::kFloat64);
  BOOST_CHECK_CLOSE(linear_cka(x, x), 1.0, 1e-10);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(7);
  torch::Tensor rotation = random_orthonormal(20, 20, generator);
  BOOST_CHECK_CLOSE(linear_cka(x, torch::mm(x, rotation)), 1.0, 1e-10);
  BOOST_CHECK_CLOSE(linear_cka(x, 3.5 * torch::mm(x, rotation) + 2.0), 1.0, 1e-10);
  // Embedding into a wider space with orthonormal columns is also an isometry.
  torch::Tensor embed = random_orthonormal(32, 20, generator);
  BOOST_CHECK_CLOSE(linear_cka(x, torch::mm(x, embed.t())), 1.0, 1e-10);
  // Gram form agrees with the feature form.
  torch::Tensor y = x.index({torch::indexing::Slice(), torch::indexing::Slice(0, 10)}) + torch::randn({300, 10}, torch::kFloat64);
  GramCka gram(x, y);
  BOOST_CHECK_CLOSE(gram.value(), linear_cka(x, y), 1e-9);
}

BOOST_AUTO_TEST_CASE(cka_permutation_test_and_weights) {
  torch::manual_seed(2);
  torch::Tensor x = torch::randn({400, 8}, torch::kFloat64);
  torch::Tensor related = torch::mm(x, torch::randn({8, 6}, torch::kFloat64)) + 0.5 * torch::randn({400, 6}, torch::kFloat64);
  torch::Tensor unrelated = torch::randn({400, 6}, torch::kFloat64);
  GramCka strong(x, related), none(x, unrelated);
  PermutationTest a = strong.permutation_test(2000, 11), b = none.permutation_test(2000, 11);
  BOOST_CHECK_CLOSE(a.p, 1.0 / 2001.0, 1e-9);
  BOOST_CHECK_GT(b.p, 0.01);
  // The null of linear CKA for independent data: about dx*dy / ((dx+dy)... ) ~ d/N, small here.
  BOOST_CHECK_LT(a.null_mean, 0.05);
  BOOST_CHECK_LT(none.value(), 0.05);
  // Same seed, same result (independent of the thread schedule).
  BOOST_CHECK_EQUAL(strong.permutation_test(500, 3).null_mean, strong.permutation_test(500, 3).null_mean);
  // Integer weights equal the CKA of the resampled matrix.
  torch::Tensor counts = torch::zeros({2, 400}, torch::kFloat64);
  counts[0] = 1.0;
  std::vector<int64_t> picks;
  for (int64_t i = 0; i < 400; ++i) picks.push_back((i * 37 + 11) % 400 / 2);  // each of 0..199 twice-ish
  for (int64_t p : picks) counts[1][p] += 1.0;
  std::vector<double> weighted = strong.weighted(counts);
  BOOST_CHECK_CLOSE(weighted[0], strong.value(), 1e-9);
  torch::Tensor index = torch::tensor(picks, torch::kInt64);
  BOOST_CHECK_CLOSE(weighted[1], linear_cka(x.index_select(0, index), related.index_select(0, index)), 1e-8);
}

BOOST_AUTO_TEST_CASE(procrustes_recovers_planted_rotation) {
  torch::manual_seed(3);
  auto generator = at::make_generator<at::CPUGeneratorImpl>(5);
  torch::Tensor z = torch::randn({500, 12}, torch::kFloat64);
  z = z - z.mean(0, true);
  torch::Tensor rotation = random_orthonormal(12, 12, generator);
  torch::Tensor y = torch::mm(z, rotation) + 0.01 * torch::randn({500, 12}, torch::kFloat64);
  y = y - y.mean(0, true);
  torch::Tensor q = procrustes(z, y);
  BOOST_CHECK_LT((q - rotation).abs().max().item<double>(), 1e-2);
  // Semi-orthogonal: a 12-dim target placed in a 20-dim source by orthonormal columns.
  torch::Tensor placement = random_orthonormal(20, 12, generator).t();  // [12, 20], orthonormal rows
  torch::Tensor wide = torch::mm(z, placement);
  torch::Tensor q_wide = procrustes(z, wide);
  BOOST_CHECK_EQUAL(q_wide.size(0), 12);
  BOOST_CHECK_EQUAL(q_wide.size(1), 20);
  BOOST_CHECK_LT((q_wide - placement).abs().max().item<double>(), 1e-8);
  // Ridge with a tiny penalty recovers a general linear map.
  torch::Tensor general = torch::randn({12, 5}, torch::kFloat64);
  torch::Tensor w = ridge(z, torch::mm(z, general), 1e-9);
  BOOST_CHECK_LT((w - general).abs().max().item<double>(), 1e-6);
}

// Cost of one permutation at the default N, printed for the plan estimate (not a timing assertion): the
// automatic form (features at this width) and the Gram loop in its reference and vectorised forms.
BOOST_AUTO_TEST_CASE(permutation_cost_figure) {
  torch::manual_seed(4);
  torch::Tensor x = torch::randn({2048, 16}), y = torch::randn({2048, 16});
  GramCka gram(x, y);
  auto seconds_per = [&](auto&& run, int64_t permutations) {
    auto start = std::chrono::steady_clock::now();
    run(permutations);
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / double(permutations);
  };
  const double automatic = seconds_per([&](int64_t b) { gram.permutation_test(b, 1); }, 200);
  BOOST_TEST_MESSAGE("CKA permutation at N=2048: " << 1e3 * automatic << " ms each");
  using strata::runtime::KernelPath;
  for (auto loop : {native::GramLoop::reference, native::GramLoop::vectorised}) {
    if (loop == native::GramLoop::vectorised && !native::gram_loop_vectorised_available(2048)) continue;
    const double s = seconds_per(
        [&](int64_t b) { gram.permutation_test(b, 1, GramCka::Form::gram, KernelPath::native, loop); }, 64);
    BOOST_TEST_MESSAGE("  Gram loop (" << (loop == native::GramLoop::reference ? "reference" : "vectorised")
                                       << "): " << 1e3 * s << " ms each");
  }
}

// The permutation test's p is what it says: the same draws (derive(seed, "cka/permutation", b), Fisher-Yates
// with mt19937_64) applied to y's rows in a direct fp64 feature-space CKA give the same count of null values
// at or above the observed one.
BOOST_AUTO_TEST_CASE(cka_permutation_p_equals_brute_force_over_the_same_draws) {
  torch::manual_seed(7);
  torch::Tensor x = torch::randn({120, 5}, torch::kFloat64);
  // Effect size: the signal adds about c^2 N = 1.2 of the null's ||Y^T X||^2, whose relative spread is
  // sqrt(2 / (dx dy)) = 0.32: an effect of a few null standard deviations (this W), so p is small, not minimal.
  torch::Tensor y = 0.1 * torch::mm(x, torch::randn({5, 4}, torch::kFloat64)) + torch::randn({120, 4}, torch::kFloat64);
  GramCka gram(x, y);
  const int64_t permutations = 300;
  const uint64_t seed = 77;
  PermutationTest test = gram.permutation_test(permutations, seed);
  int64_t exceed = 0;
  double null_sum = 0;
  for (int64_t b = 0; b < permutations; ++b) {
    std::mt19937_64 rng(strata::derive(seed, "cka/permutation", b));
    std::vector<int64_t> perm(120);
    std::iota(perm.begin(), perm.end(), 0);
    strata::shuffle(perm, rng);
    const double null = linear_cka(x, y.index_select(0, torch::tensor(perm, torch::kInt64)));
    exceed += null >= gram.value();
    null_sum += null;
  }
  BOOST_TEST_MESSAGE("observed " << gram.value() << ", p " << test.p << ", exceed " << exceed);
  BOOST_CHECK_GT(exceed, 0);  // a moderate effect: p neither minimal nor 1
  BOOST_CHECK_LT(exceed, permutations / 2);
  BOOST_CHECK_EQUAL(test.p, double(1 + exceed) / double(1 + permutations));
  BOOST_CHECK_CLOSE(test.null_mean, null_sum / double(permutations), 1e-4);  // fp32 loop vs fp64
  // No test, no p-value.
  BOOST_CHECK(std::isnan(gram.permutation_test(0, seed).p));
}

// Grams and self terms made once per representation and shared across pairs give exactly what a pair built
// from the raw rows gives: value, permutation p and bootstrap values.
BOOST_AUTO_TEST_CASE(shared_grams_give_the_same_cka_as_fresh_ones) {
  torch::manual_seed(8);
  torch::Tensor x = torch::randn({90, 6}), y = torch::randn({90, 4}), z = torch::randn({90, 7});
  y = y + 0.3 * torch::mm(x, torch::randn({6, 4}));
  auto gx = std::make_shared<const CentredGram>(x), gy = std::make_shared<const CentredGram>(y);
  auto gz = std::make_shared<const CentredGram>(z);
  torch::Tensor weights = torch::randint(0, 3, {5, 90}, torch::kFloat64);
  for (auto [shared_pair, a, b] : {std::tuple{GramCka(gx, gy), x, y}, std::tuple{GramCka(gx, gz), x, z}}) {
    GramCka fresh(a, b);
    BOOST_CHECK_EQUAL(shared_pair.value(), fresh.value());
    BOOST_CHECK_EQUAL(shared_pair.permutation_test(64, 5).p, fresh.permutation_test(64, 5).p);
    std::vector<double> w_shared = shared_pair.weighted(weights), w_fresh = fresh.weighted(weights);
    for (size_t r = 0; r < w_fresh.size(); ++r) BOOST_CHECK_CLOSE(w_shared[r], w_fresh[r], 1e-12);
  }
  // The side form of linear CKA equals the two-argument form.
  BOOST_CHECK_CLOSE(linear_cka(cka_side(x), cka_side(y)), linear_cka(x, y), 1e-12);
}

// Both exact forms of the permutation test give the same null values for the same draws (up to the fp32
// accumulation of the Gram loop), hence the same p; their costs at the zoo's shape are printed to calibrate
// GramCka::kFeatureFormRatio (a figure, not a timing assertion).
BOOST_AUTO_TEST_CASE(cka_permutation_forms_agree_and_cost) {
  torch::manual_seed(9);
  for (auto [n, dx, dy] : {std::tuple<int64_t, int64_t, int64_t>{200, 6, 9}, {1024, 96, 64}, {2048, 256, 192}}) {
    torch::Tensor x = torch::randn({n, dx});
    // A weak effect, ~1.5 null standard deviations: the signal adds c^2 N of the null's ||Y^T X||^2, whose
    // relative spread is sqrt(2 / (dx dy)); so p is neither minimal nor 1.
    const double c = std::sqrt(1.5 * std::sqrt(2.0 / double(dx * dy)) / double(n));
    torch::Tensor y = c * torch::mm(x, torch::randn({dx, dy})) + torch::randn({n, dy});
    GramCka gram(x, y);
    const int64_t permutations = n > 500 ? 200 : 400;
    auto time = [&](GramCka::Form form, PermutationTest& out) {
      auto start = std::chrono::steady_clock::now();
      out = gram.permutation_test(permutations, 21, form);
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
    PermutationTest loop, features;
    const double t_loop = time(GramCka::Form::gram, loop), t_features = time(GramCka::Form::features, features);
    BOOST_TEST_MESSAGE("N " << n << " dx " << dx << " dy " << dy << ": Gram loop " << 1e3 * t_loop / permutations
                            << " ms, feature GEMM " << 1e3 * t_features / permutations << " ms per permutation; p "
                            << loop.p << " / " << features.p);
    BOOST_CHECK_EQUAL(loop.p, features.p);
    BOOST_CHECK_CLOSE(loop.null_mean, features.null_mean, 1e-3);
    BOOST_CHECK_CLOSE(loop.null_max, features.null_max, 1e-3);
    BOOST_CHECK_GT(loop.p, 1.0 / double(permutations + 1));  // not a trivial all-below case
  }
}

// The portable path (LibTorch gathers and GEMMs on STRATA_TEST_DEVICE: the CPU in CI, the GPU under
// scripts/gpu-check.sh) gives the native host loop's null values for the same draws, in both forms: the same
// p, and null mean and max within the native loop's fp32 rounding (the portable Gram form sums in fp64).
BOOST_AUTO_TEST_CASE(cka_permutation_portable_path_matches_the_native_loop) {
  using strata::runtime::KernelPath;
  torch::manual_seed(19);
  const torch::Device device = strata::testing::test_device();
  for (auto [n, dx, dy] : {std::tuple<int64_t, int64_t, int64_t>{200, 6, 9}, {300, 40, 50}}) {
    torch::Tensor x = torch::randn({n, dx});
    const double c = std::sqrt(1.5 * std::sqrt(2.0 / double(dx * dy)) / double(n));  // a weak effect, as above
    torch::Tensor y = c * torch::mm(x, torch::randn({dx, dy})) + torch::randn({n, dy});
    GramCka native(x, y), portable(x.to(device), y.to(device));
    BOOST_CHECK_CLOSE(native.value(), portable.value(), 1e-8);
    const int64_t permutations = 300;
    for (GramCka::Form form : {GramCka::Form::gram, GramCka::Form::features}) {
      PermutationTest a = native.permutation_test(permutations, 21, form, KernelPath::native);
      PermutationTest b = portable.permutation_test(permutations, 21, form, KernelPath::portable);
      BOOST_TEST_MESSAGE("N " << n << " form " << int(form) << ": p " << a.p << " / " << b.p << ", null mean "
                              << a.null_mean << " / " << b.null_mean);
      BOOST_CHECK_EQUAL(a.p, b.p);
      BOOST_CHECK_CLOSE(a.null_mean, b.null_mean, 1e-4);
      BOOST_CHECK_CLOSE(a.null_max, b.null_max, 1e-4);
      BOOST_CHECK_GT(a.p, 1.0 / double(permutations + 1));  // some permuted values exceed the observed one
    }
  }
  if (device.is_cpu())  // the native loop reads host memory: on another device it refuses, naming it
    return;
  GramCka on_device(torch::randn({50, 3}).to(device), torch::randn({50, 4}).to(device));
  BOOST_CHECK_THROW(on_device.permutation_test(10, 1, GramCka::Form::gram, KernelPath::native), strata::Error);
}

// The vectorised Gram loop (AVX-512 gathers across permutations) runs each accumulator's sequence of fp32
// multiplies and adds exactly as the scalar reference does: the same totals, bit for bit, for a full block
// and a partial one, at N not a multiple of 4 (the scalar tail), and so the same null values and p.
BOOST_AUTO_TEST_CASE(cka_gram_loop_vectorised_equals_the_reference_bit_for_bit) {
  namespace native = strata::stats::native;
  if (!native::gram_loop_vectorised_available(203)) {
    BOOST_TEST_MESSAGE("no AVX-512F here: only the reference form runs");
    return;
  }
  torch::manual_seed(23);
  for (int64_t n : {5, 203, 1030}) {
    torch::Tensor k = torch::randn({n, 7}), l = torch::randn({n, 9});
    k = torch::mm(k, k.t()).contiguous();
    l = torch::mm(l, l.t()).contiguous();
    std::vector<std::vector<int32_t>> perms(native::kGramBlock, std::vector<int32_t>(n));
    const int32_t* ptrs[native::kGramBlock];
    std::mt19937_64 rng(n);
    for (int64_t c = 0; c < native::kGramBlock; ++c) {
      std::iota(perms[c].begin(), perms[c].end(), 0);
      strata::shuffle(perms[c], rng);
      ptrs[c] = perms[c].data();
    }
    for (int64_t count : {int64_t(native::kGramBlock), int64_t(3)}) {
      double reference[native::kGramBlock], vectorised[native::kGramBlock];
      native::gram_permutation_sums(k.data_ptr<float>(), l.data_ptr<float>(), n, ptrs, count, reference,
                                    native::GramLoop::reference);
      native::gram_permutation_sums(k.data_ptr<float>(), l.data_ptr<float>(), n, ptrs, count, vectorised,
                                    native::GramLoop::vectorised);
      for (int64_t c = 0; c < count; ++c) BOOST_CHECK_EQUAL(reference[c], vectorised[c]);
      // And the sum is the definition (fp64, all pairs), to fp32 accumulation.
      auto ka = k.accessor<float, 2>(), la = l.accessor<float, 2>();
      double direct = 0;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) direct += double(ka[i][j]) * double(la[perms[0][i]][perms[0][j]]);
      BOOST_CHECK_CLOSE(reference[0], direct, 1e-3);
    }
  }
  // Whole tests: the same p and the same null values.
  torch::Tensor x = torch::randn({300, 40});
  torch::Tensor y = 0.05 * torch::mm(x, torch::randn({40, 50})) + torch::randn({300, 50});
  GramCka gram(x, y);
  using strata::runtime::KernelPath;
  PermutationTest a = gram.permutation_test(101, 3, GramCka::Form::gram, KernelPath::native,
                                            native::GramLoop::reference);
  PermutationTest b = gram.permutation_test(101, 3, GramCka::Form::gram, KernelPath::native,
                                            native::GramLoop::vectorised);
  BOOST_CHECK_EQUAL(a.p, b.p);
  BOOST_CHECK_EQUAL(a.null_mean, b.null_mean);
  BOOST_CHECK_EQUAL(a.null_max, b.null_max);
}
