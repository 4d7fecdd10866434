#include "stats/cka_native.hpp"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define STRATA_GRAM_LOOP_AVX512 1
#endif

namespace strata::stats::native {
namespace {

// The definition, one permutation at a time. Compiled for baseline x86-64 (no FMA): each term is an fp32
// multiply then an fp32 add.
void sums_reference(const float* k, const float* l, int64_t n, const int32_t* const* perms, int64_t count,
                    double* totals) {
  for (int64_t i = 0; i < n; ++i) {
    const float* krow = k + i * n;
    for (int64_t c = 0; c < count; ++c) {
      const int32_t* perm = perms[c];
      const float* lrow = l + int64_t(perm[i]) * n;
      float acc0 = 0, acc1 = 0, acc2 = 0, acc3 = 0;
      int64_t j = i + 1;
      for (; j + 4 <= n; j += 4) {
        acc0 += krow[j] * lrow[perm[j]];
        acc1 += krow[j + 1] * lrow[perm[j + 1]];
        acc2 += krow[j + 2] * lrow[perm[j + 2]];
        acc3 += krow[j + 3] * lrow[perm[j + 3]];
      }
      for (; j < n; ++j) acc0 += krow[j] * lrow[perm[j]];
      totals[c] += 2.0 * double((acc0 + acc1) + (acc2 + acc3)) + double(krow[i]) * double(lrow[perm[i]]);
    }
  }
}

#ifdef STRATA_GRAM_LOOP_AVX512
// Sixteen lanes = (accumulator q in {0,1} or {2,3}) x (permutation c in 0..7): two registers hold every
// accumulator of the block, and one gather fetches L_{p_c(i) p_c(j+q)} for all of them. Lanes of absent
// permutations (c >= count) repeat permutation 0 and are dropped. fp-contract off: a multiply and an add,
// each rounded, as in the reference.
__attribute__((target("avx512f"), optimize("fp-contract=off"))) void sums_avx512(
    const float* k, const float* l, int64_t n, const int32_t* const* perms, int64_t count, double* totals) {
  constexpr int64_t B = kGramBlock;
  static_assert(B == 8, "two accumulators x eight permutations fill one 16-lane register");
  thread_local std::vector<int32_t> transposed;  // transposed[j * 8 + c] = p_c(j)
  transposed.resize(size_t(n * B));
  int32_t* pt = transposed.data();
  for (int64_t c = 0; c < B; ++c) {
    const int32_t* perm = perms[c < count ? c : 0];
    for (int64_t j = 0; j < n; ++j) pt[j * B + c] = perm[j];
  }
  const __m512i first_pair = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const __m512i second_pair = _mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  alignas(64) float low[16], high[16];
  int32_t base[B];
  for (int64_t i = 0; i < n; ++i) {
    const float* krow = k + i * n;
    for (int64_t c = 0; c < B; ++c) base[c] = pt[i * B + c] * int32_t(n);  // row p_c(i) of L
    const __m256i base8 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(base));
    const __m512i base16 = _mm512_inserti64x4(_mm512_castsi256_si512(base8), base8, 1);
    __m512 acc01 = _mm512_setzero_ps(), acc23 = _mm512_setzero_ps();
    int64_t j = i + 1;
    for (; j + 4 <= n; j += 4) {
      const __m512i at01 = _mm512_add_epi32(_mm512_loadu_si512(pt + j * B), base16);
      const __m512i at23 = _mm512_add_epi32(_mm512_loadu_si512(pt + (j + 2) * B), base16);
      const __m512 l01 = _mm512_i32gather_ps(at01, l, 4);
      const __m512 l23 = _mm512_i32gather_ps(at23, l, 4);
      const __m512 k4 = _mm512_castps128_ps512(_mm_loadu_ps(krow + j));
      acc01 = _mm512_add_ps(acc01, _mm512_mul_ps(_mm512_permutexvar_ps(first_pair, k4), l01));
      acc23 = _mm512_add_ps(acc23, _mm512_mul_ps(_mm512_permutexvar_ps(second_pair, k4), l23));
    }
    _mm512_store_ps(low, acc01);
    _mm512_store_ps(high, acc23);
    for (int64_t c = 0; c < count; ++c) {
      const float* lrow = l + base[c];
      float acc0 = low[c], acc1 = low[B + c], acc2 = high[c], acc3 = high[B + c];
      for (int64_t t = j; t < n; ++t) acc0 += krow[t] * lrow[pt[t * B + c]];
      totals[c] += 2.0 * double((acc0 + acc1) + (acc2 + acc3)) + double(krow[i]) * double(lrow[pt[i * B + c]]);
    }
  }
}
#endif

}  // namespace

