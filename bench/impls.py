"""The implementations under test, behind one small interface.

Each implementation offers some of:

- ``iteration(X, init, n_threads)`` -> a zero-argument callable running ONE EM
  iteration from ``init`` (E-step + M-step) and returning an :class:`IterationOutput`,
  so that the harness can time it and then check the answer against gmmfast's;
- ``fit(X, K, covariance_type, n_threads)`` -> :class:`FitOutput`: a complete fit with
  the implementation's own k-means initialisation (what a user calls);
- ``em_from(X, init, n_threads)`` -> :class:`FitOutput`: EM from given parameters
  (gmmfast's k-means start), for implementations without their own initialisation.

Optional libraries (scikit-learn, torch) are imported on first use, so the memory
probe's children only load what they run.
"""

from __future__ import annotations

import inspect
import sys
import warnings
from dataclasses import dataclass

import numpy as np

import gmmfast
import gmmfast.ops as ops
import gmmfast.reference as reference
from gmmfast import MixtureParams

from cases import MAX_ITER, REG_COVAR, TOL
from peers import PEERS, FixedOutput


@dataclass
class IterationOutput:
    """What one iteration produced, as float64 NumPy, for the agreement check."""

    lower_bound: float  # mean log-likelihood of the starting parameters
    means: np.ndarray
    covariances: np.ndarray


@dataclass
class FitOutput:
    n_iter: int
    lower_bound: float  # final mean log-likelihood, scikit-learn's lower_bound_
    converged: bool


def _have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------
# threads


_limits = None  # keeps the threadpoolctl limit alive for the process


def limit_threads(n_threads: int) -> dict:
    """Pin every loaded thread pool to ``n_threads``; returns what was done.

    Environment variables only reach libraries loaded after they are set, so the BLAS
    and OpenMP pools already loaded (NumPy's OpenBLAS, scikit-learn's OpenMP) are
    limited through threadpoolctl; torch has its own setting; gmmfast gets n_threads
    explicitly on every call.
    """
    global _limits
    done = {"gmmfast": n_threads}
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        done["threadpoolctl"] = None
    else:
        _limits = threadpool_limits(limits=n_threads)
        done["threadpoolctl"] = sorted(
            {f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info()}
        )
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n_threads)
        done["torch"] = torch.get_num_threads()
    return done


# --------------------------------------------------------------------------------------
# gmmfast


def _params_as(init: MixtureParams, dtype):
    """(log weights, means, precision Cholesky) in the data's dtype, outside any timing."""
    with np.errstate(divide="ignore"):
        log_w = np.log(init.weights)
    return (
        np.ascontiguousarray(log_w, dtype=dtype),
        np.ascontiguousarray(init.means, dtype=dtype),
        np.ascontiguousarray(init.precisions_cholesky, dtype=dtype),
    )


class Gmmfast:
    name = "gmmfast"

    @staticmethod
    def available() -> bool:
        return True

    @staticmethod
    def version() -> str:
        return gmmfast.__version__

    @staticmethod
    def fit_api() -> str:
        """Which entry point :meth:`fit` uses (the estimator is being written)."""
        return "GaussianMixture" if hasattr(gmmfast, "GaussianMixture") else "ops"

    def iteration(self, X, init: MixtureParams, n_threads: int):
        log_w, means, prec_chol = _params_as(init, X.dtype)
        cov_type = init.covariance_type

        def run():
            stats = ops.em_stats(X, log_w, means, prec_chol, cov_type, n_threads=n_threads)
            params = ops.finalize(stats, REG_COVAR, X.dtype)
            return IterationOutput(stats.mean_log_likelihood, params.means, params.covariances)

        return run

    def em_stats_only(self, X, init: MixtureParams, n_threads: int):
        """One em_stats call (for the memory-scaling row: no finalize, no outputs)."""
        log_w, means, prec_chol = _params_as(init, X.dtype)
        return lambda: ops.em_stats(
            X, log_w, means, prec_chol, init.covariance_type, n_threads=n_threads
        )

    def fit(self, X, n_components, covariance_type, n_threads, max_iter=MAX_ITER):
        if hasattr(gmmfast, "GaussianMixture"):
            kwargs = dict(
                covariance_type=covariance_type, tol=TOL, max_iter=max_iter, random_state=0
            )
            if "n_threads" in inspect.signature(gmmfast.GaussianMixture).parameters:
                kwargs["n_threads"] = n_threads
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ConvergenceWarning: reported as a column
                gm = gmmfast.GaussianMixture(n_components, **kwargs).fit(X)
            return FitOutput(int(gm.n_iter_), float(gm.lower_bound_), bool(gm.converged_))
        init = ops.initial_params(
            X,
            n_components,
            covariance_type,
            init_params="kmeans",
            random_state=0,
            n_threads=n_threads,
        )
        return self.em_from(X, init, n_threads, max_iter)

    def em_from(self, X, init: MixtureParams, n_threads, max_iter=MAX_ITER):
        res = ops.em(X, init, tol=TOL, max_iter=max_iter, reg_covar=REG_COVAR, n_threads=n_threads)
        return FitOutput(res.n_iter, res.lower_bound, res.converged)

    def em_fixed(self, X, init: MixtureParams, n_iter, n_threads) -> FixedOutput:
        """Exactly ``n_iter`` iterations (tol=-1: |change| < -1 never holds), the
        peers' comparison (peer_runs.py)."""
        res = ops.em(X, init, tol=-1.0, max_iter=n_iter, reg_covar=REG_COVAR, n_threads=n_threads)
        p = res.params
        return FixedOutput(res.n_iter, p.weights, p.means, p.covariances)


