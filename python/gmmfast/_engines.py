"""Where GaussianMixture's EM iterations run: NumPy arrays on the CPU kernels, or torch
tensors (CPU or CUDA) through the ``gmmfast::`` ops.

An engine holds the data and turns one mixture into the next (E-step + M-step) under the
estimator's recovery policy; the estimator's fit loop (initialisations, convergence,
warm start, verbose output) is shared. Parameters live where the data live: NumPy
float64 for the NumPy engine, float64 tensors on the data's device for the torch
engine, whose iteration synchronises with the host once (the lower bound, the
M-step's failure flag and, with recovery='reseed', the component weights travel in one
transfer). The rare recovery paths run on host copies through the NumPy code.

The protocol the fit loop (``GaussianMixture._run_em``) uses:

- ``n_features``, ``n_rows`` (rows of non-zero weight, for the collapse rule);
- ``initial_params(random_state, inits, state)``: the initial mixture on the host;
- ``to_device(params)`` / ``to_host(params)``;
- ``step(params, state)`` -> ``(lower_bound, params, restarted)``: one E-step + M-step;
- ``attributes(params)``: the fitted attributes in the data's dtype and kind of array.

Data that are not one array use the same loop: :class:`gmmfast.streaming.StatsEngine`
(chunks, Dask blocks) sums the statistics of the parts; the torch engine all-reduces
them across the ranks of a ``torch.distributed`` process group.
"""

from __future__ import annotations

import math

import numpy as np

from . import ops
from ._types import EMStats, MixtureParams


