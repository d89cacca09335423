// finalize on the device, float64: statistics -> weights, means, covariances, precision
// Cholesky U = L^{-T} and its log-determinant, with exactly the formulas (and the
// operation order) of cpp/finalize.cpp:
//   n_k = nk_k + nk_eps, total = Σ_k n_k (in k order), π_k = n_k / total,
//   δ_k = (s1_k - nk_eps · c_k) / n_k, μ_k = c_k + δ_k,
//   full:  Σ_k = (S2_k - s1 δᵀ - δ s1ᵀ + nk δ δᵀ) / n_k + reg I
//   tied:  Σ = (S2 - Σ_k (s1_k δ_kᵀ + δ_k s1_kᵀ - nk_k δ_k δ_kᵀ)) / total + reg I
//   diag:  (S2 - 2 s1 δ + nk δ²) / n_k + reg;  spherical: the mean over features.
// Failures (a non-positive or non-finite pivot) are written to device memory -- the
// index of the first failing component, or -1 -- never raised, so nothing synchronises.
//
// Kernels: finalize_total_kernel (1 thread: total), finalize_means_kernel (thread per
// (k, d)), finalize_cov_kernel (thread per covariance entry), finalize_chol_kernel
// (full/tied: one block per component: left-looking Cholesky, column j's pivot by thread
// 0, the entries below it by all threads, then one thread per column of L^{-1}),
// finalize_diag_prec_kernel (diag/spherical: thread per component),
// finalize_failed_kernel (1 thread: the first failing component).
#include "internal.cuh"

namespace gmmfast {
namespace cuda {
namespace detail {
namespace {

constexpr int kCholThreads = 128;

__global__ void finalize_total_kernel(const double* __restrict__ nk, int64_t K, double nk_eps,
                                      double* __restrict__ total) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    double t = 0.0;
    for (int64_t k = 0; k < K; ++k) t += nk[k] + nk_eps;
    *total = t;
}

/// δ_kd = (s1_kd - nk_eps · c_kd) / n_k: the same expression wherever it is needed, so
/// every kernel sees the same value.
__device__ __forceinline__ double delta_of(const double* s1, const double* centres, const double* nk,
                                           double nk_eps, int64_t j, int64_t k) {
    return (s1[j] - nk_eps * centres[j]) / (nk[k] + nk_eps);
}

__global__ void finalize_means_kernel(int64_t K, int64_t D, const double* __restrict__ nk,
                                      const double* __restrict__ s1, const double* __restrict__ centres,
                                      double nk_eps, const double* __restrict__ total,
                                      double* __restrict__ weights, double* __restrict__ means) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < K * D; j += stride) {
        const int64_t k = j / D;
        means[j] = centres[j] + delta_of(s1, centres, nk, nk_eps, j, k);
        if (j % D == 0) weights[k] = (nk[k] + nk_eps) / *total;
    }
}

__global__ void finalize_cov_kernel(Covariance cov, int64_t K, int64_t D, const double* __restrict__ nk,
                                    const double* __restrict__ s1, const double* __restrict__ s2,
                                    const double* __restrict__ centres, double reg_covar, double nk_eps,
                                    const double* __restrict__ total, double* __restrict__ covariances) {
    const int64_t count = param_count(cov, K, D);
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < count; e += stride) {
        switch (cov) {
            case Covariance::Full: {
                const int64_t k = e / (D * D), rem = e % (D * D), l = rem / D, j = rem % D;
                const double al = s1[k * D + l], aj = s1[k * D + j];
                const double bl = delta_of(s1, centres, nk, nk_eps, k * D + l, k);
                const double bj = delta_of(s1, centres, nk, nk_eps, k * D + j, k);
                covariances[e] = (s2[e] - al * bj - bl * aj + nk[k] * bl * bj) / (nk[k] + nk_eps) +
                                 (l == j ? reg_covar : 0.0);
                break;
            }
            case Covariance::Tied: {
                const int64_t l = e / D, j = e % D;
                double c = s2[e];
                for (int64_t k = 0; k < K; ++k) {
                    const double al = s1[k * D + l], aj = s1[k * D + j];
                    const double bl = delta_of(s1, centres, nk, nk_eps, k * D + l, k);
                    const double bj = delta_of(s1, centres, nk, nk_eps, k * D + j, k);
                    c -= al * bj + bl * aj - nk[k] * bl * bj;
                }
                covariances[e] = c / *total + (l == j ? reg_covar : 0.0);
                break;
            }
            case Covariance::Diag: {
                const int64_t k = e / D;
                const double b = delta_of(s1, centres, nk, nk_eps, e, k);
                covariances[e] = (s2[e] - 2.0 * s1[e] * b + nk[k] * b * b) / (nk[k] + nk_eps) + reg_covar;
                break;
            }
            default: {  // spherical: e = k
                double v = s2[e];
                for (int64_t d = 0; d < D; ++d) {
                    const int64_t j = e * D + d;
                    const double b = delta_of(s1, centres, nk, nk_eps, j, e);
                    v += -2.0 * s1[j] * b + nk[e] * b * b;
                }
                covariances[e] = v / ((nk[e] + nk_eps) * double(D)) + reg_covar;
                break;
            }
        }
    }
}

