// The transfer metrics on tensors (transfer/metrics.hpp, transfer/maps.hpp) against their definitions, and the
// row selection (transfer/selection.hpp) against what its header states.
#define BOOST_TEST_MODULE transfer_metrics
#include <boost/test/unit_test.hpp>

#include <torch/torch.h>

#include <cstdlib>
#include <map>
#include <set>
#include <tuple>

#include "core/scratch_file.hpp"
#include "stats/cka.hpp"
#include "test_helpers.hpp"
#include "stats/linalg.hpp"
#include "test_device.hpp"
#include "transfer/maps.hpp"
#include "transfer/metrics.hpp"
#include "transfer/selection.hpp"

using namespace strata;
using namespace strata::transfer;

namespace {

// Codes of `pre` [N, m] after ReLU, through the same pass the runner uses (no decoder).
Encoding codes_of(const torch::Tensor& pre, int64_t min_firings, int64_t batch = 50) {
  torch::Tensor doc = torch::zeros({pre.size(0)}, torch::kInt64);
  return encode_rows([](const torch::Tensor& x) { return BatchCodes(torch::relu(x)); }, nullptr, pre, doc, 1, batch,
                     min_firings);
}

// MMAC straight from its definition, in fp64 on dense codes: alive latents (>= min_firings firings), Pearson
// correlation of every alive pair over the N tokens, max over partners, mean (and mass-weighted mean).
MmacResult mmac_definition(const torch::Tensor& pre_a, const torch::Tensor& pre_b, int64_t min_firings) {
  torch::Tensor fa = torch::relu(pre_a).to(torch::kFloat64), fb = torch::relu(pre_b).to(torch::kFloat64);
  torch::Tensor alive_a = ((fa > 0).sum(0) >= min_firings).nonzero().squeeze(1);
  torch::Tensor alive_b = ((fb > 0).sum(0) >= min_firings).nonzero().squeeze(1);
  fa = fa.index_select(1, alive_a);
  fb = fb.index_select(1, alive_b);
  torch::Tensor ca = fa - fa.mean(0), cb = fb - fb.mean(0);
  torch::Tensor corr = torch::mm(ca.t(), cb) / torch::outer(ca.pow(2).sum(0).sqrt(), cb.pow(2).sum(0).sqrt());
  torch::Tensor best_a = std::get<0>(corr.max(1)), best_b = std::get<0>(corr.max(0));
  torch::Tensor mass_a = fa.sum(0), mass_b = fb.sum(0);
  MmacResult out;
  out.a_to_b = best_a.mean().item<double>();
  out.b_to_a = best_b.mean().item<double>();
  out.a_to_b_weighted = ((best_a * mass_a).sum() / mass_a.sum()).item<double>();
  out.b_to_a_weighted = ((best_b * mass_b).sum() / mass_b.sum()).item<double>();
  return out;
}

void check_mmac(const MmacResult& got, const MmacResult& want, double tolerance) {
  BOOST_CHECK_CLOSE(got.a_to_b, want.a_to_b, tolerance);
  BOOST_CHECK_CLOSE(got.b_to_a, want.b_to_a, tolerance);
  BOOST_CHECK_CLOSE(got.a_to_b_weighted, want.a_to_b_weighted, tolerance);
  BOOST_CHECK_CLOSE(got.b_to_a_weighted, want.b_to_a_weighted, tolerance);
}

// Bit-equal: the same cross moments folded by two forms, or the same codes read from two places.
void check_mmac_equal(const MmacResult& got, const MmacResult& want) {
  BOOST_CHECK_EQUAL(got.a_to_b, want.a_to_b);
  BOOST_CHECK_EQUAL(got.b_to_a, want.b_to_a);
  BOOST_CHECK_EQUAL(got.a_to_b_weighted, want.a_to_b_weighted);
  BOOST_CHECK_EQUAL(got.b_to_a_weighted, want.b_to_a_weighted);
}

}  // namespace

