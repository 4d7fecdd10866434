#include "sae/kernels.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

// Adam takes square roots of second moments (never negative): no errno handling needed. No contraction of
// a * b + c into a fused multiply-add: the AVX2 and AVX-512 clones could fuse where the baseline clone cannot
// (one rounding instead of two), and SAEs trained on two CPUs would differ.
#pragma GCC optimize("no-math-errno", "fp-contract=off")

// One clone per ISA, chosen by the dynamic loader (ifunc) from the CPU's features. The GCC vector extension
// below is 16 floats wide: one zmm register under AVX-512, two ymm under AVX2, four xmm otherwise. Reductions
// always run in the same lane order and nothing is fused, so every clone produces the same bits
// (test_sae_gradients kernels_round_like_the_baseline_clone_on_every_cpu). Features, not "arch=" CPU models:
// an arch= clone is taken only on that Intel model, and an AMD Zen 4/5 with AVX-512 ran the baseline clone.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define STRATA_KERNEL __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define STRATA_KERNEL
#endif

namespace strata::sae::kernels {
namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
constexpr int64_t W = 16;

[[gnu::always_inline]] inline v16 load(const float* p) {
  v16 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
[[gnu::always_inline]] inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }
[[gnu::always_inline]] inline v16 splat(float x) { return v16{} + x; }
[[gnu::always_inline]] inline float hsum(v16 v) {
  float s = 0.0f;
  for (int i = 0; i < W; ++i) s += v[i];
  return s;
}
[[gnu::always_inline]] inline double hsum_d(v16 v) {
  double s = 0.0;
  for (int i = 0; i < W; ++i) s += double(v[i]);
  return s;
}

// dst += a * src over n floats.
[[gnu::always_inline]] inline void axpy(float* dst, float a, const float* src, int64_t n) {
  v16 va = splat(a);
  int64_t i = 0;
  for (; i + W <= n; i += W) store(dst + i, load(dst + i) + va * load(src + i));
  for (; i < n; ++i) dst[i] += a * src[i];
}

[[gnu::always_inline]] inline float dot(const float* a, const float* b, int64_t n) {
  v16 acc = {};
  int64_t i = 0;
  for (; i + W <= n; i += W) acc += load(a + i) * load(b + i);
  float s = hsum(acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

}  // namespace

STRATA_KERNEL
int64_t relu_rows(float* f, int64_t n, int64_t r0, int64_t r1, float* colsum) {
  int64_t active = 0;
  const v16 zero = {};
  for (int64_t r = r0; r < r1; ++r) {
    float* row = f + r * n;
    v16i count = {};
    int64_t j = 0;
    for (; j + W <= n; j += W) {
      v16 x = load(row + j);
      auto positive = x > zero;  // lanes: -1 where true
      x = positive ? x : zero;
      count -= positive;
      store(row + j, x);
      store(colsum + j, load(colsum + j) + x);
    }
    for (int i = 0; i < W; ++i) active += count[i];
    for (; j < n; ++j) {
      float x = row[j] > 0.0f ? row[j] : 0.0f;
      active += x > 0.0f;
      row[j] = x;
      colsum[j] += x;
    }
  }
  return active;
}

STRATA_KERNEL
double error_rows(float* x_hat, const float* x, int64_t n, int64_t r0, int64_t r1, float* colsum) {
  double sse = 0.0;
  for (int64_t r = r0; r < r1; ++r) {
    float* e = x_hat + r * n;
    const float* xr = x + r * n;
    v16 acc = {};
    int64_t j = 0;
    for (; j + W <= n; j += W) {
      v16 d = load(e + j) - load(xr + j);
      store(e + j, d);
      acc += d * d;
      store(colsum + j, load(colsum + j) + d);
    }
    double row_sse = hsum_d(acc);
    for (; j < n; ++j) {
      float d = e[j] - xr[j];
      e[j] = d;
      row_sse += double(d) * d;
      colsum[j] += d;
    }
    sse += row_sse;
  }
  return sse;
}

STRATA_KERNEL
void relu_backward_rows(float* d, const float* f, const float* l1_grad, int64_t n, int64_t r0, int64_t r1,
                        float* colsum) {
  const v16 zero = {};
  for (int64_t r = r0; r < r1; ++r) {
    float* dr = d + r * n;
    const float* fr = f + r * n;
    int64_t j = 0;
    for (; j + W <= n; j += W) {
      v16 g = load(dr + j) + load(l1_grad + j);
      g = load(fr + j) > zero ? g : zero;
      store(dr + j, g);
      store(colsum + j, load(colsum + j) + g);
    }
    for (; j < n; ++j) {
      float g = fr[j] > 0.0f ? dr[j] + l1_grad[j] : 0.0f;
      dr[j] = g;
      colsum[j] += g;
    }
  }
}

STRATA_KERNEL
void subtract_bias_rows(float* y, const float* x, const float* bias, int64_t n, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    int64_t j = 0;
    for (; j + W <= n; j += W) store(y + r * n + j, load(x + r * n + j) - load(bias + j));
    for (; j < n; ++j) y[r * n + j] = x[r * n + j] - bias[j];
  }
}

STRATA_KERNEL
void adam_rows(float* p, const float* g, float* m, float* v, const float* row_decay, int64_t n, int64_t r0,
               int64_t r1, const AdamStep& s) {
  const v16 b1 = splat(s.beta1), one_b1 = splat(1.0f - s.beta1), b2 = splat(s.beta2), one_b2 = splat(1.0f - s.beta2);
  const v16 eps = splat(s.eps), step = splat(s.step_size), inv_bc2 = splat(1.0f / s.bias_correction2_sqrt);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t o = r * n;
    const float decay = row_decay ? row_decay[r] : 0.0f;
    const v16 vdecay = splat(decay);
    int64_t j = 0;
    for (; j + W <= n; j += W) {
      v16 pj = load(p + o + j);
      v16 gj = load(g + o + j) + vdecay * pj;
      v16 mj = b1 * load(m + o + j) + one_b1 * gj;
      v16 vj = b2 * load(v + o + j) + one_b2 * gj * gj;
      v16 root;
#pragma GCC unroll 16
      for (int i = 0; i < W; ++i) root[i] = __builtin_sqrtf(vj[i]);
      store(m + o + j, mj);
      store(v + o + j, vj);
      store(p + o + j, pj - step * mj / (root * inv_bc2 + eps));
    }
    for (; j < n; ++j) {
      float pj = p[o + j];
      float gj = g[o + j] + decay * pj;
      float mj = s.beta1 * m[o + j] + (1.0f - s.beta1) * gj;
      float vj = s.beta2 * v[o + j] + (1.0f - s.beta2) * gj * gj;
      m[o + j] = mj;
      v[o + j] = vj;
      p[o + j] = pj - s.step_size * mj / (__builtin_sqrtf(vj) * (1.0f / s.bias_correction2_sqrt) + s.eps);
    }
  }
}