def initial_params(X, n_components, covariance_type, n_threads) -> MixtureParams:
    """gmmfast's k-means start, shared by the implementations without their own."""
    return ops.initial_params(
        X, n_components, covariance_type, init_params="kmeans", random_state=0,
        n_threads=n_threads,
    )


# --------------------------------------------------------------------------------------
# the NumPy reference


def reference_temp_bytes(n_samples, n_features, n_components, dtype) -> int:
    """Peak temporaries of one reference.em_stats call, from reading its code.

    It holds about four N×K float64 arrays at once (weighted log-probabilities, their
    shifted exponentials, the responsibilities and their weighted copy) plus three
    N×D ones per component (X − c_k, its products) and, for float32 input, a float64
    copy of X.
    """
    n, d, k = n_samples, n_features, n_components
    total = 8 * (4 * n * k + 3 * n * d)
    if np.dtype(dtype) != np.float64:
        total += 8 * n * d
    return total


class Reference:
    name = "numpy-ref"

    @staticmethod
    def available() -> bool:
        return True

    @staticmethod
    def version() -> str:
        return np.__version__

    def iteration(self, X, init: MixtureParams, n_threads: int):
        log_w, means, prec_chol = _params_as(init, np.float64)
        cov_type = init.covariance_type

        def run():
            stats = reference.em_stats(X, log_w, means, prec_chol, cov_type)
            params = reference.finalize(stats, REG_COVAR, X.dtype)
            lb = stats.log_likelihood / stats.weight_sum
            return IterationOutput(lb, params.means, params.covariances)

        return run

    def em_from(self, X, init: MixtureParams, n_threads, max_iter=MAX_ITER):
        res = reference.em(X, init, tol=TOL, max_iter=max_iter, reg_covar=REG_COVAR)
        return FitOutput(res.n_iter, res.lower_bound, res.converged)


# --------------------------------------------------------------------------------------
# scikit-learn


