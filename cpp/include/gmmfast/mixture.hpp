// Shared types of the gmmfast kernels: covariance types, a read-only view of a
// Gaussian mixture, statistics buffers and execution options.
//
// Conventions (all arrays are dense, row-major, C order):
//   N  number of samples, D number of features, K number of components.
//   X  size N * D.
//   Parameters follow scikit-learn's precision-Cholesky parameterisation: the
//   precision matrix of component k is U_k U_kᵀ with U_k upper triangular, and
//   log N(x | μ_k, Σ_k) = -½ (D log 2π + ‖(x - μ_k)ᵀ U_k‖²) + Σ_j log U_k[j, j].
//
// Nothing in this header depends on Python or torch: the kernels can be used from
// plain C++ (see cpp/README.md).
#pragma once

#include <cstdint>

namespace gmmfast {

enum class Covariance : int { Full = 0, Tied = 1, Diag = 2, Spherical = 3 };

/// Number of scalars in the precision Cholesky (and covariance) of a covariance type:
/// full K*D*D, tied D*D, diag K*D, spherical K.
int64_t param_size(Covariance cov, int64_t K, int64_t D);

/// A Gaussian mixture, borrowed (the kernels never keep the pointers).
template <class T>
struct Mixture {
    int64_t K = 0;
    int64_t D = 0;
    Covariance cov = Covariance::Full;
    const T* log_weights = nullptr;  ///< size K; -inf (weight 0) is allowed
    const T* means = nullptr;        ///< size K * D
    /// full: K * D * D, tied: D * D (upper triangular, entries below the diagonal
    /// must be zero), diag: K * D, spherical: K. Diagonal entries must be > 0.
    const T* prec_chol = nullptr;
};

/// Sufficient statistics of one pass of EM, always float64, centred at per-component
/// centres c_k. With r_ik = g_i · p(k | x_i) (g_i the sample weight, 1 by default):
///   log_likelihood = Σ_i g_i log p(x_i)
///   weight_sum     = Σ_i g_i
///   nk[k]          = Σ_i r_ik                                         size K
///   s1[k, :]       = Σ_i r_ik (x_i - c_k)                             size K * D
///   s2             = Σ_i r_ik (x_i - c_k)(x_i - c_k)ᵀ in the covariance type's form:
///                    full K * D * D, tied D * D (summed over k),
///                    diag K * D (the diagonal), spherical K (the trace).
/// Statistics are plain sums: the statistics of two chunks of rows, summed, are those
/// of the concatenated rows (with the same centres).
struct Stats {
    double log_likelihood = 0.0;
    double weight_sum = 0.0;
    double* nk = nullptr;
    double* s1 = nullptr;
    double* s2 = nullptr;
};

/// A cooperative cancellation hook. The calling thread polls it between row blocks;
/// when it returns true the kernel stops early and reports Status::Interrupted.
struct Cancel {
    bool (*poll)(void* ctx) = nullptr;
    void* ctx = nullptr;
};

/// How to run a kernel.
struct Exec {
    int n_threads = 0;               ///< <= 0: OpenMP's default (OMP_NUM_THREADS or all cores)
    const Cancel* cancel = nullptr;  ///< optional
};

enum class Status : int { Ok = 0, Interrupted = 1 };

/// Outcome of a kernel call. first_bad_row is the smallest row index whose
/// log-likelihood was not finite (NaN or ±inf in X, or an overflow), or -1. Such rows
/// contribute nothing to the statistics; callers are expected to raise.
struct RunInfo {
    Status status = Status::Ok;
    int64_t first_bad_row = -1;
};

}  // namespace gmmfast
