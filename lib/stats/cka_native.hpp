// The CKA permutation test's host loop (stats/cka.hpp, Gram form): for a block of up to kGramBlock
// permutations p_c of N tokens,
//   total_c = sum_i sum_j K_ij L_{p_c(i) p_c(j)} = sum_i [K_ii L_{p(i)p(i)} + 2 sum_{j>i} K_ij L_{p(i)p(j)}]
// over fp32 centred Gram matrices K and L (row-major N x N, symmetric), each row's upper part summed in fp32
// by four accumulators (j = i+1+q mod 4), the rest in fp64. Two forms with the same bits:
//  - reference: one permutation at a time, scalar (the definition; every CPU);
//  - vectorised: AVX-512 gathers across permutations (lane = one permutation's accumulator q), so each lane
//    runs exactly the reference's sequence of fp32 multiplies and adds, never a fused multiply-add.
// The vectorised form can run where the CPU has AVX-512F and N^2 fits an int32 gather index.
#pragma once
#include <cstdint>

namespace strata::stats::native {

constexpr int64_t kGramBlock = 8;  // permutations that share one pass over K

enum class GramLoop { reference, vectorised };

// Whether `vectorised` can run here (x86-64 with AVX-512F, and N^2 < 2^31).
bool gram_loop_vectorised_available(int64_t n);
// The form the permutation test uses: the faster of the two at this N on this CPU (timed once per process and
// N; the bits are the same either way), the reference where the vectorised form cannot run.
GramLoop default_gram_loop(int64_t n);

// perms[c] (c < count <= kGramBlock) each hold a permutation of 0..n-1; totals[c] receives the sum above.
void gram_permutation_sums(const float* k, const float* l, int64_t n, const int32_t* const* perms, int64_t count,
                           double* totals, GramLoop loop);

}  // namespace strata::stats::native