// Sparse and dense codes (a positive bias makes most latents fire on most tokens), one block and many blocks
// (a 7-latent block budget), cross moments as dense GEMMs, as sparse x dense products and chosen by density:
// the blocked MMAC equals the definition to fp32 accuracy (1e-4 %).
BOOST_AUTO_TEST_CASE(mmac_by_blocks_equals_the_definition_sparse_and_dense) {
  torch::manual_seed(3);
  const int64_t n = 300;
  torch::Tensor shared = torch::randn({n, 8});
  for (double bias : {-4.0, 3.0}) {  // pre-activations have sd ~2.9: ~8 % and ~85 % of codes fire
    torch::Tensor pre_a = torch::mm(shared, torch::randn({8, 40})) + 0.5 * torch::randn({n, 40}) + bias;
    torch::Tensor pre_b = torch::mm(shared, torch::randn({8, 56})) + 0.5 * torch::randn({n, 56}) + bias;
    Encoding a = codes_of(pre_a, 5), b = codes_of(pre_b, 5);
    const double density = (torch::relu(pre_a) > 0).to(torch::kFloat64).mean().item<double>();
    BOOST_TEST_MESSAGE("bias " << bias << ": density " << density << ", alive " << a.codes.n_alive() << " / "
                               << b.codes.n_alive());
    if (bias > 0) BOOST_CHECK_GT(density, 0.7);  // the dense case is dense
    else BOOST_CHECK_LT(density, 0.2);
    BOOST_CHECK_GT(a.codes.n_alive(), 10);
    const MmacResult want = mmac_definition(pre_a, pre_b, 5);
    const int64_t seven_latents = 2 * 4 * n * 7;
    for (double sparse_below : {0.0, 1.0, kMmacSparseBelow}) {  // always dense, always sparse, by density
      BOOST_TEST_CONTEXT("sparse_below " << sparse_below) {
        check_mmac(mmac(a.codes, b.codes, int64_t(256) << 20, sparse_below), want, 1e-4);
        check_mmac(mmac(a.codes, b.codes, seven_latents, sparse_below), want, 1e-4);
      }
    }
  }
}

// The host kernels (native path, transfer/mmac_native.hpp) against the tensor form (portable path): the same
// bits where both fold the same cross moments (dense GEMM blocks and sparse x dense blocks, one block or many),
// and the definition to fp32 accuracy where both code sets are sparse enough for the token-by-token fp64 sums.
BOOST_AUTO_TEST_CASE(mmac_host_kernels_equal_the_tensor_form) {
  torch::manual_seed(6);
  const int64_t n = 2000;
  torch::Tensor shared = torch::randn({n, 8});
  for (double bias : {-6.0, 3.0}) {  // ~2 % and ~85 % of codes fire
    torch::Tensor pre_a = torch::mm(shared, torch::randn({8, 48})) + 0.5 * torch::randn({n, 48}) + bias;
    torch::Tensor pre_b = torch::mm(shared, torch::randn({8, 40})) + 0.5 * torch::randn({n, 40}) + bias;
    Encoding a = codes_of(pre_a, 5, 300), b = codes_of(pre_b, 5, 300);
    auto density = [&](const LatentCodes& c) { return double(c.values.numel()) / double(c.n_alive() * c.tokens); };
    const bool sparse_product = density(a.codes) * density(b.codes) < kMmacSparseProductBelow;
    BOOST_TEST_MESSAGE("bias " << bias << ": densities " << density(a.codes) << ", " << density(b.codes));
    BOOST_CHECK_EQUAL(sparse_product, bias < 0);  // both kernels are exercised
    BOOST_CHECK_GT(a.codes.n_alive(), 20);
    BOOST_CHECK_GT(b.codes.n_alive(), 20);
    const MmacResult want = mmac_definition(pre_a, pre_b, 5);
    for (int64_t block_bytes : {int64_t(256) << 20, 2 * 4 * n * 7})
      for (double sparse_below : {0.0, 1.0}) {
        BOOST_TEST_CONTEXT("bias " << bias << ", block bytes " << block_bytes << ", sparse_below " << sparse_below) {
          const MmacResult tensors = mmac(a.codes, b.codes, block_bytes, sparse_below, runtime::KernelPath::portable);
          const MmacResult host = mmac(a.codes, b.codes, block_bytes, sparse_below, runtime::KernelPath::native);
          check_mmac(tensors, want, 1e-4);
          check_mmac(host, want, 1e-4);
          if (!sparse_product) {
            check_mmac_equal(host, tensors);
          }
        }
      }
  }
}

