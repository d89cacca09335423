"""gmmfast.torch: Gaussian-mixture log-likelihoods as differentiable PyTorch ops.

The functions here wrap the ``gmmfast::`` custom ops (see :mod:`gmmfast.torch._ops`),
which run gmmfast's native kernels on CPU tensors and its CUDA kernels on CUDA tensors
(on the current stream), work under ``torch.compile`` and have analytic backward
passes. Parameters use scikit-learn's precision-Cholesky parameterisation (shapes in
:mod:`gmmfast.reference`).

Like other torch ops these never synchronise or raise on values: NaN/inf in the inputs
give NaN/inf in the outputs, and invalid parameter values (a non-positive diagonal of
the precision Cholesky factor) give NaN. Shapes, dtypes and devices are checked.

Example
-------
>>> import torch, gmmfast.torch as gt
>>> X = torch.randn(100, 2)
>>> logits = torch.zeros(3, requires_grad=True)
>>> means = torch.randn(3, 2, requires_grad=True)
>>> prec = torch.eye(2).repeat(3, 1, 1).requires_grad_()
>>> nll = -gt.log_prob(X, torch.log_softmax(logits, 0), means, prec).mean()
>>> nll.backward()
"""

from __future__ import annotations

from typing import NamedTuple, Optional

try:
    import torch
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "gmmfast.torch needs PyTorch; install it with `pip install torch` "
        "(or `pip install gmmfast[torch]`)"
    ) from exc

from torch import Tensor

from .._types import COVARIANCE_TYPES
from . import _ops

__all__ = ["log_prob", "log_likelihood", "em_stats", "finalize", "TorchEMStats", "TorchMixture"]

_OUTPUTS = ("sample", "log_resp", "weighted")


def _check(X, log_weights, means, precisions_cholesky, covariance_type):
    for name, t in (
        ("X", X),
        ("log_weights", log_weights),
        ("means", means),
        ("precisions_cholesky", precisions_cholesky),
    ):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {', '.join(map(repr, COVARIANCE_TYPES))}, got {covariance_type!r}"
        )
    if X.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"X must be float32 or float64, got {X.dtype}")
    if X.dim() != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"X must be a non-empty 2-D tensor (n_samples, n_features), got shape {tuple(X.shape)}")
    D = X.shape[1]
    if log_weights.dim() != 1 or log_weights.shape[0] < 1:
        raise ValueError(f"log_weights must have shape (n_components,), got {tuple(log_weights.shape)}")
    K = log_weights.shape[0]
    if tuple(means.shape) != (K, D):
        raise ValueError(f"means must have shape (n_components, n_features) = {(K, D)}, got {tuple(means.shape)}")
    shape = _ops._param_shape(covariance_type, K, D)
    if tuple(precisions_cholesky.shape) != shape:
        raise ValueError(
            f"precisions_cholesky must have shape {shape} for covariance_type={covariance_type!r}, "
            f"got {tuple(precisions_cholesky.shape)}"
        )
    for name, t in (("log_weights", log_weights), ("means", means), ("precisions_cholesky", precisions_cholesky)):
        if t.device != X.device:
            raise ValueError(f"{name} is on {t.device} but X is on {X.device}")
    dt = X.dtype
    U = precisions_cholesky.to(dt)
    if covariance_type in ("full", "tied"):
        U = torch.triu(U)  # entries below the diagonal are ignored (zero gradient)
    return log_weights.to(dt), means.to(dt), U


def log_prob(
    X: Tensor,
    log_weights: Tensor,
    means: Tensor,
    precisions_cholesky: Tensor,
    covariance_type: str = "full",
    output: str = "sample",
) -> Tensor:
    """Log-densities of the rows of X under a Gaussian mixture, differentiable in all inputs.

    Parameters
    ----------
    X : Tensor (n_samples, n_features), float32 or float64, CPU or CUDA
    log_weights : Tensor (n_components,)
        log π_k (pass ``torch.log_softmax(logits, 0)`` to learn unconstrained weights).
    means : Tensor (n_components, n_features)
    precisions_cholesky : Tensor
        full (K, D, D) / tied (D, D) upper triangular (entries below the diagonal are
        ignored), diag (K, D), spherical (K,); positive diagonal.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    output : {'sample', 'log_resp', 'weighted'}
        (N,) log p(x_i); (N, K) log p(k | x_i); (N, K) log π_k + log N(x_i | k).
    """
    if output not in _OUTPUTS:
        raise ValueError(f"output must be one of {', '.join(map(repr, _OUTPUTS))}, got {output!r}")
    lw, mu, U = _check(X, log_weights, means, precisions_cholesky, covariance_type)
    return torch.ops.gmmfast.log_prob(X, lw, mu, U, covariance_type, output)


def log_likelihood(X, log_weights, means, precisions_cholesky, covariance_type="full") -> Tensor:
    """Per-sample log-likelihood log p(x_i), shape (n_samples,): ``log_prob(..., 'sample')``."""
    return log_prob(X, log_weights, means, precisions_cholesky, covariance_type, "sample")


class TorchEMStats(NamedTuple):
    """EM statistics as float64 tensors on X's device (see :class:`gmmfast.EMStats`)."""

    log_likelihood: Tensor
    weight_sum: Tensor
    nk: Tensor
    s1: Tensor
    s2: Tensor
    centres: Tensor
    covariance_type: str


def em_stats(
    X: Tensor,
    log_weights: Tensor,
    means: Tensor,
    precisions_cholesky: Tensor,
    covariance_type: str = "full",
    *,
    centres: Optional[Tensor] = None,
    sample_weight: Optional[Tensor] = None,
) -> TorchEMStats:
    """Fused E-step + centred sufficient statistics (not differentiable), float64 tensors."""
    lw, mu, U = _check(X, log_weights, means, precisions_cholesky, covariance_type)
    c = mu if centres is None else centres.to(device=X.device, dtype=X.dtype)
    if tuple(c.shape) != tuple(mu.shape):
        raise ValueError(f"centres must have shape {tuple(mu.shape)}, got {tuple(c.shape)}")
    if sample_weight is not None:
        if tuple(sample_weight.shape) != (X.shape[0],):
            raise ValueError(f"sample_weight must have shape ({X.shape[0]},), got {tuple(sample_weight.shape)}")
        sample_weight = sample_weight.to(device=X.device, dtype=X.dtype)
    scalars, nk, s1, s2 = torch.ops.gmmfast.em_stats(X, lw, mu, U, c, sample_weight, covariance_type)
    return TorchEMStats(scalars[0], scalars[1], nk, s1, s2, c.to(torch.float64), covariance_type)


class TorchMixture(NamedTuple):
    """Parameters from :func:`finalize` (float64 tensors); ``failed`` is a 0-d int64
    tensor: the first component whose covariance is not positive definite, or -1."""

    weights: Tensor
    means: Tensor
    covariances: Tensor
    precisions_cholesky: Tensor
    log_det_cholesky: Tensor
    failed: Tensor


def finalize(stats: TorchEMStats, reg_covar: float = 1e-6, dtype=torch.float64) -> TorchMixture:
    """scikit-learn's M-step from statistics (float64, on the statistics' device).

    Never raises on an ill-defined covariance (that would synchronise): check
    ``result.failed`` (>= 0 means failure), e.g. together with the lower bound.
    """
    eps = torch.finfo(dtype).eps
    out = torch.ops.gmmfast.finalize(
        stats.nk, stats.s1, stats.s2, stats.centres, float(reg_covar), 10.0 * eps, stats.covariance_type
    )
    return TorchMixture(*out)
