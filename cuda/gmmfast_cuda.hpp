// gmmfast CUDA kernels: the host-side C++ interface (no Python, no torch).
//
// The same three kernels as the CPU backend (ARCHITECTURE.md), for device memory:
// log_prob, em_stats (fused E-step + centred statistics), finalize (statistics ->
// parameters, float64), plus grad_x (the data term of the autograd backward).
//
// Conventions (as cpp/include/gmmfast/mixture.hpp): dense row-major arrays, N samples,
// D features, K components; X is N * D; parameters in scikit-learn's precision-Cholesky
// form: prec_chol is full K * D * D / tied D * D (upper triangular; entries below the
// diagonal are IGNORED, never read as data), diag K * D, spherical K.
//
// Every entry point
//   - takes the device index and calls cudaSetDevice(device) first: this library links
//     its own static CUDA runtime, which does not see the caller's (torch's) current
//     device;
//   - takes device pointers, sizes and an explicit stream, and enqueues kernels on that
//     stream only: it never allocates device memory, never synchronises, never reads a
//     global "current stream" (so it can be captured into a CUDA graph);
//   - takes a caller-allocated workspace of at least <op>_workspace_bytes(...) bytes,
//     16-byte aligned;
//   - throws std::runtime_error when a launch fails (cudaGetLastError), and
//     std::invalid_argument for bad sizes / null pointers / a too small workspace; it
//     never inspects values (no exceptions on NaN: NaN propagates).
//
// Results are deterministic: the same inputs and sizes give bit-identical outputs on the
// same GPU model and build. Row blocks and chunks are fixed functions of (N, D, K,
// covariance type) -- never of the GPU's SM count -- and partial sums are combined in a
// fixed order by separate reduction kernels (no floating-point atomics).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "gmmfast/log_prob.hpp"  // gmmfast::LogProbOutput
#include "gmmfast/mixture.hpp"   // gmmfast::Covariance

namespace gmmfast {
namespace cuda {

enum class DType : int { Float32 = 0, Float64 = 1 };

/// Number of CUDA devices; 0 (never throws) without a driver or a device.
int device_count() noexcept;

/// CUDA runtime version this module was built with (e.g. 13000), and the driver's
/// (0 without a driver).
int runtime_version() noexcept;
int driver_version() noexcept;

// ------------------------------------------------------------------------- log_prob

/// @param X          size N * D (dtype)
/// @param log_weights size K, means K * D, prec_chol param_size(cov, K, D)  (dtype)
/// @param out        size N (Sample) or N * K (LogResp, Weighted)         (dtype)
/// A row whose log-likelihood is not finite gives NaN/inf in the outputs (no error).
std::size_t log_prob_workspace_bytes(DType dtype, Covariance cov, int64_t N, int64_t D, int64_t K,
                                     LogProbOutput what);
void log_prob(int device, cudaStream_t stream, DType dtype, Covariance cov, int64_t N, int64_t D,
              int64_t K, const void* X, const void* log_weights, const void* means,
              const void* prec_chol, LogProbOutput what, void* out, void* workspace,
              std::size_t workspace_bytes);

// ------------------------------------------------------------------------- em_stats

/// Statistics of gmmfast::Stats, centred at `centres`, in float64:
///   scalars[0] = Σ g_i log p(x_i)  (E-step; 0 with given resp; NaN when any row's
///                log-likelihood is not finite), scalars[1] = Σ g_i,
///   nk K, s1 K * D, s2 full K * D * D / tied D * D / diag K * D / spherical K.
/// Responsibilities r_ik = g_i p(k | x_i) (resp == nullptr) or r_ik = g_i resp[i, k]
/// (any sign: the autograd backward). Rows with a non-finite log-likelihood get r = 0.
///
/// @param sample_weight  size N or nullptr (g = 1)
/// @param resp           size N * K or nullptr; when given, log_weights / means /
///                       prec_chol are not read (may be nullptr)
/// @param centres        size K * D (dtype)
std::size_t em_stats_workspace_bytes(DType dtype, Covariance cov, int64_t N, int64_t D, int64_t K,
                                     bool given_resp);
void em_stats(int device, cudaStream_t stream, DType dtype, Covariance cov, int64_t N, int64_t D,
              int64_t K, const void* X, const void* log_weights, const void* means,
              const void* prec_chol, const void* centres, const void* sample_weight,
              const void* resp, double* scalars, double* nk, double* s1, double* s2,
              void* workspace, std::size_t workspace_bytes);

// --------------------------------------------------------------------------- grad_x

/// out[i, :] = -Σ_k w_ik Λ_k (x_i - μ_k), w = g_i p(k | x_i) (resp == nullptr) or
/// g_i resp[i, k]. out is N * D (dtype). log_weights is not read with given resp.
std::size_t grad_x_workspace_bytes(DType dtype, Covariance cov, int64_t N, int64_t D, int64_t K,
                                   bool given_resp);
void grad_x(int device, cudaStream_t stream, DType dtype, Covariance cov, int64_t N, int64_t D,
            int64_t K, const void* X, const void* log_weights, const void* means,
            const void* prec_chol, const void* sample_weight, const void* resp, void* out,
            void* workspace, std::size_t workspace_bytes);

// ------------------------------------------------------------------------- finalize

/// cpp/finalize.cpp's formulas on the device, float64 throughout. failed (one int64 in
/// device memory) receives -1, or the first component whose covariance is not positive
/// definite (tied: 0); it is written, never raised, so nothing synchronises. The
/// outputs of a failed component are NaN.
std::size_t finalize_workspace_bytes(Covariance cov, int64_t K, int64_t D);
void finalize(int device, cudaStream_t stream, Covariance cov, int64_t K, int64_t D,
              const double* nk, const double* s1, const double* s2, const double* centres,
              double reg_covar, double nk_eps, double* weights, double* means,
              double* covariances, double* prec_chol, double* log_det, int64_t* failed,
              void* workspace, std::size_t workspace_bytes);

}  // namespace cuda
}  // namespace gmmfast