BOOST_AUTO_TEST_CASE(latent_codes_densify_any_block) {
  torch::manual_seed(4);
  torch::Tensor pre = torch::randn({97, 23}) - 0.5;
  Encoding e = codes_of(pre, 2, 10);
  torch::Tensor alive = ((torch::relu(pre) > 0).sum(0) >= 2).nonzero().squeeze(1);
  BOOST_CHECK(torch::equal(e.codes.alive, alive));
  BOOST_CHECK(e.codes.rows.scalar_type() == torch::kInt32);  // 8 B per kept code with its fp32 value
  torch::Tensor dense = torch::relu(pre).index_select(1, alive);
  BOOST_CHECK(torch::equal(e.codes.dense(0, alive.numel()), dense));
  BOOST_CHECK(torch::equal(e.codes.dense(3, 11), dense.index({torch::indexing::Slice(), torch::indexing::Slice(3, 11)})));
}

// Codes spilled to a scratch file (the runner's form for large code sets) read back the same entries by any
// range, densify to the same blocks, and give MMAC with the same bits as codes held in memory, on every path.
BOOST_AUTO_TEST_CASE(spilled_codes_equal_codes_in_memory) {
  torch::manual_seed(8);
  const int64_t n = 300;
  torch::Tensor pre_a = torch::randn({n, 40}) - 0.8, pre_b = torch::randn({n, 33}) + 0.3;  // sparse, dense
  const Encoding a = codes_of(pre_a, 3), b = codes_of(pre_b, 3);
  Encoding a_spilled = codes_of(pre_a, 3), b_spilled = codes_of(pre_b, 3);
  auto file = ScratchFile::create(testing::fresh_dir("transfer_spill"));
  a_spilled.codes.spill(file);
  b_spilled.codes.spill(file);
  BOOST_TEST(a_spilled.codes.spilled());
  BOOST_TEST(!a_spilled.codes.rows.defined());
  BOOST_TEST(a_spilled.codes.nnz() == a.codes.values.numel());
  BOOST_TEST(b_spilled.codes.nnz() == b.codes.values.numel());
  const int64_t mid = a.codes.nnz() / 3;
  LatentCodes::Entries e = a_spilled.codes.entries(mid, mid + 50);
  BOOST_CHECK(torch::equal(e.rows, a.codes.rows.slice(0, mid, mid + 50)));
  BOOST_CHECK(torch::equal(e.values, a.codes.values.slice(0, mid, mid + 50)));
  BOOST_CHECK(torch::equal(b_spilled.codes.dense(4, 19), b.codes.dense(4, 19)));
  BOOST_CHECK(torch::equal(a_spilled.codes.sparse_t(2, 30).to_dense(), a.codes.sparse_t(2, 30).to_dense()));
  for (auto path : {runtime::KernelPath::native, runtime::KernelPath::portable})
    for (int64_t block_bytes : {int64_t(256) << 20, 2 * 4 * n * 7})
      for (double sparse_below : {0.0, 1.0})
        for (const auto& [x, y, xs, ys] : {std::tuple{&a, &b, &a_spilled, &b_spilled}, {&a, &a, &a_spilled, &a_spilled}}) {
          const MmacResult held = mmac(x->codes, y->codes, block_bytes, sparse_below, path);
          const MmacResult spilled = mmac(xs->codes, ys->codes, block_bytes, sparse_below, path);
          check_mmac_equal(held, spilled);
        }
}

