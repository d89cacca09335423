"""Exact arithmetic on :class:`gmmfast.EMStats`: re-centring, scaling, blending, and the
statistics implied by a mixture; plus online EM's step size.

Everything rests on one fact (docs/architecture.md): the EM statistics are sums over
rows centred at given centres, so they can be moved to new centres exactly, scaled and
averaged. The EM driver's step-size schedule (online / mini-batch EM) is built from
these; :mod:`gmmfast.streaming` re-exports them as public helpers.
"""

from __future__ import annotations

import numpy as np

from ._types import EMStats, MixtureParams


def recentre_stats(stats: EMStats, centres) -> EMStats:
    """The same statistics, centred at new ``centres`` (exactly, in float64).

    With d_k = c_k − c'_k (old minus new centre) and n_k, s1_k, S2_k the statistics:

    - s1'_k = s1_k + n_k d_k
    - S2'_k = S2_k + s1_k d_kᵀ + d_k s1_kᵀ + n_k d_k d_kᵀ   (full)
      and its forms for the other covariance types: summed over k (tied), the diagonal
      S2_k + 2 s1_k∘d_k + n_k d_k² (diag), the trace S2_k + 2 s1_k·d_k + n_k‖d_k‖²
      (spherical).

    The log-likelihood, weight sum and n_k do not depend on the centres. Centring near
    the data keeps the statistics accurate, so move the centres by small steps (the
    EM updates of the means) rather than far from the data.
    """
    new = np.asarray(centres, dtype=np.float64)
    if new.shape != stats.centres.shape:
        raise ValueError(f"centres must have shape {stats.centres.shape}, got {new.shape}")
    d = stats.centres - new
    nk, s1, s2 = stats.nk, stats.s1, stats.s2
    s1_new = s1 + nk[:, None] * d
    t = stats.covariance_type
    if t == "full":
        outer = s1[:, :, None] * d[:, None, :]
        s2_new = s2 + outer + np.swapaxes(outer, 1, 2) + nk[:, None, None] * d[:, :, None] * d[:, None, :]
    elif t == "tied":
        outer = s1.T @ d
        s2_new = s2 + outer + outer.T + (nk[:, None] * d).T @ d
    elif t == "diag":
        s2_new = s2 + 2.0 * s1 * d + nk[:, None] * d * d
    else:
        s2_new = s2 + 2.0 * np.sum(s1 * d, axis=1) + nk * np.sum(d * d, axis=1)
    return EMStats(t, new.copy(), stats.log_likelihood, stats.weight_sum, nk.copy(), s1_new, s2_new, stats.dtype)


def scale_stats(stats: EMStats, factor: float) -> EMStats:
    """Every sum (log-likelihood, weight sum, n_k, s1, S2) multiplied by ``factor``.

    finalize gives the same mixture for scaled statistics (up to its 10·eps guard on
    n_k), so ``scale_stats(s, 1 / s.weight_sum)`` are per-sample averages.
    """
    f = float(factor)
    return EMStats(
        stats.covariance_type,
        stats.centres,
        stats.log_likelihood * f,
        stats.weight_sum * f,
        stats.nk * f,
        stats.s1 * f,
        stats.s2 * f,
        stats.dtype,
    )


def blend_stats(old: EMStats, new: EMStats, eta: float) -> EMStats:
    """(1 − eta) · old + eta · new, for statistics with the same centres."""
    if old.centres.shape != new.centres.shape or not np.array_equal(old.centres, new.centres):
        raise ValueError("blend_stats needs statistics with the same centres (recentre_stats first)")
    a, b = 1.0 - float(eta), float(eta)
    return EMStats(
        old.covariance_type,
        old.centres,
        a * old.log_likelihood + b * new.log_likelihood,
        a * old.weight_sum + b * new.weight_sum,
        a * old.nk + b * new.nk,
        a * old.s1 + b * new.s1,
        a * old.s2 + b * new.s2,
        old.dtype,
    )


def implied_stats(params: MixtureParams, reg_covar: float, dtype="float64", weight_sum: float = 1.0) -> EMStats:
    """Statistics (centred at the means) whose finalize is ``params``: n_k = π_k W,
    s1_k = 0 and S2_k = n_k (Σ_k − reg_covar·I) in the covariance type's form.

    Online EM starts its running statistics here, from the initial mixture or from a
    fitted model, and restarts them here after recovery reseeded components.
    """
    t = params.covariance_type
    w = np.asarray(params.weights, dtype=np.float64)
    w = w / w.sum()
    nk = w * float(weight_sum)
    means = np.asarray(params.means, dtype=np.float64)
    K, D = means.shape
    cov = np.asarray(params.covariances, dtype=np.float64)
    reg = float(reg_covar)
    if t == "full":
        s2 = nk[:, None, None] * (cov - reg * np.eye(D))
    elif t == "tied":
        s2 = nk.sum() * (cov - reg * np.eye(D))
    elif t == "diag":
        s2 = nk[:, None] * (cov - reg)
    else:
        s2 = nk * D * (cov - reg)
    return EMStats(t, means.copy(), 0.0, float(weight_sum), nk, np.zeros((K, D)), s2, str(np.dtype(dtype)))


def learning_rate(t: int, learning_decay: float, learning_offset: float) -> float:
    """Step size of online EM for the t-th chunk (t = 1, 2, ...):
    η_t = (learning_offset + t)^(−learning_decay)."""
    return float((learning_offset + t) ** (-learning_decay))