class Sklearn:
    name = "sklearn"

    @staticmethod
    def available() -> bool:
        return _have("sklearn")

    @staticmethod
    def version() -> str:
        import sklearn

        return sklearn.__version__

    def iteration(self, X, init: MixtureParams, n_threads: int):
        """One pass of GaussianMixture's fit loop: ``_e_step`` then ``_m_step``.

        A private API (checked against scikit-learn 1.9.1): ``_e_step(X)`` returns
        (mean log-likelihood, log_resp), ``_m_step(X, log_resp)`` replaces weights_,
        means_, covariances_ and precisions_cholesky_ (new arrays, not in place), so
        resetting the attributes before each call restarts from ``init``.
        """
        from sklearn.mixture import GaussianMixture

        gm = GaussianMixture(
            init.n_components, covariance_type=init.covariance_type, reg_covar=REG_COVAR
        )
        start = {
            # scikit-learn keeps its parameters in the data's dtype
            "weights_": init.weights.astype(X.dtype),
            "means_": init.means.astype(X.dtype),
            "covariances_": init.covariances.astype(X.dtype),
            "precisions_cholesky_": init.precisions_cholesky.astype(X.dtype),
        }

        def run():
            for attr, value in start.items():
                setattr(gm, attr, value)
            lower_bound, log_resp = gm._e_step(X)
            gm._m_step(X, log_resp)
            return IterationOutput(
                float(lower_bound),
                np.asarray(gm.means_, dtype=np.float64),
                np.asarray(gm.covariances_, dtype=np.float64),
            )

        return run

    def fit(self, X, n_components, covariance_type, n_threads, max_iter=MAX_ITER):
        from sklearn.mixture import GaussianMixture

        gm = GaussianMixture(
            n_components,
            covariance_type=covariance_type,
            tol=TOL,
            max_iter=max_iter,
            reg_covar=REG_COVAR,
            random_state=0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: reported as a column
            gm.fit(X)
        return FitOutput(int(gm.n_iter_), float(gm.lower_bound_), bool(gm.converged_))

    def em_from(self, X, init: MixtureParams, n_threads, max_iter=MAX_ITER):
        """scikit-learn's own fit loop, started from ``init`` through ``warm_start``.

        With warm_start=True and ``converged_`` set, ``fit`` skips initialisation and
        continues from the fitted attributes; ``lower_bound_ = -inf`` makes the first
        iteration's change infinite, as after a fresh initialisation.
        """
        from sklearn.mixture import GaussianMixture

        gm = GaussianMixture(
            init.n_components,
            covariance_type=init.covariance_type,
            tol=TOL,
            max_iter=max_iter,
            reg_covar=REG_COVAR,
            warm_start=True,
        )
        gm.weights_ = init.weights.astype(X.dtype)
        gm.means_ = init.means.astype(X.dtype)
        gm.covariances_ = init.covariances.astype(X.dtype)
        gm.precisions_cholesky_ = init.precisions_cholesky.astype(X.dtype)
        gm.converged_ = False
        gm.lower_bound_ = -np.inf
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm.fit(X)
        return FitOutput(int(gm.n_iter_), float(gm.lower_bound_), bool(gm.converged_))


# --------------------------------------------------------------------------------------
# torch


class Torch:
    name = "torch"

    def __init__(self, device: str = "cpu"):
        self.device = device

    @staticmethod
    def available() -> bool:
        return _have("torch")

    @staticmethod
    def version() -> str:
        import torch

        return torch.__version__

    def _tensors(self, X, init: MixtureParams):
        import torch
        import torch_em

        Xt = torch.from_numpy(X).to(self.device)  # zero-copy on CPU

        def t(a):
            return torch.as_tensor(a, dtype=Xt.dtype, device=self.device)

        params = torch_em.GMMParams(
            init.covariance_type,
            t(init.weights),
            t(init.means),
            t(init.covariances),
            t(init.precisions_cholesky),
        )
        return Xt, params

    def _sync(self):
        if self.device != "cpu":
            import torch

            torch.cuda.synchronize(self.device)

    def iteration(self, X, init: MixtureParams, n_threads: int):
        import torch_em

        Xt, params = self._tensors(X, init)

        def run():
            lb, new = torch_em.em_iteration(Xt, params, REG_COVAR)
            self._sync()
            return IterationOutput(
                float(lb),
                new.means.double().cpu().numpy(),
                new.covariances.double().cpu().numpy(),
            )

        return run

    def em_from(self, X, init: MixtureParams, n_threads, max_iter=MAX_ITER):
        import torch_em

        Xt, params = self._tensors(X, init)
        res = torch_em.fit(Xt, params, tol=TOL, max_iter=max_iter, reg_covar=REG_COVAR)
        self._sync()
        return FitOutput(res.n_iter, res.lower_bound, res.converged)


IMPLEMENTATIONS = {impl.name: impl for impl in (Gmmfast(), Reference(), Sklearn(), Torch())}


def lookup(name: str):
    """An implementation or a peer (peers.py) by name (the memory probe's children)."""
    return IMPLEMENTATIONS[name] if name in IMPLEMENTATIONS else PEERS[name]


def available_implementations() -> dict:
    return {name: impl for name, impl in IMPLEMENTATIONS.items() if impl.available()}
