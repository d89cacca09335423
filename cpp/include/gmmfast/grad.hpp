// Gradients of mixture log-likelihoods: the data term (the parameter gradients are
// weighted statistics, computed by em_stats; see docs/architecture.md).
#pragma once

#include "gmmfast/em_stats.hpp"

namespace gmmfast {

/// grad[i, :] = -Σ_k w_ik Λ_k (x_i - μ_k): the gradient w.r.t. x_i of
/// Σ_k w_ik log N(x_i | μ_k, Σ_k) with the weights w held fixed.
///
/// With w_ik = g_i p(k | x_i) (resp.source == EStep, g = sample_weight = the upstream
/// gradient) this is ∂/∂x_i of Σ_i g_i log p(x_i); with given weights (source Given,
/// any sign) it is the data part of the backward of the per-component log-densities.
///
/// @param X     size N * D
/// @param grad  out, size N * D
template <class T>
RunInfo log_prob_grad_x(const T* X, int64_t N, const Mixture<T>& mix, const Responsibilities<T>& resp,
                        const T* sample_weight, T* grad, const Exec& exec = Exec{});

}  // namespace gmmfast
