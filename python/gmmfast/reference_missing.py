r"""Pure-NumPy reference of EM with missing values (NaN entries, missing at random).

The test oracle of :mod:`gmmfast._missing` and its native kernels, written to be read:
float64 throughout, one missingness pattern at a time, and the *covariance* form of the
Gaussian conditionals (the native kernels use the precision form, so the two agree only
if both are right). Parameters are scikit-learn's (see :mod:`gmmfast.reference`).

For a row x with observed coordinates O and missing M, and a component with mean μ and
covariance Σ:

    log N(x_O | μ_O, Σ_OO)                            the E-step's log-density
    x̂_M = μ_M + Σ_MO Σ_OO⁻¹ (x_O − μ_O)               E[x_M | x_O, k]
    C   = Σ_MM − Σ_MO Σ_OO⁻¹ Σ_OM                     Cov[x_M | x_O, k]

With responsibilities r = g · p(k | x_O) and x̂ the row completed with x̂_M, the
statistics of EM (Ghahramani & Jordan 1994) are those of :func:`gmmfast.reference.em_stats`
for x̂, plus r·C on the M × M block of s2 (its diagonal for 'diag', its trace for
'spherical'): the expected complete-data sufficient statistics. The M-step
(:func:`gmmfast.reference.finalize`) is unchanged. ``log_likelihood`` is the
observed-data log-likelihood Σ g log p(x_O).
"""

from __future__ import annotations

import numpy as np

from . import reference
from ._types import EMStats, MixtureParams

__all__ = ["covariances_of", "log_prob", "em_stats", "impute", "em", "observed_log_likelihood"]

_LOG_2PI = np.log(2.0 * np.pi)


def covariances_of(precisions_cholesky, covariance_type, n_components, n_features) -> np.ndarray:
    """(K, D, D) covariance matrices Σ_k = (U_k U_kᵀ)⁻¹ of any covariance type."""
    U = np.asarray(precisions_cholesky, dtype=np.float64)
    K, D = n_components, n_features
    if covariance_type == "full":
        return np.stack([np.linalg.inv(U[k] @ U[k].T) for k in range(K)])
    if covariance_type == "tied":
        return np.repeat(np.linalg.inv(U @ U.T)[None], K, axis=0)
    if covariance_type == "diag":
        return np.stack([np.diag(1.0 / U[k] ** 2) for k in range(K)])
    return np.stack([np.eye(D) / U[k] ** 2 for k in range(K)])


def _patterns(X):
    """(observed mask, row indices) of every missingness pattern of X."""
    observed = ~np.isnan(X)
    masks, inverse = np.unique(observed, axis=0, return_inverse=True)
    return [(masks[p], np.flatnonzero(inverse.ravel() == p)) for p in range(masks.shape[0])]


def _conditionals(X, rows, o, mean, cov):
    """For rows of one pattern (observed mask o) and one component: the marginal
    log-densities of the observed entries, the completed rows and the conditional
    covariance of the missing entries."""
    m = ~o
    Xo = X[np.ix_(rows, o)]
    S_oo = cov[np.ix_(o, o)]
    L = np.linalg.cholesky(S_oo)
    Z = np.linalg.solve(L, (Xo - mean[o]).T)  # L⁻¹ (x_O − μ_O), one column per row
    log_dens = -0.5 * (o.sum() * _LOG_2PI + np.sum(Z**2, axis=0)) - np.sum(np.log(np.diag(L)))
    B = np.linalg.solve(S_oo, cov[np.ix_(o, m)]).T  # Σ_MO Σ_OO⁻¹
    completed = np.array(X[rows], dtype=np.float64)
    completed[:, m] = mean[m] + (Xo - mean[o]) @ B.T
    C = cov[np.ix_(m, m)] - B @ cov[np.ix_(o, m)]
    return log_dens, completed, C


def _weighted(X, log_weights, means, precisions_cholesky, covariance_type):
    """(N, K) log π_k + log N(x_O | k), the completed rows (K, N, D) and, per pattern, the
    rows and the conditional covariances (K of them)."""
    X = np.asarray(X, dtype=np.float64)
    N, D = X.shape
    means = np.asarray(means, dtype=np.float64)
    K = means.shape[0]
    cov = covariances_of(precisions_cholesky, covariance_type, K, D)
    W = np.empty((N, K))
    completed = np.empty((K, N, D))
    per_pattern = []
    for o, rows in _patterns(X):
        if not o.any():
            raise ValueError("a row has every coordinate missing")
        Cs = []
        for k in range(K):
            ld, comp, C = _conditionals(X, rows, o, means[k], cov[k])
            W[rows, k] = np.asarray(log_weights, dtype=np.float64)[k] + ld
            completed[k, rows] = comp
            Cs.append(C)
        per_pattern.append((o, rows, Cs))
    return W, completed, per_pattern