// The kept codes in column-major order are placed by a counting sort on the host (native path) and by a stable
// sort on any device (portable path): the same entries in the same order, with latents below min_firings left
// out, for dense and TopK codes over several batches.
BOOST_AUTO_TEST_CASE(codes_placed_by_counting_sort_equal_the_stable_sort) {
  torch::manual_seed(9);
  const int64_t n = 230, d = 12, m = 64;
  sae::Sae sae;
  sae.architecture = "topk";
  sae.k = 5;
  sae.W_enc = torch::randn({d, m}) * 0.3;
  sae.W_dec = torch::randn({m, d}) * 0.3;
  sae.b_enc = torch::randn({m}) * 0.3 - 0.2;
  sae.b_dec = torch::zeros({d});
  torch::Tensor x = torch::randn({n, d});
  torch::Tensor doc = torch::arange(n, torch::kInt64).floor_divide(40);
  for (double sparse_below : {0.0, 1.0}) {
    const char* before = std::getenv("STRATA_KERNELS");
    const std::string saved = before ? before : "";
    setenv("STRATA_KERNELS", "portable", 1);
    const Encoding portable = encode_rows(encoder_of(sae, sparse_below), &sae, x, doc, 6, 37, 4);
    setenv("STRATA_KERNELS", "native", 1);
    const Encoding native = encode_rows(encoder_of(sae, sparse_below), &sae, x, doc, 6, 37, 4);
    if (before) setenv("STRATA_KERNELS", saved.c_str(), 1); else unsetenv("STRATA_KERNELS");
    BOOST_TEST_CONTEXT("sparse_below " << sparse_below) {
      BOOST_TEST(native.codes.n_alive() > 10);
      BOOST_TEST(native.codes.n_alive() < (native.firings > 0).sum().item<int64_t>());  // some fired, not alive
      BOOST_CHECK(torch::equal(native.codes.alive, portable.codes.alive));
      BOOST_CHECK(torch::equal(native.codes.offsets, portable.codes.offsets));
      BOOST_CHECK(torch::equal(native.codes.rows, portable.codes.rows));
      BOOST_CHECK(torch::equal(native.codes.values, portable.codes.values));
    }
  }
}

// A TopK SAE's pass with codes without their zeros (sae::TopKCodes, the fast form) against the dense codes (the
// reference form, on the CPU), in several batches and with rows whose k values include zeros: the same FVU sums
// and latent moments to fp64 reassociation, and the same kept codes entry for entry. The sparse pass runs on
// STRATA_TEST_DEVICE (scripts/gpu-check.sh: the GPU's embedding-bag decode and index_add sums).
BOOST_AUTO_TEST_CASE(topk_pass_with_sparse_codes_equals_the_dense_pass) {
  torch::manual_seed(5);
  const int64_t n = 240, d = 16, m = 96;
  sae::Sae sae;
  sae.architecture = "topk";
  sae.k = 6;
  sae.W_enc = torch::randn({d, m}) * 0.3;
  sae.W_dec = torch::randn({m, d}) * 0.3;
  sae.b_enc = torch::randn({m}) * 0.2 - 4.5;  // most rows have fewer than k positive pre-activations
  sae.b_dec = torch::randn({d});
  torch::Tensor x = torch::randn({n, d}) * 2;
  torch::Tensor doc = torch::arange(n, torch::kInt64).floor_divide(30);
  const int64_t batch = 70;
  Encoding dense = encode_rows(encoder_of(sae, 0.0), &sae, x, doc, 8, batch, 3);
  const sae::Sae on_device = sae.to(testing::test_device());
  auto to_cpu = [](Encoding e) {
    for (torch::Tensor* t : {&e.sums.residual, &e.sums.square, &e.sums.count, &e.sums.sum, &e.latent_mean,
                             &e.latent_var, &e.firings, &e.mass, &e.codes.alive, &e.codes.offsets, &e.codes.rows,
                             &e.codes.values})
      if (t->defined()) *t = t->cpu();
    return e;
  };
  const torch::Device device = testing::test_device();
  Encoding sparse =
      to_cpu(encode_rows(encoder_of(on_device, 1.0), &on_device, x.to(device), doc.to(device), 8, batch, 3));
  BOOST_TEST((sae.encode_topk(x).values == 0).any().item<bool>());
  auto close = [](const torch::Tensor& got, const torch::Tensor& want) {
    return torch::allclose(got, want, /*rtol=*/1e-6, /*atol=*/1e-9);
  };
  BOOST_TEST(close(sparse.sums.residual, dense.sums.residual));
  BOOST_TEST(torch::equal(sparse.sums.square, dense.sums.square));
  BOOST_TEST(std::abs(sparse.sums.fvu() - dense.sums.fvu()) < 1e-7);
  BOOST_TEST(close(sparse.latent_mean, dense.latent_mean));
  BOOST_TEST(close(sparse.latent_var, dense.latent_var));
  BOOST_TEST(torch::equal(sparse.firings, dense.firings));
  BOOST_TEST(sparse.l0 == dense.l0);
  BOOST_TEST(sparse.l0 < 6.0);
  BOOST_TEST(dense.codes.n_alive() > 20);
  BOOST_TEST(torch::equal(sparse.codes.alive, dense.codes.alive));
  BOOST_TEST(torch::equal(sparse.codes.offsets, dense.codes.offsets));
  BOOST_TEST(torch::equal(sparse.codes.rows, dense.codes.rows));
  BOOST_TEST(torch::equal(sparse.codes.values, dense.codes.values));
  // Without moments (the null's pass) the FVU sums are the same too.
  Encoding sparse_fvu_only = to_cpu(
      encode_rows(encoder_of(on_device, 1.0), &on_device, x.to(device), doc.to(device), 8, batch, -1, /*moments=*/false));
  BOOST_TEST(close(sparse_fvu_only.sums.residual, dense.sums.residual));
}

