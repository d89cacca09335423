"""The M-step on the host under the estimator's recovery policy.

:func:`m_step` turns summed statistics into the next mixture (``ops.finalize``) and,
when a covariance is ill-defined (not positive definite) or a component collapses,
applies ``recovery``: None raises scikit-learn's error, 'reg_covar' raises the
regularisation tenfold until every covariance is positive definite, 'reseed' restarts
the failed components at the rows the mixture explains worst. The EM driver calls it
for every data source: directly for data on the host, and as the fallback of a device
M-step that reported a failure or a collapse.

Recovery needs rows only to reseed; they are asked for lazily (``rows()``), since for
data in parts they are a sample that may have to be gathered first.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from . import ops
from ._params import log_weights
from ._settings import EMSettings
from ._types import EMStats, MixtureParams


class RunState:
    """Recovery bookkeeping for one EM run: the regularisation in effect, the rows that
    carry weight (for the collapse rule) and the restarts made so far."""

    def __init__(self, reg_covar, n_rows):
        self.reg_covar = float(reg_covar)
        self.n_rows = n_rows
        self.reseeds = 0

    @staticmethod
    def max_reseeds(n_components):
        return max(10, n_components)


Rows = Callable[[], tuple]


def m_step(settings: EMSettings, stats: EMStats, dtype, rows: Rows, prev: Optional[MixtureParams], state: RunState):
    """finalize, with the recovery policy for ill-defined or collapsed components.

    ``dtype`` is the data's floating dtype (scikit-learn's epsilon and error text);
    ``rows()`` gives host rows ``(X, sample_weight)`` to restart components at; ``prev``
    is the mixture of the E-step (None for the initial M-step). Returns
    ``(params, restarted)`` where restarted tells that components were reseeded.
    """
    try:
        params = ops.finalize(stats, state.reg_covar, dtype)
    except ValueError:
        if settings.recovery is None:
            raise
        if settings.recovery == "reg_covar" or settings.covariance_type == "tied":
            # a tied covariance is shared: no single component to restart
            return escalate_reg_covar(stats, dtype, state), False
        failed = _failed_components(stats, dtype, state.reg_covar)
        return _reseed(settings, stats, dtype, rows, prev, state, failed)
    if settings.recovery == "reseed":
        collapsed = collapsed_components(stats.nk, stats.weight_sum, state.n_rows)
        if collapsed.size:
            return _reseed(settings, stats, dtype, rows, prev, state, collapsed, params=params)
    return params, False


def collapsed_components(nk, weight_sum, n_rows) -> np.ndarray:
    """Components with fewer than two average samples' worth of responsibility: a
    covariance cannot be estimated from them (scale-free: weights may be normalised)."""
    threshold = 2.0 * weight_sum / max(n_rows, 1)
    return np.flatnonzero(np.asarray(nk) < threshold)


def escalate_reg_covar(stats: EMStats, dtype, state: RunState) -> MixtureParams:
    """finalize with reg_covar raised tenfold until every covariance is positive
    definite (from 1e-12 of the data's variance up to 1e6 of it, at most)."""
    scale = float(np.mean(_diag_of(stats)))
    if not np.isfinite(scale):
        # non-finite statistics: no regularisation helps; raise finalize's error
        return ops.finalize(stats, state.reg_covar, dtype)
    # the centred statistics of a zero variance hold rounding noise of ~eps·|c|²
    scale = max(scale, 16.0 * float(np.finfo(np.float64).eps) * float(np.mean(stats.centres**2)))
    if scale <= 0.0:
        scale = 1.0  # every sample sits at the origin: any scale works
    # float32 kernels square U(x - μ) in float32: start where that cannot overflow
    start = 1e-12 if np.dtype(dtype) == np.float64 else 1e-5
    reg = max(state.reg_covar * 10.0, start * scale)
    error = None
    for _ in range(64):  # bounded whatever the numbers
        try:
            params = ops.finalize(stats, reg, dtype)
        except ValueError as exc:
            error = exc
            if reg > 1e6 * scale:
                break
            reg *= 10.0
            continue
        state.reg_covar = reg
        return params
    raise error


def _reseed(settings, stats, dtype, rows: Rows, prev, state, failed, params=None):
    """Restart failed (``params`` None: their covariance is not positive definite) or
    collapsed (``params`` given: the M-step's result) components at the samples the
    mixture explains worst, with the mean covariance of the healthy components."""
    K, t = settings.n_components, settings.covariance_type
    budget = state.max_reseeds(K) - state.reseeds
    healthy = np.setdiff1d(np.arange(K), failed)
    if params is None:
        if failed.size == 0 or healthy.size == 0 or failed.size > budget:
            # nothing to restart from, or too many restarts already: regularise
            return escalate_reg_covar(stats, dtype, state), False
        # finalize the healthy components; the failed ones are replaced below
        params = ops.finalize(_with_components_neutralised(stats, failed), state.reg_covar, dtype)
    else:
        failed = failed[: max(budget, 0)]
        if failed.size == 0 or healthy.size == 0:
            return params, False
    if prev is None:
        # the initial M-step: the worst-explained samples under the healthy part
        w = params.weights[healthy]
        prev = MixtureParams(
            t,
            w / w.sum(),
            params.means[healthy],
            None,
            params.precisions_cholesky if t == "tied" else params.precisions_cholesky[healthy],
        )
    X, sw = rows()
    ll = ops.log_prob(
        X,
        log_weights(prev.weights).astype(X.dtype),
        prev.means.astype(X.dtype),
        prev.precisions_cholesky.astype(X.dtype),
        t,
        "sample",
        n_threads=settings.n_threads,
    )
    if sw is not None:
        ll = np.where(sw > 0, ll, np.inf)  # never seed at a zero-weight sample
    order = np.argsort(ll, kind="stable")
    weights = params.weights.copy()
    means = params.means.copy()
    covariances = params.covariances.copy()
    if t != "tied":
        mean_cov = covariances[healthy].mean(axis=0)
    for j, k in enumerate(failed):
        means[k] = X[order[j]]
        weights[k] = 1.0 / K
        if t != "tied":
            covariances[k] = mean_cov
    weights /= weights.sum()
    try:
        prec_chol, log_det = ops.precision_cholesky(covariances, t, n_features=X.shape[1])
    except ValueError:
        # the healthy covariances are so ill-conditioned that their rounded mean is
        # not positive definite: regularise instead of restarting
        return escalate_reg_covar(stats, dtype, state), False
    state.reseeds += failed.size
    return MixtureParams(t, weights, means, covariances, prec_chol, log_det), True


def _failed_components(stats: EMStats, dtype, reg) -> np.ndarray:
    failed = []
    for k in range(stats.n_components):
        try:
            ops.finalize(_component_stats(stats, k), reg, dtype)
        except ValueError:
            failed.append(k)
    return np.asarray(failed, dtype=np.int64)


def _diag_of(stats: EMStats):
    """Per-feature second moments (for scaling reg_covar escalation)."""
    total = max(stats.weight_sum, 1e-300)
    t = stats.covariance_type
    if t == "full":
        return np.einsum("kii->i", stats.s2) / total
    if t == "tied":
        return np.diag(stats.s2) / total
    if t == "diag":
        return stats.s2.sum(axis=0) / total
    return np.atleast_1d(stats.s2.sum() / total / stats.s1.shape[1])


def _component_stats(stats: EMStats, k: int) -> EMStats:
    s2 = stats.s2 if stats.covariance_type == "tied" else stats.s2[k : k + 1]
    return EMStats(
        stats.covariance_type,
        stats.centres[k : k + 1],
        0.0,
        stats.weight_sum,
        stats.nk[k : k + 1],
        stats.s1[k : k + 1],
        s2,
        stats.dtype,
    )


def _with_components_neutralised(stats: EMStats, failed) -> EMStats:
    """Statistics where the failed components look like a unit-variance blob, so that
    finalize succeeds for the others (the failed ones are replaced afterwards)."""
    nk = stats.nk.copy()
    s1 = stats.s1.copy()
    s2 = stats.s2.copy()
    D = s1.shape[1]
    for k in failed:
        nk[k] = 1.0
        s1[k] = 0.0
        if stats.covariance_type == "full":
            s2[k] = np.eye(D)
        elif stats.covariance_type == "diag":
            s2[k] = 1.0
        elif stats.covariance_type == "spherical":
            s2[k] = D
    return EMStats(stats.covariance_type, stats.centres, 0.0, stats.weight_sum, nk, s1, s2, stats.dtype)