def log_prob(X, log_weights, means, precisions_cholesky, covariance_type="full", output="sample"):
    """:func:`gmmfast.reference.log_prob` of rows with NaN entries, marginal over each
    row's observed entries."""
    W, _, _ = _weighted(X, log_weights, means, precisions_cholesky, covariance_type)
    mx = W.max(axis=1, keepdims=True)
    lse = (mx + np.log(np.sum(np.exp(W - mx), axis=1, keepdims=True)))[:, 0]
    if output == "sample":
        return lse
    if output == "log_resp":
        return W - lse[:, None]
    if output == "weighted":
        return W
    raise ValueError(f"unknown output {output!r}")


def impute(X, log_weights, means, precisions_cholesky, covariance_type="full"):
    """X with each NaN replaced by E[x_M | x_O] = Σ_k p(k | x_O) x̂_M,k."""
    W, completed, _ = _weighted(X, log_weights, means, precisions_cholesky, covariance_type)
    R = np.exp(W - W.max(axis=1, keepdims=True))
    R /= R.sum(axis=1, keepdims=True)
    return np.einsum("nk,knd->nd", R, completed)


def em_stats(X, log_weights, means, precisions_cholesky, covariance_type="full", *, centres=None,
             sample_weight=None) -> EMStats:
    """The expected complete-data statistics of EM for X with NaN entries (see the
    module docstring), centred at ``centres`` (default: the means)."""
    X = np.asarray(X, dtype=np.float64)
    N, D = X.shape
    means = np.asarray(means, dtype=np.float64)
    K = means.shape[0]
    c = means if centres is None else np.asarray(centres, dtype=np.float64)
    g = np.ones(N) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    W, completed, per_pattern = _weighted(X, log_weights, means, precisions_cholesky, covariance_type)
    mx = W.max(axis=1, keepdims=True)
    lse = mx[:, 0] + np.log(np.sum(np.exp(W - mx), axis=1))
    R = g[:, None] * np.exp(W - lse[:, None])
    nk = R.sum(axis=0)
    s1 = np.stack([R[:, k] @ (completed[k] - c[k]) for k in range(K)])
    full = np.stack([(completed[k] - c[k]).T @ (R[:, k, None] * (completed[k] - c[k])) for k in range(K)])
    for o, rows, Cs in per_pattern:
        m = ~o
        for k in range(K):
            full[k][np.ix_(m, m)] += R[rows, k].sum() * Cs[k]
    if covariance_type == "full":
        s2 = full
    elif covariance_type == "tied":
        s2 = full.sum(axis=0)
    elif covariance_type == "diag":
        s2 = np.stack([np.diag(full[k]) for k in range(K)])
    else:
        s2 = np.array([np.trace(full[k]) for k in range(K)])
    dtype = str(np.asarray(X).dtype)
    return EMStats(covariance_type, c.copy(), float(g @ lse), float(g.sum()), nk, s1, s2, dtype)


def observed_log_likelihood(X, params: MixtureParams, sample_weight=None) -> float:
    """Σ g log p(x_O) under ``params`` (the objective EM with missing values increases)."""
    with np.errstate(divide="ignore"):
        lw = np.log(params.weights)
    ll = log_prob(X, lw, params.means, params.precisions_cholesky, params.covariance_type)
    g = np.ones(len(ll)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    return float(g @ ll)


def em(X, init: MixtureParams, *, tol=1e-3, max_iter=100, reg_covar=1e-6, sample_weight=None):
    """EM with missing values from ``init``: scikit-learn's loop, the statistics of
    :func:`em_stats`, the M-step of :func:`gmmfast.reference.finalize`. Returns
    ``(params, lower_bounds)``."""
    params = init
    lower_bounds = []
    prev = -np.inf
    for _ in range(max_iter):
        with np.errstate(divide="ignore"):
            lw = np.log(params.weights)
        st = em_stats(X, lw, params.means, params.precisions_cholesky, params.covariance_type,
                      sample_weight=sample_weight)
        lower_bounds.append(st.log_likelihood / st.weight_sum)
        params = reference.finalize(st, reg_covar, np.float64)
        if abs(lower_bounds[-1] - prev) < tol:
            break
        prev = lower_bounds[-1]
    return params, lower_bounds