// Procrustes of the two directions of a cell pair from one cross product: Q(s -> t) = Q(t -> s)^T, because the
// SVD of C^T is V S U^T. The runner relies on this identity to do one SVD per unordered pair.
BOOST_AUTO_TEST_CASE(procrustes_directions_share_one_factor) {
  torch::manual_seed(5);
  torch::Tensor z = torch::randn({200, 12}, torch::kFloat64), y = torch::randn({200, 9}, torch::kFloat64);
  z = z - z.mean(0);
  y = y - y.mean(0);
  torch::Tensor q_zy = stats::procrustes_from_cross(torch::mm(z.t(), y));  // [12, 9]
  torch::Tensor q_yz = stats::procrustes_from_cross(torch::mm(y.t(), z));  // [9, 12], computed separately
  BOOST_CHECK_LT((q_zy.t() - q_yz).abs().max().item<double>(), 1e-10);
  // Semi-orthogonal: Q^T Q = I on the narrow side.
  BOOST_CHECK_LT((torch::mm(q_zy.t(), q_zy) - torch::eye(9, torch::kFloat64)).abs().max().item<double>(), 1e-10);
  // alpha from the Gram (tr(Q^T Z^T Z Q)) equals the row pass ||Z Q||^2.
  FitRows zr = fit_rows(z), yr = fit_rows(y);
  AffineMap map = procrustes_map(q_zy, zr, yr, 1.0, 1.0);
  const double alpha = std::sqrt(y.pow(2).sum().item<double>() / torch::mm(z, q_zy).pow(2).sum().item<double>());
  BOOST_CHECK_CLOSE(map.alpha, alpha, 1e-10);
}

// ridge_r2 from the shared Gram and cross product equals the textbook fit on the rows.
BOOST_AUTO_TEST_CASE(ridge_from_shared_products_equals_the_row_fit) {
  torch::manual_seed(6);
  torch::Tensor z = torch::randn({150, 6}, torch::kFloat64);
  torch::Tensor y = torch::mm(z, torch::randn({6, 4}, torch::kFloat64)) + 0.3 * torch::randn({150, 4}, torch::kFloat64);
  torch::Tensor z_eval = torch::randn({50, 6}, torch::kFloat64);
  torch::Tensor y_eval = torch::mm(z_eval, torch::randn({6, 4}, torch::kFloat64));
  FitRows zr = fit_rows(z), yr = fit_rows(y);
  const double r2 = ridge_r2(zr, yr, torch::mm(zr.centred.t(), yr.centred), 0.01, z_eval, y_eval);
  // Textbook: W = (Zc^T Zc + lambda I)^-1 Zc^T Yc, lambda = 0.01 * ||Zc||^2 / d.
  torch::Tensor zc = z - z.mean(0), yc = y - y.mean(0);
  const double lambda = 0.01 * zc.pow(2).sum().item<double>() / 6.0;
  torch::Tensor w = torch::linalg_solve(torch::mm(zc.t(), zc) + lambda * torch::eye(6, torch::kFloat64), torch::mm(zc.t(), yc));
  torch::Tensor predicted = torch::mm(z_eval - z.mean(0), w) + y.mean(0);
  const double want = 1 - (y_eval - predicted).pow(2).sum().item<double>() / (y_eval - y_eval.mean(0)).pow(2).sum().item<double>();
  BOOST_CHECK_CLOSE(r2, want, 1e-9);
  // From the evaluation rows' moments (the CKA sides' Xc^T Xc and cross product), with scales: raw rows
  // z_raw = z_eval / s_t and fitting rows scaled by s_t, as in the transfer step.
  const double s_t = 1.7, s_s = 0.6;
  // One linear relation in both splits (so R^2 says something), raw rows off-centre (the means matter).
  torch::Tensor m = torch::randn({6, 4}, torch::kFloat64);
  torch::Tensor y_fit = torch::mm(z, m) + 0.5 * torch::randn({150, 4}, torch::kFloat64);
  torch::Tensor y_held = torch::mm(z_eval, m) + 0.5 * torch::randn({50, 4}, torch::kFloat64);
  FitRows zs = fit_rows((z + 0.4) * s_t), ys = fit_rows((y_fit - 1.2) * s_s);
  torch::Tensor z_raw = z_eval + 0.4, y_raw = y_held - 1.2;
  const double rows = ridge_r2(zs, ys, torch::mm(zs.centred.t(), ys.centred), 0.01, z_raw * s_t, y_raw * s_s);
  strata::stats::CkaSide zc_side = strata::stats::cka_side(z_raw), yc_side = strata::stats::cka_side(y_raw);
  EvalMoments zm{zc_side.mean, zc_side.gram, z_raw.size(0)}, ym{yc_side.mean, yc_side.gram, y_raw.size(0)};
  torch::Tensor xc_cross = strata::stats::cka_cross(yc_side, zc_side);  // Zc^T Yc [d_t, d_s]
  const double moments = ridge_r2(zs, ys, torch::mm(zs.centred.t(), ys.centred), 0.01, zm, ym, xc_cross, s_t, s_s);
  BOOST_TEST_MESSAGE("ridge R^2 from rows " << rows << ", from moments " << moments);
  BOOST_CHECK_CLOSE(moments, rows, 1e-9);
  BOOST_CHECK_LT(rows, 0.999);  // not a trivial perfect fit
  BOOST_CHECK_GT(rows, 0.1);
}

