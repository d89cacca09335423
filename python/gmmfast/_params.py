"""Conversions between the parameterisations of a Gaussian mixture, in scikit-learn's
conventions (precision Cholesky factors U with Λ = U Uᵀ, upper triangular), and the
weights and means of a set of statistics.

Used by the EM driver, the data sources' initialisations, model files and the
estimator; imports only the low modules (``ops``, ``_types``).
"""

from __future__ import annotations

import numpy as np

from . import ops
from ._types import EMStats, param_shape


def log_weights(weights):
    """log of the mixture weights in float64 (log 0 = -inf without a warning)."""
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(weights, dtype=np.float64))


def precision_cholesky_from_precisions(precisions, covariance_type):
    """Upper-triangular U with Λ = U Uᵀ (scikit-learn's reverse-order Cholesky)."""
    if covariance_type in ("diag", "spherical"):
        return np.sqrt(precisions)
    mats = precisions if covariance_type == "full" else precisions[None]
    # J Λ J = L Lᵀ with J the exchange matrix  =>  Λ = (J L J)(J L J)ᵀ, J L J upper.
    flipped = np.linalg.cholesky(mats[:, ::-1, ::-1])
    U = np.ascontiguousarray(flipped[:, ::-1, ::-1])
    return U if covariance_type == "full" else U[0]


def covariances_from_precisions(precisions, covariance_type):
    if covariance_type in ("diag", "spherical"):
        return 1.0 / precisions
    return np.linalg.inv(precisions)


def precisions_from_cholesky(prec_chol, covariance_type):
    if covariance_type == "full":
        return np.matmul(prec_chol, np.swapaxes(prec_chol, 1, 2))
    if covariance_type == "tied":
        return prec_chol @ prec_chol.T
    return prec_chol**2


def weights_and_means(stats: EMStats, dtype):
    """finalize's weights and means of the statistics, never its covariance error.

    Weights and means depend on nk, s1 and the centres only, so finalize runs on s2 = 0
    with a reg_covar that dominates the rest of every covariance it computes: with
    δ_k = μ_k - c_k that rest is -(s1 δᵀ + δ s1ᵀ - nk δ δᵀ)/n_k (summed over k and
    divided by Σ n_k for tied), of norm at most (2‖s1‖‖δ‖ + nk‖δ‖²)/n_k, so reg·I plus it
    is positive definite. The covariances are discarded.
    """
    nk_eps = 10.0 * float(np.finfo(np.dtype(dtype)).eps)
    n_k = stats.nk + nk_eps
    delta = np.linalg.norm((stats.s1 - nk_eps * stats.centres) / n_k[:, None], axis=1)
    s1 = np.linalg.norm(stats.s1, axis=1)
    rest = 2.0 * s1 * delta + stats.nk * delta * delta
    reg = 1.0 + 2.0 * max(float(np.max(rest / n_k)), float(np.sum(rest) / np.sum(n_k)))
    t = stats.covariance_type
    K, D = stats.s1.shape
    s2 = np.zeros(param_shape(t, K, D))
    params = ops.finalize(
        EMStats(t, stats.centres, stats.log_likelihood, stats.weight_sum, stats.nk, stats.s1, s2, stats.dtype),
        reg,
        dtype,
    )
    return params.weights, params.means