bool gram_loop_vectorised_available(int64_t n) {
#ifdef STRATA_GRAM_LOOP_AVX512
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return avx512 && n > 0 && n <= std::numeric_limits<int32_t>::max() / n;
#else
  (void)n;
  return false;
#endif
}

GramLoop default_gram_loop(int64_t n) {
  if (!gram_loop_vectorised_available(n)) return GramLoop::reference;
  // Both forms give the same bits, so the choice is speed alone, and it depends on the CPU: AVX-512 gathers
  // are fast on some (Intel server cores) and slower than scalar loads on others (AMD Zen 5 measured 1.5x
  // slower at N = 2048). Each form runs one block at this N, twice, once per process and N.
  static std::mutex mutex;
  static std::map<int64_t, GramLoop> chosen;
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = chosen.find(n); it != chosen.end()) return it->second;
  // Any values will do (only the speed is measured): a cheap xorshift into [-1, 1).
  std::vector<float> k(size_t(n * n)), l(size_t(n * n));
  uint32_t state = 2463534242u;
  auto next = [&] {
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    return float(int32_t(state)) * (1.0f / 2147483648.0f);
  };
  for (size_t e = 0; e < k.size(); ++e) {
    k[e] = next();
    l[e] = next();
  }
  std::mt19937_64 rng{uint64_t(n)};
  std::vector<std::vector<int32_t>> perms(kGramBlock, std::vector<int32_t>(size_t(n)));
  const int32_t* ptrs[kGramBlock];
  for (int64_t c = 0; c < kGramBlock; ++c) {
    std::iota(perms[c].begin(), perms[c].end(), 0);
    std::shuffle(perms[c].begin(), perms[c].end(), rng);
    ptrs[c] = perms[c].data();
  }
  auto seconds = [&](GramLoop loop) {
    double best = std::numeric_limits<double>::infinity(), totals[kGramBlock];
    for (int repeat = 0; repeat < 2; ++repeat) {
      const auto start = std::chrono::steady_clock::now();
      gram_permutation_sums(k.data(), l.data(), n, ptrs, kGramBlock, totals, loop);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    return best;
  };
  const GramLoop faster = seconds(GramLoop::vectorised) < seconds(GramLoop::reference) ? GramLoop::vectorised
                                                                                      : GramLoop::reference;
  chosen[n] = faster;
  return faster;
}

void gram_permutation_sums(const float* k, const float* l, int64_t n, const int32_t* const* perms, int64_t count,
                           double* totals, GramLoop loop) {
  if (count < 0 || count > kGramBlock)
    throw std::invalid_argument("gram_permutation_sums: a block holds 0 to " + std::to_string(kGramBlock) +
                                " permutations, not " + std::to_string(count));
  for (int64_t c = 0; c < count; ++c) totals[c] = 0;
  if (count == 0) return;
#ifdef STRATA_GRAM_LOOP_AVX512
  if (loop == GramLoop::vectorised && gram_loop_vectorised_available(n))
    return sums_avx512(k, l, n, perms, count, totals);
#endif
  (void)loop;  // the reference where the vectorised form cannot run
  sums_reference(k, l, n, perms, count, totals);
}

}  // namespace strata::stats::native