namespace {

// A model of `docs` documents with `tokens` tokens each; token t of doc d ends at byte `step` * (t + 1).
ModelRows model_rows(const std::string& name, int64_t docs, int64_t tokens, int64_t step, int64_t first_doc = 0) {
  torch::Tensor doc = torch::arange(first_doc, first_doc + docs, torch::kInt64).repeat_interleave(tokens);
  torch::Tensor end = (torch::arange(tokens, torch::kInt64) + 1).mul(step).repeat({docs});
  return {name, docs * tokens, doc, end};
}

std::vector<int64_t> values(const torch::Tensor& t) {
  torch::Tensor c = t.contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

}  // namespace

BOOST_AUTO_TEST_CASE(selection_splits_and_caps_by_whole_documents_in_draw_order) {
  const ModelRows a = model_rows("a", 40, 7, 3);
  const DocumentDraws draws = draw_documents({&a}, 11, 0.75);
  // A document's draws do not depend on which models were drawn with it (every job of a split run agrees).
  const ModelRows other = model_rows("other", 30, 5, 2, 25);
  const DocumentDraws together = draw_documents({&other, &a}, 11, 0.75);
  for (const auto& [doc, draw] : draws) {
    BOOST_TEST(together.at(doc).fit == draw.fit);
    BOOST_TEST(together.at(doc).cap_order == draw.cap_order);
  }
  BOOST_TEST(together.size() == 55u);
  const SequenceBootstrap boot = bootstrap_sequences(draws, 9, 11);
  int64_t fit_docs = 0;
  for (const auto& [doc, draw] : draws) fit_docs += draw.fit;
  BOOST_TEST(fit_docs > 20);  // about 0.75 of 40
  BOOST_TEST(fit_docs < 40);
  BOOST_TEST(boot.documents() == 40 - fit_docs);
  BOOST_TEST(boot.replicates() == 9);
  // Each resample draws D documents with replacement.
  BOOST_TEST(torch::allclose(boot.weights.sum(1), torch::full({9}, double(boot.documents()), torch::kFloat64)));

  // Caps of 30 fitting and 17 evaluation tokens: 4 and 2 whole documents of 7.
  const Selection s = select_rows(a, a, true, {false, 30, 17}, draws, boot);
  BOOST_TEST(s.aligned == a.rows);
  BOOST_TEST(values(s.fit_a) == values(s.fit_b));
  BOOST_TEST(s.fit_a.numel() == 28);
  BOOST_TEST(s.eval_a.numel() == 14);
  BOOST_TEST(s.fit_sequences == 4);
  BOOST_TEST(s.eval_sequences == 2);
  auto docs_of = [&](const torch::Tensor& rows) {
    std::set<int64_t> out;
    for (int64_t r : values(rows)) out.insert(r / 7);
    return out;
  };
  for (const auto& [rows, fit, count] : {std::tuple{s.fit_a, true, 4}, std::tuple{s.eval_a, false, 2}}) {
    const std::set<int64_t> taken = docs_of(rows);
    BOOST_TEST(int64_t(values(rows).size()) == 7 * count);  // whole documents
    // The taken documents are the first of their split in increasing cap draw.
    std::vector<std::pair<double, int64_t>> order;
    for (const auto& [doc, draw] : draws)
      if (draw.fit == fit) order.push_back({draw.cap_order, doc});
    std::sort(order.begin(), order.end());
    std::set<int64_t> first;
    for (int i = 0; i < count; ++i) first.insert(order[i].second);
    BOOST_TEST((taken == first));
  }
  // Each evaluation row's bootstrap column is its document's.
  const std::vector<int64_t> eval_rows = values(s.eval_a), columns = values(s.eval_doc);
  for (size_t i = 0; i < eval_rows.size(); ++i) BOOST_TEST(columns[i] == boot.column.at(eval_rows[i] / 7));
  // A cap below one document still takes the first document whole.
  const Selection tiny = select_rows(a, a, true, {false, 4, 4}, draws, boot);
  BOOST_TEST(tiny.fit_a.numel() == 7);
  BOOST_TEST(tiny.eval_a.numel() == 7);
}

BOOST_AUTO_TEST_CASE(selection_across_models_pairs_rows_that_end_at_the_same_byte) {
  // Same 12 documents, tokens ending every 2 bytes in a and every 3 in b: they share the ends 6, 12 and 18.
  const ModelRows a = model_rows("a", 12, 9, 2), b = model_rows("b", 12, 6, 3);
  const DocumentDraws draws = draw_documents({&a, &b}, 5, 0.5);
  const SequenceBootstrap boot = bootstrap_sequences(draws, 3, 5);
  const Selection s = select_rows(a, b, false, {false, 1000, 1000}, draws, boot);
  BOOST_TEST(s.aligned == 12 * 3);
  BOOST_CHECK_CLOSE(s.retained_a, 36.0 / 108.0, 1e-12);
  BOOST_CHECK_CLOSE(s.retained_b, 36.0 / 72.0, 1e-12);
  BOOST_TEST(s.fit_a.numel() + s.eval_a.numel() == s.aligned);
  for (const auto& [ra, rb] : {std::pair{s.fit_a, s.fit_b}, std::pair{s.eval_a, s.eval_b}}) {
    const std::vector<int64_t> va = values(ra), vb = values(rb);
    BOOST_TEST(va.size() == vb.size());
    for (size_t i = 0; i < va.size(); ++i) {
      BOOST_TEST(a.sequence[va[i]].item<int64_t>() == b.sequence[vb[i]].item<int64_t>());
      BOOST_TEST(a.byte_end[va[i]].item<int64_t>() == b.byte_end[vb[i]].item<int64_t>());
    }
  }
  // By position (--aligned) pairs row i with row i, whatever the byte ends say.
  const ModelRows c = model_rows("c", 12, 9, 5);
  const Selection p = select_rows(a, c, false, {true, 1000, 1000}, draws, boot);
  BOOST_TEST(p.aligned == a.rows);
  BOOST_TEST(values(p.fit_a) == values(p.fit_b));
  // Models with no byte end in common: the error names both.
  const ModelRows odd = model_rows("odd", 12, 9, 7);
  const ModelRows none{"none", 12 * 9, odd.sequence, odd.byte_end + 1000};
  testing::expect_error([&] { select_rows(a, none, false, {false, 1000, 1000}, draws, boot); },
                        {"'a'", "'none'", "share no aligned tokens"});
  // Pairing by position needs the same rows on both sides.
  testing::expect_error([&] { select_rows(a, b, false, {true, 1000, 1000}, draws, boot); },
                        {"'a' (108 rows)", "'b' (72 rows)", "pair rows by position"});
}
