#include "transfer/plan.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "core/bench.hpp"
#include "core/error.hpp"
#include "core/runtime.hpp"
#include "stats/cka.hpp"
#include "stats/cka_native.hpp"
#include "transfer/metrics.hpp"

namespace strata::transfer {

double held_bytes(const std::vector<PlanCell>& cells, const std::vector<size_t>& involved, int64_t n_fit) {
  double bytes = 0;
  for (size_t c : involved) bytes += double(n_fit) * double(cells[c].dim) * 8 + cells[c].sae_bytes();
  return bytes;
}

PlanRates measure_plan_rates(const PlanInput& in, const TransferOptions& options) {
  if (in.cells.empty()) fail("transfer plan: no cells to measure rates for");
  PlanRates plan;
  // On a GPU a 512^3 GEMM is launch-bound: the ceiling there is measured at 4096^3. The efficiencies below are
  // calibrated on the CPU, so a device plan is a rough guide until calibrated there too.
  const int64_t gemm_size = options.device.is_cpu() ? 512 : 4096;
  // The median of 15 (a 512^3 GEMM takes about a millisecond: 3 repeats read as low as half the ceiling when
  // another process woke up, and every element-wise term is costed against this figure).
  plan.gemm_gflops = bench::gemm_gflops(gemm_size, gemm_size, gemm_size, 15, options.device);
  plan.fp64_gemm_gflops = bench::gemm_gflops(gemm_size, gemm_size, gemm_size, 15, options.device, torch::kFloat64);
  {  // the permutation loop at the step's N (its Gram matrices leave the caches at N in the thousands)
    int64_t n = 64;
    for (const PlanModelPair& pair : in.model_pairs)
      n = std::max<int64_t>(n, std::min<int64_t>(pair.n_eval, options.cka_max_tokens));
    torch::Tensor x = torch::randn({n, 8}).to(options.device), y = torch::randn({n, 8}).to(options.device);
    stats::GramCka gram(x, y);
    // At least two blocks of permutations per thread: the loop is parallel over blocks, as in the step.
    const int64_t reps = std::max<int64_t>(2 * stats::native::kGramBlock * std::max(1, runtime::threads()),
                                           int64_t(64.0 * 512.0 * 512.0 / double(n * n)));
    double seconds = bench::median_seconds([&] { gram.permutation_test(reps, 1, stats::GramCka::Form::gram); }, 3);
    plan.seconds_per_gather = seconds / (double(reps) * double(n) * double(n) / 2.0);
  }
  // The SAE passes' and dense MMAC's GEMMs are [rows x d] x [d x d_sae] and [d_sae x N] x [N x d_sae]: at real
  // widths they run several times faster than a 512^3 GEMM, so they are costed against a second ceiling
  // measured at the largest cell's SAE shape (one batch of rows), which tracks the width.
  {
    size_t widest = 0;
    double n_rows = 0;
    for (size_t c = 0; c < in.cells.size(); ++c)
      if (double(in.cells[c].dim) * double(in.cells[c].d_sae) > double(in.cells[widest].dim) * double(in.cells[widest].d_sae))
        widest = c;
    for (const PlanModelPair& pair : in.model_pairs) n_rows = std::max(n_rows, double(pair.n_eval));
    const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(options.batch_size, int64_t(n_rows)));
    plan.sae_gemm_gflops = bench::gemm_gflops(rows, in.cells[widest].dim, in.cells[widest].d_sae, 3, options.device);
  }
  return plan;
}