/// Block b factors the D x D covariance b (full: b = k; tied: the only one):
/// L = chol(A) into the workspace, then U = L^{-T} (row c of U = column c of L^{-1}) and
/// log_det = -Σ_c log L[c][c]. The pivots are computed by thread 0 and broadcast through
/// shared memory; a failing pivot ends the factorisation for the whole block (uniformly:
/// every thread reads the flag after the same barrier).
__global__ void __launch_bounds__(kCholThreads) finalize_chol_kernel(int64_t D, int64_t K, bool tied,
                                                                     const double* __restrict__ covariances,
                                                                     double* Lws, double* __restrict__ prec_chol,
                                                                     double* __restrict__ log_det, int* fail) {
    __shared__ int ok;
    __shared__ double ld_shared;
    const int tid = threadIdx.x;
    const int64_t b = blockIdx.x;
    const double* A = covariances + b * D * D;
    double* L = Lws + b * D * D;  // lower triangle used; written and read within this block
    double* U = prec_chol + b * D * D;
    for (int64_t j = 0; j < D; ++j) {
        if (tid == 0) {
            double s = A[j * D + j];
            for (int64_t p = 0; p < j; ++p) s -= L[j * D + p] * L[j * D + p];
            const int good = (s > 0.0 && isfinite(s)) ? 1 : 0;
            if (good) L[j * D + j] = sqrt(s);
            ok = good;
        }
        __syncthreads();  // ok and L[j][j] visible
        if (!ok) break;   // block-uniform
        const double ljj = L[j * D + j];
        for (int64_t i = j + 1 + tid; i < D; i += kCholThreads) {
            double v = A[i * D + j];
            for (int64_t p = 0; p < j; ++p) v -= L[i * D + p] * L[j * D + p];
            L[i * D + j] = v / ljj;
        }
        __syncthreads();  // column j complete before the next pivot reads it (and before ok changes)
    }
    if (!ok) {
        for (int64_t e = tid; e < D * D; e += kCholThreads) U[e] = CUDART_NAN;
        if (tied) {
            for (int64_t k = tid; k < K; k += kCholThreads) log_det[k] = CUDART_NAN;
        } else if (tid == 0) {
            log_det[b] = CUDART_NAN;
        }
        if (tid == 0) fail[b] = 1;
        return;
    }
    // Forward substitution per column c of M = L^{-1} (lower), stored transposed as row c
    // of U; each thread reads only the row of U it writes.
    for (int64_t c = tid; c < D; c += kCholThreads) {
        double* Uc = U + c * D;
        for (int64_t i = 0; i < c; ++i) Uc[i] = 0.0;
        for (int64_t i = c; i < D; ++i) {
            double v = (i == c) ? 1.0 : 0.0;
            for (int64_t p = c; p < i; ++p) v -= L[i * D + p] * Uc[p];
            Uc[i] = v / L[i * D + i];
        }
    }
    if (tid == 0) {
        double ld = 0.0;
        for (int64_t c = 0; c < D; ++c) ld -= log(L[c * D + c]);
        ld_shared = ld;
        fail[b] = 0;
    }
    __syncthreads();
    if (tied) {
        for (int64_t k = tid; k < K; k += kCholThreads) log_det[k] = ld_shared;
    } else if (tid == 0) {
        log_det[b] = ld_shared;
    }
}

__global__ void finalize_diag_prec_kernel(bool spherical, int64_t K, int64_t D,
                                          const double* __restrict__ covariances, double* __restrict__ prec_chol,
                                          double* __restrict__ log_det, int* __restrict__ fail) {
    const int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (k >= K) return;
    const int64_t n = spherical ? 1 : D;  // entries of component k
    double ld = 0.0;
    int good = 1;
    for (int64_t d = 0; d < n; ++d) {
        const double c = covariances[k * n + d];
        if (!(c > 0.0) || !isfinite(c)) {
            good = 0;
            break;
        }
        const double p = 1.0 / sqrt(c);
        prec_chol[k * n + d] = p;
        ld += log(p);
    }
    if (!good) {
        for (int64_t d = 0; d < n; ++d) prec_chol[k * n + d] = CUDART_NAN;
        log_det[k] = CUDART_NAN;
        fail[k] = 1;
        return;
    }
    log_det[k] = spherical ? double(D) * log(prec_chol[k]) : ld;
    fail[k] = 0;
}

