"""CPU implementations of the gmmfast torch ops: the native `_core` kernels on zero-copy
NumPy views of contiguous CPU tensors.

Every function receives tensors already made contiguous, on the CPU, with parameters
in X's dtype (see _ops.py). The bindings run with ``checks=False``: parameter values are
not validated and non-finite rows give NaN/inf outputs instead of exceptions, which is
how torch ops behave (and what the CUDA backend can do without synchronising).
"""

from __future__ import annotations

import torch

from .. import _core


def _np(t: torch.Tensor):
    return t.detach().numpy()


def _t(a) -> torch.Tensor:
    return torch.from_numpy(a)


def log_prob(X, log_weights, means, prec_chol, covariance_type: str, output: str) -> torch.Tensor:
    return _t(
        _core.log_prob(
            _np(X), _np(log_weights), _np(means), _np(prec_chol), covariance_type, output, checks=False
        )
    )


def em_stats(X, log_weights, means, prec_chol, centres, sample_weight, resp, covariance_type: str):
    """(scalars [log_likelihood, weight_sum] float64, nk, s1, s2)."""
    ll, wsum, nk, s1, s2 = _core.em_stats(
        _np(X),
        _np(log_weights),
        _np(means),
        _np(prec_chol),
        covariance_type,
        centres=_np(centres),
        sample_weight=None if sample_weight is None else _np(sample_weight),
        resp=None if resp is None else _np(resp),
        n_components=log_weights.shape[0],
        signed_resp=True,
        checks=False,
    )
    return torch.tensor([ll, wsum], dtype=torch.float64), _t(nk), _t(s1), _t(s2)


def grad_x(X, log_weights, means, prec_chol, sample_weight, resp, covariance_type: str):
    return _t(
        _core.log_prob_grad_x(
            _np(X),
            _np(log_weights),
            _np(means),
            _np(prec_chol),
            covariance_type,
            sample_weight=None if sample_weight is None else _np(sample_weight),
            resp=None if resp is None else _np(resp),
            checks=False,
        )
    )


def finalize(nk, s1, s2, centres, reg_covar: float, nk_eps: float, covariance_type: str):
    """(weights, means, covariances, prec_chol, log_det, failed) — failed is a 0-d int64
    tensor holding the first ill-defined component, or -1."""
    w, m, c, u, ld, failed = _core.finalize(
        covariance_type,
        _np(nk),
        _np(s1),
        _np(s2),
        _np(centres),
        reg_covar,
        nk_eps,
        False,
        True,
    )
    return _t(w), _t(m), _t(c), _t(u), _t(ld), torch.tensor(failed, dtype=torch.int64)
