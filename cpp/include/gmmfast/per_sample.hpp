// per_sample: log-likelihoods of Gaussian mixtures whose parameters differ per sample
// (the output layer of a mixture density network), and their closed-form gradients.
//
// Conventions (dense, row-major, C order):
//   B  number of samples (rows), D output dimensions, K components.
//   y  size B * D, the targets.
//
// Two modes:
//   Joint   one mixture of D-dimensional Gaussians per row:
//             log p(y_i) = LSE_k [ log_softmax(logits_i)_k + log N(y_i | μ_ik, Σ_ik) ]
//             logits B * K, means B * K * D; scale by covariance form:
//               Isotropic     B * K          Σ = σ² I
//               Diag          B * K * D      Σ = diag(σ²)
//               Full          B * K * D * D  Σ = L Lᵀ, L lower triangular with a positive
//                                            diagonal (entries above it are ignored, like
//                                            torch's MultivariateNormal(scale_tril=L))
//               Correlated2D  B * K * 2 (σ1, σ2) and rho B * K (ρ in (-1, 1)); D = 2:
//                             Σ = [[σ1², ρσ1σ2], [ρσ1σ2, σ2²]] (Graves 2013, eq. 24-25)
//   PerDim  an independent 1-D mixture per output dimension:
//             log p(y_i) = Σ_d LSE_k [ log_softmax(logits_id)_k + log N(y_id | μ_idk, σ_idk²) ]
//             logits, means and scale all B * D * K (covariance Isotropic or Diag, which
//             coincide in 1-D).
//
// The forward pass fuses log_softmax of the raw logits, the Gaussian log-densities and
// the log-sum-exp, one row at a time; it writes the per-row log-likelihood and the
// responsibilities r (B * K, PerDim: B * D * K), which are all the backward pass needs
// besides the inputs. Standardised residuals are computed directly as (y - μ) / σ (or a
// triangular solve): the expanded y² - 2yμ + μ² form loses every digit in float32 when
// the data sit far from the origin.
#pragma once

#include <cstdint>

#include "gmmfast/mixture.hpp"

namespace gmmfast {

enum class ScaleForm : int { Isotropic = 0, Diag = 1, Full = 2, Correlated2D = 3 };
enum class MixtureMode : int { Joint = 0, PerDim = 1 };

/// Number of scalars in the scale argument for one row.
int64_t per_sample_scale_size(ScaleForm form, MixtureMode mode, int64_t K, int64_t D);

/// A batch of per-sample mixtures, borrowed.
template <class T>
struct PerSampleMixture {
    int64_t B = 0, K = 0, D = 0;
    ScaleForm form = ScaleForm::Diag;
    MixtureMode mode = MixtureMode::Joint;
    const T* logits = nullptr;      ///< raw (unnormalised) mixture logits, B * K (PerDim: B * D * K)
    const T* means = nullptr;       ///< B * K * D (PerDim: B * D * K)
    const T* scale = nullptr;       ///< see the table above; σ, not log σ
    const T* rho = nullptr;         ///< B * K for Correlated2D, else nullptr
    const uint8_t* mask = nullptr;  ///< B, nonzero = keep; nullptr keeps every row
};

/// Forward pass.
///
/// @param y     size B * D
/// @param out   out, size B: log p(y_i); 0 for masked rows
/// @param resp  out, size B * K (PerDim: B * D * K): p(k | y_i); 0 for masked rows.
///              nullptr: not stored (the backward pass then recomputes them)
/// @return      first_bad_row: the first unmasked row whose log-likelihood is not finite
///              (NaN/inf inputs, a non-positive σ, |ρ| >= 1, or an overflow), or -1.
///              Such rows are written (NaN or -inf) like any other; the caller decides
///              whether to raise. A row whose components all have density 0 gets -inf
///              and zero responsibilities.
///
/// Rows are independent and each is computed by one thread, so the output does not
/// depend on the thread count.
template <class T>
RunInfo per_sample_log_prob(const T* y, const PerSampleMixture<T>& mix, T* out, T* resp,
                            const Exec& exec = Exec{});

/// Backward pass: gradients of Σ_i g_i log p(y_i) from the saved responsibilities.
/// With w_ik = g_i r_ik and z the standardised residual (Joint, Diag):
///   ∂/∂logits_ik = g_i r_ik - g_i softmax(logits_i)_k
///   ∂/∂μ_ikd     = w_ik z_ikd / σ_ikd
///   ∂/∂σ_ikd     = w_ik (z_ikd² - 1) / σ_ikd
///   ∂/∂y_id      = -Σ_k ∂/∂μ_ikd
/// Full (u = L⁻¹(y - μ), v = L⁻ᵀ u):  ∂/∂μ = w v,  ∂/∂L = w tril(v uᵀ) - w diag(1 / L_jj);
/// entries above the diagonal get 0. Correlated2D: see backward_corr in per_sample_kernels.inl.
/// Masked rows get 0.
///
/// @param grad        size B: upstream gradient g of the per-row log-likelihoods
/// @param resp        the forward pass's responsibilities, or nullptr to recompute them
///                    (a second forward pass inside the backward: no B * K buffer needs to
///                    live between the passes, for about the cost of the forward)
/// @param grad_y      out, size B * D, or nullptr when not needed
/// @param grad_logits out, the shape of logits
/// @param grad_means  out, the shape of means
/// @param grad_scale  out, the shape of scale
/// @param grad_rho    out, size B * K for Correlated2D, else unused
template <class T>
Status per_sample_log_prob_backward(const T* grad, const T* resp, const T* y,
                                    const PerSampleMixture<T>& mix, T* grad_y, T* grad_logits,
                                    T* grad_means, T* grad_scale, T* grad_rho,
                                    const Exec& exec = Exec{});

}  // namespace gmmfast