STRATA_KERNEL
void row_norms(const float* Wm, int64_t n, int64_t r0, int64_t r1, float* out) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = Wm + r * n;
    out[r] = float(std::sqrt(double(dot(row, row, n))));
  }
}

STRATA_KERNEL
void normalize_rows(float* Wm, int64_t n, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    float* row = Wm + r * n;
    float norm = float(std::sqrt(double(dot(row, row, n))));
    if (norm <= 0.0f) continue;
    float inv = 1.0f / norm;
    int64_t j = 0;
    for (; j + W <= n; j += W) store(row + j, load(row + j) * inv);
    for (; j < n; ++j) row[j] *= inv;
  }
}

STRATA_KERNEL
void project_out_parallel_rows(float* g, const float* Wm, int64_t n, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* w = Wm + r * n;
    float* gr = g + r * n;
    float ww = dot(w, w, n);
    if (ww <= 0.0f) continue;
    axpy(gr, -dot(gr, w, n) / ww, w, n);
  }
}

namespace {
// Min-heap on value of the k candidates kept so far (root = the current k-th largest).
[[gnu::always_inline]] inline void sift_down(float* hv, int32_t* hi, int64_t size, int64_t pos) {
  float v = hv[pos];
  int32_t id = hi[pos];
  for (;;) {
    int64_t child = 2 * pos + 1;
    if (child >= size) break;
    if (child + 1 < size && hv[child + 1] < hv[child]) ++child;
    if (!(hv[child] < v)) break;
    hv[pos] = hv[child];
    hi[pos] = hi[child];
    pos = child;
  }
  hv[pos] = v;
  hi[pos] = id;
}
}  // namespace

