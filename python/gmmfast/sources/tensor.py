"""A torch tensor (CPU or CUDA) as an EM data source: the E-step and the M-step run on
the tensor's device through the ``gmmfast::`` ops.

Parameters live where the data live (float64 tensors on the data's device), and an
iteration synchronises with the host once: the lower bound, the M-step's failure flag
and, with recovery='reseed', the component weights travel in one transfer. The
initialisation (k-means and the other init_params) runs on the CPU kernels, on a host
copy of X when X is on a GPU, so that a CUDA fit starts exactly where a CPU fit does;
the rare recovery paths run on host copies too.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from .. import ops
from ..torch import _ops  # noqa: F401  (registers the gmmfast:: ops)
from .._types import EMStats, MixtureParams
from .array import ArraySource
from .base import DataSource, Finalized


class TensorStats(NamedTuple):
    """em_stats' sums on the device: [Σ g log p, Σ g], n_k, s1, s2, and the centres."""

    scalars: torch.Tensor
    nk: torch.Tensor
    s1: torch.Tensor
    s2: torch.Tensor
    centres: torch.Tensor
    covariance_type: str


class TensorSource(DataSource):
    """Rows ``X`` (a contiguous float32/float64 tensor) with optional weights ``sw`` (a
    tensor on X's device). ``X_host`` / ``sw_host`` are NumPy views (CPU tensors) or
    copies (CUDA tensors), used by the initialisation and the recovery paths only."""

    def __init__(self, X, X_host: np.ndarray, sw, sw_host):
        self.X = X
        self.sw = sw
        self.host = ArraySource(X_host, sw_host)
        self.dtype = X_host.dtype
        self.device = X.device
        self.n_features = X_host.shape[1]
        self.n_rows = self.host.n_rows
        self.nk_eps = 10.0 * float(np.finfo(X_host.dtype).eps)

    def initial_stats(self, settings, random_state) -> EMStats:
        return self.host.initial_stats(settings, random_state)

    def recovery_rows(self) -> tuple:
        return self.host.recovery_rows()

    def memory_shape(self) -> tuple:
        return self.host.memory_shape()

    def check_memory(self, settings, initialise=True, n_copies=3, op="GaussianMixture.fit", shape=None):
        """The host check (the initialisation runs on a host copy of X), and for a CUDA
        tensor the parameters and statistics that live on the device against its free
        memory (torch.cuda.mem_get_info)."""
        super().check_memory(settings, initialise, n_copies, op, shape)
        if self.device.type != "cuda":
            return
        init_rows, pass_rows = self.memory_shape() if shape is None else shape
        parts, advice = ops.fit_memory_parts(
            max(1, int(pass_rows)), self.n_features, settings.n_components, settings.covariance_type,
            dtype=self.dtype, n_threads=1, init_params=settings.init_params, initialise=False, n_copies=n_copies,
        )
        # on the device: the parameters, the merged statistics (one set per pass) and
        # the parameters in the data's dtype; the initialisation runs on the host
        parts = [(what.replace("1 threads + merged", "on the device"), b / 2 if what.startswith("statistics") else b)
                 for what, b in parts]
        need = sum(b for _, b in parts)
        free, _ = torch.cuda.mem_get_info(self.device)
        if need > free:
            detail = "; ".join(f"{w}: {b / 2**30:.3g} GiB" for w, b in sorted(parts, key=lambda p: -p[1])[:3])
            raise MemoryError(
                f"gmmfast.{op} on {self.device} would need about {need / 2**30:.3g} GiB of GPU memory "
                f"({detail}), but only {free / 2**30:.3g} GiB is free. {advice.split(' Use ')[0]} Use fewer "
                "components (n_components) or features, a cheaper covariance_type ('diag' or 'spherical' "
                "instead of 'full'), or fit on the CPU."
            )

    def column_means(self) -> np.ndarray:
        return self.host.column_means()

    def sum_across_processes(self, stats: TensorStats) -> TensorStats:
        """The statistics of all the data (one process holds all of it here)."""
        return stats

    def em_stats(self, params: MixtureParams, settings) -> TensorStats:
        dt = self.X.dtype
        means = params.means.to(dt)
        lw = torch.log(params.weights) if params.log_weights is None else params.log_weights
        scalars, nk, s1, s2 = torch.ops.gmmfast.em_stats(
            self.X,
            lw.to(dt),
            means,
            params.precisions_cholesky.to(dt),
            means,
            self.sw,
            settings.covariance_type,
        )
        return self.sum_across_processes(TensorStats(scalars, nk, s1, s2, means.double(), settings.covariance_type))

    def finalize(self, stats: TensorStats, reg_covar: float, settings) -> Finalized:
        cov = settings.covariance_type
        new = torch.ops.gmmfast.finalize(stats.nk, stats.s1, stats.s2, stats.centres, reg_covar, self.nk_eps, cov)
        pieces = [stats.scalars, new[5].double().reshape(1)]
        reseed = settings.recovery == "reseed"
        if reseed:
            pieces.append(stats.nk)
        host = torch.cat(pieces).tolist()  # the iteration's one host synchronisation
        ll, wsum, failed = host[0], host[1], int(host[2])
        if not math.isfinite(ll / wsum):
            raise ValueError(
                "The log-likelihood of the data is not finite under the current mixture: "
                f"{self.X.dtype} arithmetic overflowed (values too far from every component). "
                "Scale the data, or pass float64 data."
            )
        params = MixtureParams(cov, *new[:5]) if failed < 0 else None
        return Finalized(params, ll, wsum, np.asarray(host[3:]) if reseed else None)

    def host_stats(self, stats: TensorStats) -> EMStats:
        ll, wsum = stats.scalars.tolist()
        return EMStats(
            stats.covariance_type,
            stats.centres.cpu().numpy(),
            ll,
            wsum,
            stats.nk.cpu().numpy(),
            stats.s1.cpu().numpy(),
            stats.s2.cpu().numpy(),
            str(self.dtype),
        )

    def to_device(self, params: MixtureParams) -> MixtureParams:
        def dev(a):
            return None if a is None else torch.as_tensor(np.asarray(a, dtype=np.float64), device=self.device)

        return MixtureParams(
            params.covariance_type,
            dev(params.weights),
            dev(params.means),
            dev(params.covariances),
            dev(params.precisions_cholesky),
            dev(params.log_det_cholesky),
            dev(params.log_weights),
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
            host(params.log_weights),
        )

    def attributes(self, params: MixtureParams) -> dict:
        dt = self.X.dtype
        return {
            "weights_": params.weights.to(dt),
            "means_": params.means.to(dt),
            "covariances_": params.covariances.to(dt),
            "precisions_cholesky_": params.precisions_cholesky.to(dt),
        }
