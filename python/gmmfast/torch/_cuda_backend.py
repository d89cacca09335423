"""CUDA implementations of the gmmfast torch ops: the ``gmmfast._cuda`` kernels on the
device pointers of contiguous CUDA tensors.

The same four functions, with the same signatures and return values, as
``_cpu_backend.py``. Every output and the workspace are allocated here with torch
(``torch.empty`` on X's device: the caching allocator and CUDA graphs see all memory);
the kernels are enqueued on ``torch.cuda.current_stream(device)`` -- read inside the op
body, so under CUDA-graph capture they land on the capturing stream -- and nothing
synchronises: values are never inspected on the host (NaN propagates, ``finalize``
reports an ill-defined covariance in its ``failed`` tensor).

``gmmfast._cuda`` links its own static CUDA runtime, which does not see torch's current
device, so the device index is passed explicitly with every call.
"""

from __future__ import annotations

import torch

from .. import _cuda

_DTYPES = {torch.float32: "float32", torch.float64: "float64"}
_F64 = torch.float64


def _dtype_name(X: torch.Tensor) -> str:
    try:
        return _DTYPES[X.dtype]
    except KeyError:
        raise ValueError(f"X must be float32 or float64, got {X.dtype}") from None


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


def _index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _like(X: torch.Tensor, t):
    """t on X's device, in X's dtype, contiguous (None stays None)."""
    if t is None:
        return None
    return t.to(device=X.device, dtype=X.dtype).contiguous()


def _ptr(t) -> int:
    return 0 if t is None else t.data_ptr()


def _workspace(nbytes: int, device: torch.device) -> torch.Tensor:
    # Freed when this function returns, but torch's caching allocator only reuses it for
    # work enqueued after ours on the same stream: stream order keeps it valid.
    return torch.empty(max(int(nbytes), 16), dtype=torch.uint8, device=device)


def _param_shape(covariance_type: str, K: int, D: int):
    return {"full": (K, D, D), "tied": (D, D), "diag": (K, D), "spherical": (K,)}[covariance_type]


def log_prob(X, log_weights, means, prec_chol, covariance_type: str, output: str) -> torch.Tensor:
    dt = _dtype_name(X)
    N, D = X.shape
    K = log_weights.shape[0]
    lw, mu, U = _like(X, log_weights), _like(X, means), _like(X, prec_chol)
    out = torch.empty((N,) if output == "sample" else (N, K), dtype=X.dtype, device=X.device)
    ws = _workspace(_cuda.log_prob_workspace_bytes(dt, covariance_type, N, D, K, output), X.device)
    _cuda.log_prob(
        _index(X.device), _stream(X.device), dt, covariance_type, N, D, K,
        X.data_ptr(), lw.data_ptr(), mu.data_ptr(), U.data_ptr(),
        output, out.data_ptr(), ws.data_ptr(), ws.numel(),
    )
    return out


def em_stats(X, log_weights, means, prec_chol, centres, sample_weight, resp, covariance_type: str):
    """(scalars [log_likelihood, weight_sum] float64, nk, s1, s2), all on X's device."""
    dt = _dtype_name(X)
    N, D = X.shape
    K = log_weights.shape[0]
    lw, mu, U, c = _like(X, log_weights), _like(X, means), _like(X, prec_chol), _like(X, centres)
    sw, r = _like(X, sample_weight), _like(X, resp)
    f64 = dict(dtype=_F64, device=X.device)
    scalars = torch.empty((2,), **f64)
    nk = torch.empty((K,), **f64)
    s1 = torch.empty((K, D), **f64)
    s2 = torch.empty(_param_shape(covariance_type, K, D), **f64)
    ws = _workspace(_cuda.em_stats_workspace_bytes(dt, covariance_type, N, D, K, r is not None), X.device)
    _cuda.em_stats(
        _index(X.device), _stream(X.device), dt, covariance_type, N, D, K,
        X.data_ptr(), lw.data_ptr(), mu.data_ptr(), U.data_ptr(), c.data_ptr(), _ptr(sw), _ptr(r),
        scalars.data_ptr(), nk.data_ptr(), s1.data_ptr(), s2.data_ptr(), ws.data_ptr(), ws.numel(),
    )
    return scalars, nk, s1, s2


def grad_x(X, log_weights, means, prec_chol, sample_weight, resp, covariance_type: str):
    dt = _dtype_name(X)
    N, D = X.shape
    K = log_weights.shape[0]
    lw, mu, U = _like(X, log_weights), _like(X, means), _like(X, prec_chol)
    sw, r = _like(X, sample_weight), _like(X, resp)
    out = torch.empty((N, D), dtype=X.dtype, device=X.device)
    ws = _workspace(_cuda.grad_x_workspace_bytes(dt, covariance_type, N, D, K, r is not None), X.device)
    _cuda.grad_x(
        _index(X.device), _stream(X.device), dt, covariance_type, N, D, K,
        X.data_ptr(), lw.data_ptr(), mu.data_ptr(), U.data_ptr(), _ptr(sw), _ptr(r),
        out.data_ptr(), ws.data_ptr(), ws.numel(),
    )
    return out


def finalize(nk, s1, s2, centres, reg_covar: float, nk_eps: float, covariance_type: str):
    """(weights, means, covariances, prec_chol, log_det, failed) -- failed is a 0-d int64
    device tensor holding the first ill-defined component, or -1 (never raised)."""
    device = nk.device
    K, D = s1.shape
    nk, s1, s2, centres = (t.to(device=device, dtype=_F64).contiguous() for t in (nk, s1, s2, centres))
    f64 = dict(dtype=_F64, device=device)
    shape = _param_shape(covariance_type, K, D)
    weights = torch.empty((K,), **f64)
    means = torch.empty((K, D), **f64)
    covariances = torch.empty(shape, **f64)
    prec_chol = torch.empty(shape, **f64)
    log_det = torch.empty((K,), **f64)
    failed = torch.empty((), dtype=torch.int64, device=device)
    ws = _workspace(_cuda.finalize_workspace_bytes(covariance_type, K, D), device)
    _cuda.finalize(
        _index(device), _stream(device), covariance_type, K, D,
        nk.data_ptr(), s1.data_ptr(), s2.data_ptr(), centres.data_ptr(), float(reg_covar), float(nk_eps),
        weights.data_ptr(), means.data_ptr(), covariances.data_ptr(), prec_chol.data_ptr(),
        log_det.data_ptr(), failed.data_ptr(), ws.data_ptr(), ws.numel(),
    )
    return weights, means, covariances, prec_chol, log_det, failed