STRATA_KERNEL
void topk_rows(const float* pre, const int32_t* candidates, int64_t n_candidates, int64_t n, int64_t k, int64_t r0,
               int64_t r1, int32_t* idx, float* val) {
  // Almost every element fails the single comparison against the heap's root (the current k-th largest
  // value), so a row costs ~n compares plus O(k log(n/k) log k) heap updates.
  const int64_t count = candidates ? n_candidates : n;
  const int64_t kk = std::min(k, count);
  thread_local std::vector<int64_t> perm;
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = pre + r * n;
    int32_t* hi = idx + r * k;
    float* hv = val + r * k;
    for (int64_t c = 0; c < kk; ++c) {
      int32_t j = candidates ? candidates[c] : int32_t(c);
      hi[c] = j;
      hv[c] = row[j];
    }
    for (int64_t pos = kk / 2 - 1; pos >= 0; --pos) sift_down(hv, hi, kk, pos);
    if (kk > 0) {
      if (candidates) {
        for (int64_t c = kk; c < count; ++c) {
          float x = row[candidates[c]];
          if (!(x > hv[0])) continue;  // ties keep the earlier latent
          hv[0] = x;
          hi[0] = candidates[c];
          sift_down(hv, hi, kk, 0);
        }
      } else {
        for (int64_t j = kk; j < n; ++j) {
          float x = row[j];
          if (!(x > hv[0])) continue;
          hv[0] = x;
          hi[0] = int32_t(j);
          sift_down(hv, hi, kk, 0);
        }
      }
    }
    // Canonical order: descending value, ties by latent index.
    perm.resize(size_t(kk));
    for (int64_t s = 0; s < kk; ++s) perm[s] = s;
    std::sort(perm.begin(), perm.end(), [&](int64_t a, int64_t b) {
      return hv[a] > hv[b] || (hv[a] == hv[b] && hi[a] < hi[b]);
    });
    thread_local std::vector<int32_t> sorted_idx;
    thread_local std::vector<float> sorted_val;
    sorted_idx.resize(size_t(kk));
    sorted_val.resize(size_t(kk));
    for (int64_t s = 0; s < kk; ++s) {
      sorted_idx[s] = hi[perm[s]];
      sorted_val[s] = std::max(hv[perm[s]], 0.0f);
    }
    for (int64_t s = 0; s < kk; ++s) {
      hi[s] = sorted_idx[s];
      hv[s] = sorted_val[s];
    }
    for (int64_t s = kk; s < k; ++s) {
      hi[s] = 0;
      hv[s] = 0.0f;
    }
  }
}

STRATA_KERNEL
void sparse_decode_rows(const int32_t* idx, const float* val, int64_t k, const float* Wm, const float* bias,
                        int64_t n, int64_t r0, int64_t r1, float* out) {
  for (int64_t r = r0; r < r1; ++r) {
    float* o = out + r * n;
    if (bias)
      std::memcpy(o, bias, sizeof(float) * n);
    else
      std::memset(o, 0, sizeof(float) * n);
    for (int64_t e = 0; e < k; ++e) {
      float a = val[r * k + e];
      if (a != 0.0f) axpy(o, a, Wm + int64_t(idx[r * k + e]) * n, n);
    }
  }
}

STRATA_KERNEL
void sparse_dot_rows(const int32_t* idx, const float* val, int64_t k, const float* Wm, const float* target,
                     float scale, int64_t n, int64_t r0, int64_t r1, float* dval) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* t = target + r * n;
    for (int64_t e = 0; e < k; ++e) {
      int64_t q = r * k + e;
      dval[q] = val[q] > 0.0f ? scale * dot(t, Wm + int64_t(idx[q]) * n, n) : 0.0f;
    }
  }
}

STRATA_KERNEL
void accumulate_latents(const LatentEntries& e, const float* target, float dec_scale, const float* xc, int64_t n,
                        int64_t j0, int64_t j1, float* dW_dec, float* dW_enc_t, float* db_enc) {
  for (int64_t j = j0; j < j1; ++j) {
    float* dec = dW_dec + j * n;
    float* enc = dW_enc_t + j * n;
    float bias = 0.0f;
    for (int64_t q = e.offsets[j]; q < e.offsets[j + 1]; ++q) {
      const int64_t r = e.row[q];
      if (e.val[q] != 0.0f) axpy(dec, dec_scale * e.val[q], target + r * n, n);
      if (e.dval[q] != 0.0f) axpy(enc, e.dval[q], xc + r * n, n);
      bias += e.dval[q];
    }
    db_enc[j] += bias;
  }
}

}  // namespace strata::sae::kernels
