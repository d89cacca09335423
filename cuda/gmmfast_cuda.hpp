// gmmfast CUDA kernels: the host-side C++ interface (no Python, no torch).
//
// The same three kernels as the CPU backend (docs/architecture.md), for device memory:
// log_prob, em_stats (fused E-step + centred statistics), finalize (statistics ->
// parameters, float64), plus grad_x (the data term of the autograd backward), and the
// per-sample mixture op of mixture density networks (per_sample_log_prob, its backward).
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
//     16-byte aligned (per_sample: often 0 bytes, and then nullptr is accepted);
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
#include "gmmfast/per_sample.hpp"  // gmmfast::ScaleForm, gmmfast::MixtureMode

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

// ----------------------------------------------------------------------- per_sample

/// Per-sample mixtures (mixture density networks): gmmfast/per_sample.hpp's
/// per_sample_log_prob and its backward on device memory, the same arguments, layouts
/// and semantics (raw logits; scale = σ, scale_tril or (σ1, σ2) with rho; masked rows
/// give 0 and zero gradients without reading their parameters). The first_bad_row
/// report of the CPU is not produced (it would need a synchronisation): non-finite rows
/// are NaN or -inf in `out`, as on the CPU.
///
/// @param y       size B * D;  logits B * K (per_dim B * D * K);  means B * K * D
///                (per_dim B * D * K);  scale per_sample_scale_size(form, mode, K, D) per
///                row;  rho B * K (correlated2d, else not read);  mask B bytes, nonzero =
///                keep, or nullptr.  All in dtype except mask.
/// @param out     out, size B
/// @param resp    out, like logits, or nullptr (not stored; the backward recomputes them)
/// @param workspace  at least per_sample_workspace_bytes(...) bytes, 16-byte aligned
///                (0 bytes, and nullptr allowed, except for covariance 'full')
/// @param lanes_per_row  0: automatic (one warp per row when K -- per_dim: D -- is at
///                least 16, else one thread per row); 1 or 32 force a mapping. The
///                workspace size depends on it: pass the same value to both calls.
std::size_t per_sample_workspace_bytes(DType dtype, ScaleForm form, MixtureMode mode, int64_t B, int64_t K,
                                       int64_t D, bool backward, int lanes_per_row = 0);
void per_sample_log_prob(int device, cudaStream_t stream, DType dtype, ScaleForm form, MixtureMode mode,
                         int64_t B, int64_t K, int64_t D, const void* y, const void* logits, const void* means,
                         const void* scale, const void* rho, const uint8_t* mask, void* out, void* resp,
                         void* workspace, std::size_t workspace_bytes, int lanes_per_row = 0);

/// Gradients of Σ_i grad_i log p(y_i): grad size B; resp the forward's responsibilities
/// or nullptr (recomputed, bit-identical to the saved ones); grad_y B * D or nullptr;
/// grad_logits / grad_means / grad_scale / grad_rho the shapes of their inputs
/// (grad_rho only for correlated2d). Entries of grad_scale above a full L's diagonal
/// get 0.
void per_sample_log_prob_backward(int device, cudaStream_t stream, DType dtype, ScaleForm form, MixtureMode mode,
                                  int64_t B, int64_t K, int64_t D, const void* grad, const void* resp,
                                  const void* y, const void* logits, const void* means, const void* scale,
                                  const void* rho, const uint8_t* mask, void* grad_y, void* grad_logits,
                                  void* grad_means, void* grad_scale, void* grad_rho, void* workspace,
                                  std::size_t workspace_bytes, int lanes_per_row = 0);

}  // namespace cuda
}  // namespace gmmfast
