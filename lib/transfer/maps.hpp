// Maps target -> source between two cells' representation spaces, fitted on paired fitting rows.
//   identity (same model):  y = z s_t / s_s
//   Procrustes (across):    Q = U V^T from the thin SVD Z^T Y = U S V^T (Z target, Y source, both centred and
//                           scaled); y = alpha (z - mean_Z) Q + mean_Y, alpha^2 = tr(Y^T Y) / tr(Q^T Z^T Z Q)
//   ridge (map_r2):         W = (Z^T Z + lambda I)^-1 Z^T Y, lambda = ridge_lambda tr(Z^T Z) / d_t
//                           evaluated on held-out rows by their moments: with A = Z_eval - mean_Z and
//                           B = Y_eval - mean_Y, sum||B - A W||^2 = ||B||^2 - 2 <W, A^T B> + <W, A^T A W>
// Both directions of a cell pair share one cross product C = Z^T Y and one SVD: the SVD of C^T is V S U^T,
// so Q(s -> t) = V U^T = Q(t -> s)^T. Per cell, the centred rows and their Gram Z^T Z are made once.
#pragma once
#include <torch/types.h>

namespace strata::transfer {

// A cell's scaled fitting rows on one model pair's selection, centred, with Z^T Z and tr(Z^T Z) (fp64).
struct FitRows {
  torch::Tensor centred, mean, gram;
  double trace = 0;
};
// From raw rows [n_fit, d] (any float dtype) and the cell's scaling factor: Z = fp64(raw) * scale - mean.
// Made in one fp64 buffer, scaled and centred in place (a [32768, 2560] cell's rows are 671 MB in fp64).
FitRows fit_rows(const torch::Tensor& raw, double scale = 1.0);
// The same centred rows again, about a known mean: the same bits as fit_rows(raw, scale).centred.
torch::Tensor centred_rows(const torch::Tensor& raw, double scale, const torch::Tensor& mean);

// An affine map from scaled target space into RAW source space: y = ((z_scaled - mean_in) Q alpha + mean_out) / s_src.
struct AffineMap {
  torch::Tensor mean_in, linear, mean_out;  // fp64; linear undefined = identity
  double alpha = 1, target_scale = 1, source_scale = 1;
  torch::Tensor apply(const torch::Tensor& raw_target) const;  // raw fp32 [n, d_t] -> raw fp32 [n, d_s]
};

// The Procrustes map with orthogonal factor q [d_t, d_s] (stats::procrustes_from_cross of Z^T Y), scaled to
// the source's total variance.
AffineMap procrustes_map(const torch::Tensor& q, const FitRows& target, const FitRows& source, double target_scale,
                         double source_scale);

// Held-out R^2 of the ridge map target -> source: 1 - sum||y - yhat||^2 / sum||y - mean y||^2, fitted from
// Z^T Z (target.gram) and cross = Z^T Y; z_eval, y_eval scaled (not centred) evaluation rows.
double ridge_r2(const FitRows& target, const FitRows& source, const torch::Tensor& cross, double ridge_lambda,
                const torch::Tensor& z_eval, const torch::Tensor& y_eval);

// A cell's raw evaluation rows X by their moments (the CKA side's, stats::CkaSide): the mean, Xc^T Xc about it,
// and the count. In scaled space about the fitting mean, A = s X - mean_fit = s Xc + 1 delta^T with
// delta = s mean - mean_fit, so A_t^T A_s = s_t s_s Xc_t^T Xc_s + n delta_t delta_s^T: the evaluation's
// cross products come from the CKA's, and no ordered pair passes over the rows.
struct EvalMoments {
  torch::Tensor mean, gram;  // fp64 [d], [d, d] (raw units)
  int64_t n = 0;
};
// The same R^2 as the row form above (equal to rounding: a difference of sums instead of a sum of squared
// differences, fine in fp64 while R^2 is not within ~1e-10 of 1), from xc_cross = Xc_t^T Xc_s [d_t, d_s].
double ridge_r2(const FitRows& target, const FitRows& source, const torch::Tensor& cross, double ridge_lambda,
                const EvalMoments& target_eval, const EvalMoments& source_eval, const torch::Tensor& xc_cross,
                double target_scale, double source_scale);

}  // namespace strata::transfer