__global__ void finalize_failed_kernel(const int* __restrict__ fail, int64_t count, int64_t* __restrict__ failed) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    int64_t f = -1;
    for (int64_t k = 0; k < count; ++k)
        if (fail[k]) {
            f = k;
            break;
        }
    *failed = f;
}

unsigned grid_for(int64_t count) {
    int64_t blocks = ceil_div(count, kThreads);
    if (blocks < 1) blocks = 1;
    if (blocks > 65535) blocks = 65535;  // the kernels stride over the rest
    return unsigned(blocks);
}

/// Workspace: total (1 double), L (full K*D*D / tied D*D doubles), fail flags (one int
/// per factorisation).
void finalize_impl(cudaStream_t stream, Covariance cov, int64_t K, int64_t D, const double* nk, const double* s1,
                   const double* s2, const double* centres, double reg_covar, double nk_eps, double* weights,
                   double* means, double* covariances, double* prec_chol, double* log_det, int64_t* failed,
                   Layout& ws) {
    const int64_t factorisations = cov == Covariance::Tied ? 1 : K;
    double* total = ws.take<double>(1);
    double* Lws = is_dense(cov) ? ws.take<double>(factorisations * D * D) : nullptr;
    int* fail = ws.take<int>(factorisations);
    if (!ws.base) return;  // size query

    finalize_total_kernel<<<1, 1, 0, stream>>>(nk, K, nk_eps, total);
    check_launch("finalize_total_kernel");
    finalize_means_kernel<<<grid_for(K * D), kThreads, 0, stream>>>(K, D, nk, s1, centres, nk_eps, total, weights,
                                                                    means);
    check_launch("finalize_means_kernel");
    finalize_cov_kernel<<<grid_for(param_count(cov, K, D)), kThreads, 0, stream>>>(
        cov, K, D, nk, s1, s2, centres, reg_covar, nk_eps, total, covariances);
    check_launch("finalize_cov_kernel");
    if (is_dense(cov)) {
        require(factorisations <= int64_t(0x7fffffff), "too many components");
        finalize_chol_kernel<<<unsigned(factorisations), kCholThreads, 0, stream>>>(
            D, K, cov == Covariance::Tied, covariances, Lws, prec_chol, log_det, fail);
        check_launch("finalize_chol_kernel");
    } else {
        finalize_diag_prec_kernel<<<unsigned(ceil_div(K, kThreads)), kThreads, 0, stream>>>(
            cov == Covariance::Spherical, K, D, covariances, prec_chol, log_det, fail);
        check_launch("finalize_diag_prec_kernel");
    }
    finalize_failed_kernel<<<1, 1, 0, stream>>>(fail, factorisations, failed);
    check_launch("finalize_failed_kernel");
}

}  // namespace
}  // namespace detail

using namespace detail;

std::size_t finalize_workspace_bytes(Covariance cov, int64_t K, int64_t D) {
    check_sizes(0, D, K);
    Layout ws;
    finalize_impl(nullptr, cov, K, D, nullptr, nullptr, nullptr, nullptr, 0.0, 0.0, nullptr, nullptr, nullptr,
                  nullptr, nullptr, nullptr, ws);
    return ws.bytes;
}

void finalize(int device, cudaStream_t stream, Covariance cov, int64_t K, int64_t D, const double* nk,
              const double* s1, const double* s2, const double* centres, double reg_covar, double nk_eps,
              double* weights, double* means, double* covariances, double* prec_chol, double* log_det,
              int64_t* failed, void* workspace, std::size_t workspace_bytes) {
    check_sizes(0, D, K);
    require(workspace_bytes >= finalize_workspace_bytes(cov, K, D), "workspace too small");
    require(workspace != nullptr && reinterpret_cast<std::uintptr_t>(workspace) % 16 == 0,
            "workspace must be a 16-byte aligned device pointer");
    require(nk && s1 && s2 && centres && weights && means && covariances && prec_chol && log_det && failed,
            "null pointer argument");
    require(reg_covar >= 0.0 && reg_covar < HUGE_VAL, "reg_covar must be a finite number >= 0");
    require(nk_eps >= 0.0 && nk_eps < HUGE_VAL, "nk_eps must be a finite number >= 0");
    set_device(device);
    Layout ws;
    ws.base = static_cast<char*>(workspace);
    finalize_impl(stream, cov, K, D, nk, s1, s2, centres, reg_covar, nk_eps, weights, means, covariances, prec_chol,
                  log_det, failed, ws);
}

}  // namespace cuda
}  // namespace gmmfast
