// finalize: statistics -> parameters, in float64 (see gmmfast/finalize.hpp).
#include "gmmfast/finalize.hpp"
#include "gmmfast/runtime.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

namespace gmmfast {
namespace {

/// Lower Cholesky factor of the D x D matrix A (row-major), then U = L^{-T}: the
/// precision Cholesky of scikit-learn. Returns false when A is not numerically positive
/// definite: a pivot that is NaN, or not above D·eps·max_j A_jj. LAPACK's potrf only
/// rejects pivots <= 0, which lets rounding decide for singular matrices (a singleton
/// component with reg_covar = 0 has a rank-one covariance whose last pivots come out as
/// ±1e-46); the relative threshold rejects those deterministically and differs only for
/// condition numbers beyond ~1e15, whose precisions would be meaningless anyway.
bool precision_cholesky_one(const double* A, int64_t D, double* U, double* log_det) {
    std::vector<double> L(static_cast<std::size_t>(D * D), 0.0);
    double max_diag = 0.0;
    for (int64_t j = 0; j < D; ++j) max_diag = std::max(max_diag, std::fabs(A[j * D + j]));
    const double tiny = double(D) * std::numeric_limits<double>::epsilon() * max_diag;
    for (int64_t j = 0; j < D; ++j) {
        double s = A[j * D + j];
        for (int64_t p = 0; p < j; ++p) s -= L[j * D + p] * L[j * D + p];
        if (!(s > tiny) || !std::isfinite(s)) return false;
        const double ljj = std::sqrt(s);
        L[j * D + j] = ljj;
        for (int64_t i = j + 1; i < D; ++i) {
            double v = A[i * D + j];
            for (int64_t p = 0; p < j; ++p) v -= L[i * D + p] * L[j * D + p];
            L[i * D + j] = v / ljj;
        }
    }
    // M = L^{-1} (lower) by forward substitution, one column at a time; U = Mᵀ.
    std::fill(U, U + D * D, 0.0);
    double ld = 0.0;
    for (int64_t c = 0; c < D; ++c) {
        for (int64_t i = c; i < D; ++i) {
            double v = (i == c) ? 1.0 : 0.0;
            for (int64_t p = c; p < i; ++p) v -= L[i * D + p] * U[c * D + p];
            U[c * D + i] = v / L[i * D + i];  // U[c][i] = M[i][c]
        }
        ld -= std::log(L[c * D + c]);
    }
    *log_det = ld;
    return true;
}

}  // namespace

int64_t precision_cholesky_from_covariances(Covariance cov, int64_t K, int64_t D,
                                            const double* covariances, double* prec_chol,
                                            double* log_det_chol) {
    switch (cov) {
        case Covariance::Full: {
            std::atomic<int64_t> failed{-1};
            // num_threads through resolve_threads: one thread in a forked child (runtime.hpp)
            const bool parallel = K * D * D * D > (1 << 20);
#pragma omp parallel for schedule(dynamic, 1) if (parallel) num_threads(resolve_threads(0, parallel))
            for (int64_t k = 0; k < K; ++k) {
                if (!precision_cholesky_one(covariances + k * D * D, D, prec_chol + k * D * D,
                                            log_det_chol + k)) {
                    int64_t cur = failed.load();
                    while ((cur < 0 || k < cur) && !failed.compare_exchange_weak(cur, k)) {
                    }
                }
            }
            return failed.load();
        }
        case Covariance::Tied: {
            double ld = 0.0;
            if (!precision_cholesky_one(covariances, D, prec_chol, &ld)) return 0;
            std::fill(log_det_chol, log_det_chol + K, ld);
            return -1;
        }
        case Covariance::Diag:
            for (int64_t k = 0; k < K; ++k) {
                double ld = 0.0;
                for (int64_t d = 0; d < D; ++d) {
                    const double c = covariances[k * D + d];
                    if (!(c > 0.0) || !std::isfinite(c)) return k;
                    prec_chol[k * D + d] = 1.0 / std::sqrt(c);
                    ld += std::log(prec_chol[k * D + d]);
                }
                log_det_chol[k] = ld;
            }
            return -1;
        case Covariance::Spherical:
            for (int64_t k = 0; k < K; ++k) {
                const double c = covariances[k];
                if (!(c > 0.0) || !std::isfinite(c)) return k;
                prec_chol[k] = 1.0 / std::sqrt(c);
                log_det_chol[k] = double(D) * std::log(prec_chol[k]);
            }
            return -1;
    }
    return -1;
}

int64_t finalize(Covariance cov, int64_t K, int64_t D, const double* nk_raw, const double* s1,
                 const double* s2, const double* centres, double reg_covar, double nk_eps,
                 const FinalizeOutput& out) {
    // n_k with scikit-learn's 10·eps; δ_k = μ_k - c_k where μ_k = (Σ r x)/n_k exactly as
    // scikit-learn computes it: Σ r x = s1 + nk·c, so δ = (s1 - eps·c)/n_k.
    std::vector<double> nk(static_cast<std::size_t>(K)), delta(static_cast<std::size_t>(K * D));
    double total = 0.0;
    for (int64_t k = 0; k < K; ++k) {
        nk[k] = nk_raw[k] + nk_eps;
        total += nk[k];
    }
    for (int64_t k = 0; k < K; ++k) {
        out.weights[k] = nk[k] / total;
        for (int64_t d = 0; d < D; ++d) {
            const int64_t j = k * D + d;
            delta[j] = (s1[j] - nk_eps * centres[j]) / nk[k];
            out.means[j] = centres[j] + delta[j];
        }
    }
    // Covariance about μ from statistics about c:
    //   Σ r (x-μ)(x-μ)ᵀ = S2 - s1 δᵀ - δ s1ᵀ + nk δ δᵀ   (nk without eps).
    switch (cov) {
        case Covariance::Full:
            for (int64_t k = 0; k < K; ++k) {
                const double* a = s1 + k * D;
                const double* b = delta.data() + k * D;
                const double* S = s2 + k * D * D;
                double* C = out.covariances + k * D * D;
                for (int64_t l = 0; l < D; ++l)
                    for (int64_t j = 0; j < D; ++j)
                        C[l * D + j] = (S[l * D + j] - a[l] * b[j] - b[l] * a[j] + nk_raw[k] * b[l] * b[j]) / nk[k] +
                                       (l == j ? reg_covar : 0.0);
            }
            break;
        case Covariance::Tied: {
            double* C = out.covariances;
            std::copy(s2, s2 + D * D, C);
            for (int64_t k = 0; k < K; ++k) {
                const double* a = s1 + k * D;
                const double* b = delta.data() + k * D;
                for (int64_t l = 0; l < D; ++l)
                    for (int64_t j = 0; j < D; ++j)
                        C[l * D + j] -= a[l] * b[j] + b[l] * a[j] - nk_raw[k] * b[l] * b[j];
            }
            for (int64_t l = 0; l < D; ++l)
                for (int64_t j = 0; j < D; ++j) C[l * D + j] = C[l * D + j] / total + (l == j ? reg_covar : 0.0);
            break;
        }
        case Covariance::Diag:
            for (int64_t j = 0; j < K * D; ++j) {
                const int64_t k = j / D;
                out.covariances[j] =
                    (s2[j] - 2.0 * s1[j] * delta[j] + nk_raw[k] * delta[j] * delta[j]) / nk[k] + reg_covar;
            }
            break;
        case Covariance::Spherical:
            for (int64_t k = 0; k < K; ++k) {
                double v = s2[k];
                for (int64_t d = 0; d < D; ++d) {
                    const int64_t j = k * D + d;
                    v += -2.0 * s1[j] * delta[j] + nk_raw[k] * delta[j] * delta[j];
                }
                out.covariances[k] = v / (nk[k] * double(D)) + reg_covar;
            }
            break;
    }
    return precision_cholesky_from_covariances(cov, K, D, out.covariances, out.prec_chol,
                                               out.log_det_chol);
}

}  // namespace gmmfast
