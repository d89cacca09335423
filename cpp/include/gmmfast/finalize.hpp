// finalize: EM statistics -> mixture parameters (the M-step's closed form), float64.
#pragma once

#include "gmmfast/mixture.hpp"

namespace gmmfast {

/// Output buffers of finalize (all float64, caller-allocated).
struct FinalizeOutput {
    double* weights = nullptr;          ///< size K, sums to one
    double* means = nullptr;            ///< size K * D
    double* covariances = nullptr;      ///< size param_size(cov, K, D)
    double* prec_chol = nullptr;        ///< size param_size(cov, K, D), upper triangular
    double* log_det_chol = nullptr;     ///< size K: Σ_j log U_k[j, j] (tied: the same for all k)
};

/// Turns statistics (see Stats) into parameters exactly as scikit-learn's M-step does:
///   n_k = nk + nk_eps (scikit-learn adds 10 * machine epsilon of the data's dtype),
///   π_k = n_k / Σ n_k, μ_k = (Σ_i r_ik x_i) / n_k, covariances divided by n_k (tied: by
///   Σ n_k; spherical: the mean of the diagonal), reg_covar added to the diagonal,
///   precision Cholesky U_k = L_k^{-T} where L_k is the Cholesky factor of Σ_k.
///
/// @param nk, s1, s2  statistics (Stats) computed with the same `centres`
/// @param centres     size K * D
/// @return -1 on success, or the index of the first component whose covariance is not
///         numerically positive definite (a Cholesky pivot <= D·eps·max diagonal; for
///         tied: 0). Outputs are then unspecified.
int64_t finalize(Covariance cov, int64_t K, int64_t D, const double* nk, const double* s1,
                 const double* s2, const double* centres, double reg_covar, double nk_eps,
                 const FinalizeOutput& out);

/// Precision Cholesky and its log-determinant from covariances (lower Cholesky, then
/// U = L^{-T}). Returns -1, or the first component that is not positive definite.
int64_t precision_cholesky_from_covariances(Covariance cov, int64_t K, int64_t D,
                                            const double* covariances, double* prec_chol,
                                            double* log_det_chol);

}  // namespace gmmfast
