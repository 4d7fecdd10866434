// Hand-written CPU kernels for SAE training: the element-wise and sparse parts of the forward/backward
// pass, fused so that each [batch, d_sae] buffer is touched as few times as possible. The GEMMs stay in
// BLAS (through LibTorch). Every kernel works on a row range, so callers parallelise over fixed chunks
// and reduce per-chunk partial sums in chunk order: results do not depend on the thread count.
// Each kernel is compiled for AVX-512, AVX2 and baseline x86-64 and picked at load time.
#pragma once
#include <cstdint>

namespace strata::sae::kernels {

// f = max(f, 0) in place over rows [r0, r1) of f [*, n]; colsum[j] += f[r, j]; returns the active count.
int64_t relu_rows(float* f, int64_t n, int64_t r0, int64_t r1, float* colsum);

// e = x_hat - x in place over rows [r0, r1) of [*, n]; colsum[j] += e; returns sum e^2 (fp64).
double error_rows(float* x_hat, const float* x, int64_t n, int64_t r0, int64_t r1, float* colsum);

// ReLU backward with the L1 term: d = (f > 0) ? d + l1_grad[j] : 0 in place; colsum[j] += d.
void relu_backward_rows(float* d, const float* f, const float* l1_grad, int64_t n, int64_t r0, int64_t r1,
                        float* colsum);

// y[r, j] = x[r, j] - bias[j] over rows [r0, r1).
void subtract_bias_rows(float* y, const float* x, const float* bias, int64_t n, int64_t r0, int64_t r1);

// Adam (PyTorch semantics) over rows [r0, r1) of a [rows, n] parameter. When row_decay is given the
// gradient of row r is g[r] + row_decay[r] * p[r] (the L1 term's dependence on decoder-row norms).
struct AdamStep {
  float beta1, beta2, eps, step_size /* lr / bias_correction1 */, bias_correction2_sqrt;
};
void adam_rows(float* p, const float* g, float* m, float* v, const float* row_decay, int64_t n, int64_t r0,
               int64_t r1, const AdamStep& step);

// out[r] = ||W[r]|| (fp64 accumulation) for rows [r0, r1).
void row_norms(const float* W, int64_t n, int64_t r0, int64_t r1, float* out);
// W[r] /= ||W[r]|| (rows of zero norm are left alone).
void normalize_rows(float* W, int64_t n, int64_t r0, int64_t r1);
// g[r] -= (g[r] . W[r]) / ||W[r]||^2 * W[r]: removes the component that would change the row norm.
void project_out_parallel_rows(float* g, const float* W, int64_t n, int64_t r0, int64_t r1);

// Top-k of pre[r] (only among `candidates` when given) for rows [r0, r1): idx[r, :k] and
// val[r, :k] = max(pre, 0), in descending order of pre. With fewer than k candidates the remaining
// slots get val 0 (idx 0).
void topk_rows(const float* pre, const int32_t* candidates, int64_t n_candidates, int64_t n, int64_t k, int64_t r0,
               int64_t r1, int32_t* idx, float* val);

// out[r] = (bias or 0) + sum_e val[r, e] * W[idx[r, e]] for rows [r0, r1); W [*, n].
void sparse_decode_rows(const int32_t* idx, const float* val, int64_t k, const float* W, const float* bias,
                        int64_t n, int64_t r0, int64_t r1, float* out);

// dval[r, e] = val[r, e] > 0 ? scale * target[r] . W[idx[r, e]] : 0 for rows [r0, r1).
void sparse_dot_rows(const int32_t* idx, const float* val, int64_t k, const float* W, const float* target,
                     float scale, int64_t n, int64_t r0, int64_t r1, float* dval);

// The codes of a batch grouped by latent (CSR): entries offsets[j]..offsets[j+1] belong to latent j.
struct LatentEntries {
  const int64_t* offsets;  // [d_sae + 1]
  const int32_t* row;      // batch row of each entry
  const float* val;        // code value
  const float* dval;       // gradient of the loss w.r.t. the pre-activation
};
// For latents [j0, j1): dW_dec[j] += dec_scale * sum val * target[row]; dW_enc_t[j] += sum dval * xc[row];
// db_enc[j] += sum dval. Rows of dW_dec / dW_enc_t must be initialised by the caller.
void accumulate_latents(const LatentEntries& e, const float* target, float dec_scale, const float* xc, int64_t n,
                        int64_t j0, int64_t j1, float* dW_dec, float* dW_enc_t, float* db_enc);

}  // namespace strata::sae::kernels