def is_tensor(x) -> bool:
    """True for a torch.Tensor, without importing torch when it is not loaded."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _log_weights(weights):
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(weights, dtype=np.float64))


class NumpyEngine:
    """EM on a NumPy array with the native kernels (gmmfast.ops)."""

    def __init__(self, estimator, X: np.ndarray, sample_weight):
        self.est = estimator
        self.X = X
        self.sw = sample_weight
        self.n_features = X.shape[1]
        self.n_rows = X.shape[0] if sample_weight is None else int(np.count_nonzero(sample_weight))

    def initial_params(self, random_state, inits, state):
        return self.est._initial_params(self.X, self.sw, random_state, inits, state)

    def to_device(self, params: MixtureParams) -> MixtureParams:
        return params

    def to_host(self, params: MixtureParams) -> MixtureParams:
        return params

    def step(self, params: MixtureParams, state):
        est, X = self.est, self.X
        stats = ops.em_stats(
            X,
            _log_weights(params.weights).astype(X.dtype),
            params.means.astype(X.dtype),
            params.precisions_cholesky.astype(X.dtype),
            est.covariance_type,
            sample_weight=self.sw,
            n_threads=est.n_threads,
        )
        params, restarted = est._m_step(stats, X, self.sw, params, state)
        return stats.mean_log_likelihood, params, restarted

    def attributes(self, params: MixtureParams) -> dict:
        dt = self.X.dtype
        return {
            "weights_": params.weights.astype(dt),
            "means_": params.means.astype(dt),
            "covariances_": params.covariances.astype(dt),
            "precisions_cholesky_": params.precisions_cholesky.astype(dt),
        }


class TorchEngine:
    """EM on a torch tensor (CPU or CUDA) through the gmmfast:: ops.

    ``X_host`` / ``sw_host`` are NumPy views (CPU tensors) or copies (CUDA tensors)
    used by the initialisation and the recovery paths only.
    """

    def __init__(self, estimator, X, X_host: np.ndarray, sample_weight, sw_host, group=None):
        import torch

        from .torch import _ops  # noqa: F401  (registers the gmmfast:: ops)

        self.torch = torch
        self.est = estimator
        self.X = X
        self.X_host = X_host
        self.sw = sample_weight
        self.sw_host = sw_host
        self.nk_eps = 10.0 * float(np.finfo(X_host.dtype).eps)
        self.n_features = X_host.shape[1]
        self.n_rows = X_host.shape[0] if sw_host is None else int(np.count_nonzero(sw_host))
        # data parallel: each rank holds a part of the rows; the statistics of every
        # iteration are summed across the ranks (see gmmfast.torch.distributed)
        self.group = group
        self.ranks = None
        if group is not None:
            from .torch.distributed import RankData

            self.ranks = RankData(estimator, X_host, sw_host, group)
            self.n_rows = self.ranks.n_rows

    def initial_params(self, random_state, inits, state):
        if self.ranks is None:
            return self.est._initial_params(self.X_host, self.sw_host, random_state, inits, state)
        return self.ranks.initial_params(random_state, inits, state)

    def to_device(self, params: MixtureParams) -> MixtureParams:
        t = self.torch

        def dev(a):
            return None if a is None else t.as_tensor(np.asarray(a, dtype=np.float64), device=self.X.device)

        return MixtureParams(
            params.covariance_type,
            dev(params.weights),
            dev(params.means),
            dev(params.covariances),
            dev(params.precisions_cholesky),
            dev(params.log_det_cholesky),
        )

    def to_host(self, params: MixtureParams) -> MixtureParams:
        def host(a):
            return None if a is None else a.detach().cpu().numpy()

        return MixtureParams(
            params.covariance_type,
            host(params.weights),
            host(params.means),
            host(params.covariances),
            host(params.precisions_cholesky),
            host(params.log_det_cholesky),
        )

    def step(self, params: MixtureParams, state):
        t, est = self.torch, self.est
        cov = est.covariance_type
        dt = self.X.dtype
        means = params.means.to(dt)
        scalars, nk, s1, s2 = t.ops.gmmfast.em_stats(
            self.X,
            t.log(params.weights).to(dt),
            means,
            params.precisions_cholesky.to(dt),
            means,
            self.sw,
            cov,
        )
        if self.ranks is not None:
            # one all-reduce of the statistics per iteration: every rank then computes
            # the same M-step and lower bound (the global weighted mean)
            scalars, nk, s1, s2 = self.ranks.all_reduce_tensors(scalars, nk, s1, s2)
        centres = means.double()
        new = t.ops.gmmfast.finalize(nk, s1, s2, centres, state.reg_covar, self.nk_eps, cov)
        pieces = [scalars, new[5].double().reshape(1)]
        if est.recovery == "reseed":
            pieces.append(nk)
        host = t.cat(pieces).tolist()  # the iteration's one host synchronisation
        ll, wsum, failed = host[0], host[1], int(host[2])
        lower_bound = ll / wsum
        if not math.isfinite(lower_bound):
            raise ValueError(
                "The log-likelihood of the data is not finite under the current mixture: "
                f"{dt} arithmetic overflowed (values too far from every component). "
                "Scale the data, or pass float64 data."
            )
        collapsed = False
        if est.recovery == "reseed":
            stats_nk = np.asarray(host[3:])
            collapsed = bool(np.any(stats_nk < 2.0 * wsum / max(state.n_rows, 1)))
        if failed < 0 and not collapsed:
            return lower_bound, MixtureParams(cov, *new[:5]), False
        # failure or collapse: the NumPy recovery code on host copies of the statistics
        stats = EMStats(
            cov,
            centres.cpu().numpy(),
            ll,
            wsum,
            nk.cpu().numpy(),
            s1.cpu().numpy(),
            s2.cpu().numpy(),
            str(self.X_host.dtype),
        )
        host_params, restarted = est._m_step(stats, self.X_host, self.sw_host, self.to_host(params), state)
        if self.ranks is not None:
            # a restart picks this rank's worst-explained rows: take rank 0's choice
            host_params = self.ranks.agree_on(host_params, state)
        return lower_bound, self.to_device(host_params), restarted

    def attributes(self, params: MixtureParams) -> dict:
        dt = self.X.dtype
        return {
            "weights_": params.weights.to(dt),
            "means_": params.means.to(dt),
            "covariances_": params.covariances.to(dt),
            "precisions_cholesky_": params.precisions_cholesky.to(dt),
        }


def distributed_group():
    """The torch.distributed process group a tensor fit all-reduces over, or None (no
    group initialised, a single rank, or disabled by
    :func:`gmmfast.torch.distributed.use_group`). Never imports torch.distributed when
    torch is not loaded."""
    import sys

    if "torch" not in sys.modules:
        return None
    from .torch.distributed import current_group

    return current_group()