Plan estimate_plan(const PlanInput& in, const TransferOptions& options, const PlanRates& rates) {
  Plan plan;
  plan.gemm_gflops = rates.gemm_gflops;
  plan.sae_gemm_gflops = rates.sae_gemm_gflops;
  plan.seconds_per_gather = rates.seconds_per_gather;
  // The efficiencies of fp64 work below were fitted against the fp32 512^3 ceiling on the Intel machine, where
  // fp64 GEMMs ran at 0.40 of the fp32 rate (bench/RESULTS.md, eighth session). They are converted at that ratio
  // and costed against the fp64 ceiling measured here: on the AVX2 EPYC fp64 runs at 0.45-0.55 of fp32, and
  // costed against the fp32 ceiling its maps were planned 1.8x high. Without a measured fp64 rate, the fitted
  // ratio stands.
  constexpr double kFp64RatioWhereFitted = 0.40;
  plan.fp64_gemm_gflops = rates.fp64_gemm_gflops > 0 ? rates.fp64_gemm_gflops : kFp64RatioWhereFitted * rates.gemm_gflops;
  auto add_at = [&](const std::string& term, double flops, double efficiency, double gflops) {
    plan.flops[term] += flops;
    plan.seconds[term] += flops / (gflops * 1e9 * efficiency);
  };
  // fp64 work (the maps, CKA, ridge, decoder, bootstraps, the maps applied): `efficiency` is its fraction of the
  // fp32 512^3 ceiling where fitted, costed at the fp64 ceiling. Its FLOPs are also counted apart, for `bench
  // transfer`'s floor at the fp64 ceiling.
  auto add = [&](const std::string& term, double flops, double efficiency) {
    add_at(term, flops, efficiency / kFp64RatioWhereFitted, plan.fp64_gemm_gflops);
    plan.fp64_flops[term] += flops;
  };
  // Efficiencies (achieved fraction of the ceiling the term is costed against), calibrated on `strata bench
  // transfer` at widths 256 and 512 (bench/RESULTS.md) and on the default run. Against the 512^3 ceiling (fp32,
  // converted as above): fp64 GEMMs (kF64) and the maps' and ridge's fp64 work with its SVDs and solves (kFit). Against the SAE-shape
  // ceiling: the encoder and dense decoder GEMMs (kSaeGemm), TopK decodes as k row gathers per token (kGather,
  // memory-bound), dense MMAC as large GEMMs (kDenseMmac) and sparse MMAC as sparse x dense products.
  // The permutation test's feature form (one fp32 GEMM per batch of permutations, with a gather of rows): about
  // 250 GFLOP/s with its gather at (N, dx, dy) = (1024, 96, 64) and (2048, 256, 192) (test_stats
  // cka_permutation_forms_agree_and_cost) against a 512^3 ceiling of 400-450 on that machine.
  // The bootstrap's fp64 GEMMs [N, N] x [N, B]: 115 GFLOP/s on the default run (N 1024, B 200) and 168 on
  // `bench transfer` at N 2048, B 1000, against a 512^3 ceiling of about 440.
  constexpr double kF64 = 0.35, kFit = 0.25, kSvd = 0.05, kSmall = 0.1, kBootstrap = 0.3, kPermutationFeatures = 0.55;
  // kSaeGemm includes the ReLU / top-k scan of the pre-activations of dense passes (a least-squares fit of 16
  // measured SAE-pass terms gave 0.52 and no separate per-pre-activation cost). A TopK pass in the sparse form
  // (top k of the pre-activations, then ReLU of those k) runs its encoder GEMM at kSaeSparseEncoder and pays
  // kPerPreActivation (FLOP-equivalents at the 512^3 ceiling, ~0.9 ns) per pre-activation for the selection:
  // fitted on the Zen 5 machine's own passes at (d, d_sae, n) = (256, 4096, 8192), (512, 8192, 8192) (0.090 and
  // 0.28 s planned per pass against 0.098 and 0.284 measured) and (2048, 16384, 16384) (3.5 s against 3.0).
  // kDenseMmac: measured at (d_sae, L0) = (16384 and 20480, 4000) on 16384 tokens (`bench transfer --widths 2048
  // 2560 --expansion 8 --l0 4000 --layers 2`: 1180 s against 730 planned at 0.8): besides its GEMMs, each block of
  // B is densified again for every block of A, from codes spilled to disk.
  constexpr double kSaeGemm = 0.5, kSaeSparseEncoder = 0.8, kGather = 0.1, kDenseMmac = 0.5, kSparseMmac = 0.031;
  constexpr double kPerPreActivation = 400;
  // Sparse MMAC also builds the m_i x m_j correlation (fp64 centring, scaling, both maxima): FLOP-equivalents
  // per latent pair at the 512^3 ceiling. With kSparseMmac, fitted on benches at (d_sae, L0) = (4096, 16) and
  // (3072, 48); (8192, 32) is then planned at 43 s against 40.5 s measured. That is the tensor form (portable
  // path); the host kernels fold each row of correlations into both maxima in one pass (kPerHostCorrelation)
  // and, for two sparse code sets, sum the cross moments token by token (kPerHostProduct per product of a code
  // of A and a code of B on the same token). Those two were fitted on `bench transfer` at (d_sae, L0) = (4096, 16),
  // (4096, 192) and (8192, 32): about 2.1 ns per latent pair (two fp64 divisions, kept for the tensor form's bits)
  // and 1.75 ns per product (memory-bound: B's codes of each token are read again for every code of A).
  // Both were fitted on one thread (the host kernels' parallel loops then ran serially, see
  // runtime::parallel_loop_threads) and are divided by the threads those loops run on.
  constexpr double kPerCorrelation = 3600, kPerHostCorrelation = 820, kPerHostProduct = 680;
  const bool host_kernels = runtime::kernel_path(options.device) == runtime::KernelPath::native;
  const double host_threads = host_kernels ? double(runtime::parallel_loop_threads()) : 1.0;
  // An SAE pass's element-wise work, in FLOP-equivalents at the 512^3 ceiling (measured seconds per element
  // times the ceiling, from the same fit): the selection and bookkeeping of each TopK code entry (sparse form);
  // TopK codes in dense form (selection, scatter, per-latent sums) per element; ReLU / JumpReLU codes' per-latent
  // sums per element (fitted on the default run's ReLU SAEs, which the benches do not exercise).
  constexpr double kPerTopkEntry = 31000, kPerDenseTopkCode = 3400, kPerDenseCode = 400;
  // Element-wise work costs time but is no FLOP of the GEMM fraction: only its seconds are counted.
  auto add_elementwise = [&](const std::string& term, double flop_equivalents) {
    plan.seconds[term] += flop_equivalents / (plan.gemm_gflops * 1e9);
  };
  auto add_sae = [&](const std::string& term, double flops, double efficiency) {
    add_at(term, flops, efficiency, plan.sae_gemm_gflops);
  };
  // MMAC of `codings` code pairs of cells i and j over n tokens. TopK codes have a known density k / d_sae:
  // below kMmacSparseBelow their cross moments are sparse x dense products (nnz x d_sae_j); other codes are
  // costed as dense GEMMs over all latents (a bound: dead latents drop out).
  auto mmac_cost = [&](const std::string& term, size_t i, size_t j, double n, double codings) {
    const double mi = double(in.cells[i].d_sae), mj = double(in.cells[j].d_sae);
    const double ki = in.cells[i].expected_l0, kj = in.cells[j].expected_l0;
    if (host_kernels && ki > 0 && kj > 0 && (ki / mi) * (kj / mj) < kMmacSparseProductBelow) {
      add_elementwise(term, codings * (n * ki * kj * kPerHostProduct + mi * mj * kPerHostCorrelation) / host_threads);
    } else if (ki > 0 && ki < kMmacSparseBelow * mi) {
      add_sae(term, codings * 2 * n * ki * mj, kSparseMmac);
      add_elementwise(term, codings * mi * mj * (host_kernels ? kPerHostCorrelation / host_threads : kPerCorrelation));
    } else
      add_sae(term, codings * 2 * n * mi * mj, kDenseMmac);
  };
  // An SAE pass over n rows of cell c (encoder GEMM; the decoder as a GEMM or, for TopK codes in their sparse
  // form (metrics.hpp kTopkSparseBelow), as k decoder-row gathers per token; the per-latent moments if asked).
  // A random dictionary (no decoder) codes top-k at the SAE's L0 (`topk` = the expected L0, rounded as the pass
  // rounds the measured one); where that L0 is unknown, in dense form.
  auto sae_pass = [&](const std::string& term, size_t c, double n, bool decode, bool moments, double topk) {
    const double d = double(in.cells[c].dim), m = double(in.cells[c].d_sae);
    const bool sparse = topk > 0 && topk < kTopkSparseBelow * m;
    add_sae(term, 2 * n * d * m, sparse ? kSaeSparseEncoder : kSaeGemm);
    if (decode) add_sae(term, sparse ? 2 * n * topk * d : 2 * n * d * m, sparse ? kGather : kSaeGemm);
    if (sparse) add_elementwise(term, n * m * kPerPreActivation + n * topk * kPerTopkEntry);
    else if (topk > 0) add_elementwise(term, n * m * kPerDenseTopkCode);
    else if (moments) add_elementwise(term, n * m * kPerDenseCode);
  };
  // An SAE load (safetensors read into owned tensors, per byte; 11.5 s for 34 loads of 270-420 MB on the bench
  // above, about 1.3 ns per byte): once per cell and model pair, and under bounded residency each time a cell
  // pair brings in a cell's SAE, which then also makes the cell's centred fitting rows again from the store
  // (gather, fp64, scale, centre: per element). A model pair held whole (held_bytes under the bound: the zoo's)
  // does neither.
  constexpr double kPerSaeByte = 360, kPerFitElement = 700;
  auto sae_bytes = [&](size_t c) { return in.cells[c].sae_bytes(); };
  const double perms = double(options.cka_permutations), boots = double(in.replicates);
  const double k = double(options.top_k);
  // A model pair's cells (a's, then b's), and whether the step holds them one cell pair at a time.
  auto involved_in = [&](const PlanModelPair& pair) {
    std::vector<size_t> cells = in.model_cells[pair.a];
    if (pair.a != pair.b) cells.insert(cells.end(), in.model_cells[pair.b].begin(), in.model_cells[pair.b].end());
    return cells;
  };
  auto bounded_residency = [&](const PlanModelPair& pair, const std::vector<size_t>& involved) {
    return held_bytes(in.cells, involved, pair.n_fit) > double(options.bounded_residency_above_bytes);
  };
  for (const PlanModelPair& pair : in.model_pairs) {
    const size_t a = pair.a, b = pair.b;
    const double n_fit = double(pair.n_fit), n_eval = double(pair.n_eval);
    const double n_cka = std::min(n_eval, double(options.cka_max_tokens)), n_docs = double(in.eval_documents);
    const std::vector<size_t> involved = involved_in(pair);
    const bool bounded = bounded_residency(pair, involved);
    for (size_t c : involved) {  // per cell, once per model pair
      const double d = double(in.cells[c].dim);
      add_elementwise("residency", sae_bytes(c) * kPerSaeByte);
      sae_pass("sae_own", c, n_eval, true, true, double(in.cells[c].topk));
      sae_pass("sae_random", c, n_eval, false, true,
               in.cells[c].expected_l0 > 0 ? std::max(1.0, std::round(in.cells[c].expected_l0)) : 0.0);
      add("maps", 2 * n_fit * d * d, kFit);
      add("cka_linear", 2 * n_eval * d * d, kF64);
      add("cka_gram", 2 * n_cka * n_cka * d, kF64);
      // K w and (K o K) w, made when the cell meets another cell (a cell with itself has CKA 1, no bootstrap)
      if (boots > 0 && involved.size() > 1) add("cka_bootstrap", 2 * 2 * n_cka * n_cka * boots, kBootstrap);
    }
    for (size_t i : in.model_cells[a]) {
      bool i_loaded = false;
      for (size_t j : in.model_cells[b]) {
        if (a == b && j < i) continue;
        if (!in.sources.count(i) && !in.sources.count(j)) continue;
        const double di = double(in.cells[i].dim), dj = double(in.cells[j].dim);
        if (bounded && !i_loaded) {
          add_elementwise("residency", sae_bytes(i) * kPerSaeByte);
          add_elementwise("maps", n_fit * di * kPerFitElement);
          i_loaded = true;
        }
        if (bounded && j != i) {
          add_elementwise("residency", sae_bytes(j) * kPerSaeByte);
          add_elementwise("maps", n_fit * dj * kPerFitElement);
        }
        const double mi = double(in.cells[i].d_sae), mj = double(in.cells[j].d_sae);
        mmac_cost("mmac", i, j, n_eval, 2);  // own and random codes
        add("maps", (i == j ? 2.0 : 4.0) * n_fit * di * dj + (a != b ? 2.0 : 1.0) * 20 * di * dj * std::min(di, dj),
            i == j ? kFit : kSvd + kFit);
        if (i != j) {
          add("cka_linear", 2 * n_eval * di * dj, kF64);
          if (boots > 0) add("cka_bootstrap", 2 * n_cka * n_cka * boots, kBootstrap);
          if (di * dj < stats::GramCka::feature_form_ratio(runtime::kernel_path(options.device)) * n_cka)
            add_at("cka_permutations", perms * 2 * n_cka * di * dj, kPermutationFeatures, plan.gemm_gflops);
          else
            plan.gathers += perms * n_cka * n_cka / 2;
        }
        for (int direction = 0; direction < (i == j ? 1 : 2); ++direction) {
          const size_t src = direction ? j : i, tgt = direction ? i : j;
          if (!in.sources.count(src)) continue;
          const double ds = double(in.cells[src].dim), dt = double(in.cells[tgt].dim);
          const double mt = double(in.cells[tgt].d_sae);
          sae_pass("sae_mapped", src, n_eval, true, true, double(in.cells[src].topk));
          sae_pass("sae_null", src, n_eval, true, false, double(in.cells[src].topk));
          // The maps applied in fp64 and each Procrustes map's alpha (Z^T Z Q): within a model the map is the
          // identity (a scaling, element-wise, no GEMM), so only the null map has them there.
          const double procrustes_maps = a != b ? 2.0 : 1.0;
          if (a != b) add("sae_mapped", 2 * n_eval * dt * ds, kF64);
          add("sae_null", 2 * n_eval * dt * ds, kF64);
          add("maps", procrustes_maps * 2 * dt * dt * ds, kFit);
          add("ridge", dt * dt * dt + 4 * dt * dt * ds, kFit);  // solve, and <W, A^T A W> from moments
          add("decoder", 2 * k * mt * ds + (a != b ? 2 * mt * dt * ds : 0.0), kF64);
          if (boots > 0) add("q_bootstrap", 3 * 2 * boots * n_docs * ds, kSmall);
        }
      }
    }
    if (a == b)
      for (size_t c : in.model_cells[a])
        if (in.cells[c].has_ceiling && in.sources.count(c)) {
          add_elementwise("residency", 2 * sae_bytes(c) * kPerSaeByte);
          sae_pass("ceilings", c, n_eval, true, true, double(in.cells[c].topk));
          mmac_cost("ceilings", c, c, n_eval, 1);
        }
  }
  plan.seconds["cka_permutations"] += plan.gathers * plan.seconds_per_gather;
  // Peak memory (anonymous: the stores' pages are released after each read). Per model pair: every cell's
  // resident data (fp32 evaluation rows, the fitting and evaluation Grams d^2 fp64, the centred N_cka^2 Gram fp64
  // + fp32; codes under options.spill_codes_above_bytes), what it holds of SAEs and centred fitting rows (fp64):
  // one cell pair's under bounded residency, else every cell's (held_bytes), i's centred evaluation rows fp64
  // for CKA, and the largest transient of: the null's shuffled copy of
  // fitting rows; a mapped SAE pass (the map's rows: fp64 scaled and centred, fp64 mapped, fp32 result, 20 B per
  // element of n_eval d, and the pass's working set per
  // [batch, d_sae] element: pre-activations and codes in fp32 and the moments' fp64 copy and square, 24 B, or
  // ~8 B for TopK codes in the sparse form); MMAC's two
  // dense blocks and a block's entries (~24 B each); a cell's preparation (the fitting rows' read, fp32, and
  // their fp64 copy scaled and centred in place: 12 B per element; the kept codes of a TopK SAE, 12 B per entry
  // as produced + 8 B placed: codes at the expected L0; a non-TopK SAE without a recorded L0 is not counted).
  const int64_t mmac_block_bytes = int64_t(256) << 20;
  for (const PlanModelPair& pair : in.model_pairs) {
    const double n_fit = double(pair.n_fit), n_eval = double(pair.n_eval);
    const double n_cka = std::min(n_eval, double(options.cka_max_tokens));
    double bytes = double(in.replicates) * double(in.eval_documents) * 8 + 512.0 * (1 << 20);
    double widest_sae_bytes = 0, widest_d = 0, transient = 0;
    const std::vector<size_t> involved = involved_in(pair);
    for (size_t c : involved) {
      const double d = double(in.cells[c].dim), m = double(in.cells[c].d_sae), k = double(in.cells[c].topk);
      const double l0 = in.cells[c].expected_l0;
      const double codes = n_eval * l0 * 8;  // own, and random at the same L0
      bytes += n_eval * d * 4 + 2 * d * d * 8 + n_cka * n_cka * 12 + (codes <= double(options.spill_codes_above_bytes) ? 2 * codes : 0.0);
      widest_sae_bytes = std::max(widest_sae_bytes, in.cells[c].sae_bytes());
      widest_d = std::max(widest_d, d);
      const double block_entries = double(mmac_block_bytes) / (2 * 4 * n_eval) * n_eval * std::min(1.0, l0 / m);
      const bool sparse_pass = k > 0 && k < kTopkSparseBelow * m;
      const double pass = double(std::min<int64_t>(options.batch_size, int64_t(n_eval))) * m * (sparse_pass ? 8 : 24);
      transient = std::max({transient, n_fit * d * 8, 20 * n_eval * d + pass,
                            double(mmac_block_bytes) + 24 * block_entries, n_fit * d * 12, n_eval * k * 20});
    }
    bytes += (bounded_residency(pair, involved) ? 2 * widest_sae_bytes + 2 * n_fit * widest_d * 8
                                                : held_bytes(in.cells, involved, pair.n_fit)) +
             n_eval * widest_d * 8 + transient;
    plan.peak_bytes = std::max(plan.peak_bytes, bytes);
  }
  for (const auto& [term, seconds] : plan.seconds) plan.total_seconds += seconds;
  for (const auto& [term, flops] : plan.flops) plan.total_flops += flops;
  return plan;
}


}  // namespace strata::transfer
