"""Per-sample Gaussian mixtures as a differentiable torch op (mixture density networks).

A mixture density network predicts, for every sample, the parameters of a Gaussian
mixture over its target: mixture logits, component means and scales. The loss is the
negative log-likelihood of the targets, computed here by one fused op::

    from gmmfast.torch.per_sample import per_sample_log_prob
    lp = per_sample_log_prob(y, logits, means, scale, covariance="diag")   # (B,)
    loss = -lp.mean()

Shapes (``...`` is any batch shape, the same for every argument; D features, K components),
by ``covariance``:

- ``"isotropic"``: scale σ ``(..., K)``; Σ_k = σ_k² I
- ``"diag"``: scale σ ``(..., K, D)``; Σ_k = diag(σ_k²)
- ``"full"``: scale L ``(..., K, D, D)``, lower triangular with a positive diagonal; Σ_k = L_k L_kᵀ
  (torch's MultivariateNormal ``scale_tril``; entries above the diagonal are ignored)
- ``"correlated2d"``: D = 2, scale (σ1, σ2) ``(..., K, 2)`` and rho ``(..., K)`` in (-1, 1);
  Σ_k = [[σ1², ρσ1σ2], [ρσ1σ2, σ2²]] (Graves 2013's pen-offset model)

with y ``(..., D)``, logits ``(..., K)`` (raw: log_softmax is part of the op) and means
``(..., K, D)`` for ``mixture="joint"``. With ``mixture="per_dim"`` every feature has its own
1-D mixture: logits, means and scale are ``(..., D, K)`` and log p(y) = Σ_d log p_d(y_d)
(covariance ``"diag"`` or ``"isotropic"``, which coincide in 1-D). ``mask`` (``...``, bool or
float; nonzero = keep) zeroes the log-likelihood of padded steps and their gradients, even
when their parameters are NaN.

The op ``gmmfast::per_sample_log_prob`` returns (log_prob, responsibilities) and saves only
the responsibilities (B×K, per_dim B×D×K) besides its inputs (or, with
``save_responsibilities=False``, nothing: the backward pass then recomputes them); ``gmmfast::per_sample_log_prob_backward``
computes every gradient in closed form from them (with w_ik = g_i r_ik, g the upstream
gradient, z = (y - μ)/σ):

- logits:    g_i (r_ik - softmax(logits_i)_k)
- diag:      ∂μ = w z/σ,  ∂σ = w (z² - 1)/σ,  ∂y = -Σ_k ∂μ_k
- isotropic: ∂μ = w z/σ,  ∂σ_k = w (Σ_d z_d² - D)/σ_k
- full:      u = L⁻¹(y - μ), v = L⁻ᵀu:  ∂μ = w v,  ∂L = w tril(v uᵀ) - w diag(1/L_jj)
- correlated2d: s = 1 - ρ², a1 = (z1 - ρz2)/s, a2 = (z2 - ρz1)/s, Q = (z1² + z2² - 2ρz1z2)/s:
  ∂μ_j = w a_j/σ_j,  ∂σ_j = w (z_j a_j - 1)/σ_j,  ∂ρ = w (ρ + z1 z2 - ρQ)/s

Devices: the CPU kernel is gmmfast's C++/OpenMP code (zero-copy views of the tensors); the
CUDA kernel is gmmfast._cuda's (cuda/per_sample.cu: one thread or one warp per row, the
CPU's formulas), called with the tensors' device pointers on the current stream, outputs
and workspace allocated by torch, nothing synchronising. Where gmmfast was built without
its CUDA kernels, the op raises NotImplementedError on CUDA tensors, and
:func:`per_sample_log_prob` with ``backend="auto"`` (the default) falls back to
:func:`per_sample_log_prob_torch`, the same math in plain torch (autograd, more memory), so
code using it runs on every device.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
from torch import Tensor

from .. import _core

__all__ = [
    "COVARIANCES",
    "MIXTURES",
    "per_sample_log_prob",
    "per_sample_log_prob_torch",
    "fused_available",
    "check_params",
]

COVARIANCES = ("isotropic", "diag", "full", "correlated2d")
MIXTURES = ("joint", "per_dim")
BACKENDS = ("auto", "fused", "torch")
_CUDA_MESSAGE = (
    "the CUDA kernel of gmmfast::per_sample_log_prob is not built yet in this installation "
    "(gmmfast._cuda is missing: reinstall gmmfast with nvcc on PATH, or pass "
    "-Ccmake.define.GMMFAST_CUDA=ON to see why it was not built)"
)
_LOG_2PI = math.log(2.0 * math.pi)
_CUDA_DTYPES = {torch.float32: "float32", torch.float64: "float64"}


@functools.lru_cache(maxsize=None)
def _cuda_module():
    """gmmfast._cuda when it was built and has the per-sample kernels, else None."""
    try:
        from .. import _cuda
    except ImportError:
        return None
    return _cuda if hasattr(_cuda, "per_sample_log_prob") else None


def fused_available(device) -> bool:
    """Whether the fused op has a kernel for ``device``: the CPU always; CUDA when
    gmmfast was built with its CUDA kernels and a CUDA device is present."""
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        cu = _cuda_module()
        return cu is not None and torch.cuda.is_available() and cu.device_count() > 0
    return False


def _np(t: Tensor):
    return t.detach().numpy()


def _resp_shape(logits: Tensor):
    return tuple(logits.shape)  # (B, K) joint, (B, D, K) per_dim


def _check_device(t: Tensor) -> None:
    if t.device.type == "cuda":
        if _cuda_module() is None:
            raise NotImplementedError(_CUDA_MESSAGE)
        return
    if t.device.type != "cpu":
        raise NotImplementedError(f"gmmfast::per_sample_log_prob has no kernel for device {t.device}")


# ----------------------------------------------------------------------------- CUDA
#
# The CUDA implementations of both ops: gmmfast._cuda's kernels on the device pointers of
# contiguous tensors, enqueued on torch's current stream of the tensors' device (read here,
# inside the op body, so that CUDA-graph capture sees them on the capturing stream). Every
# output and the workspace are torch allocations; nothing synchronises or inspects values.
# `cu`, `device_index` and `stream` are parameters so that the tests can also drive these
# functions with the host emulation of the kernels (cuda/emu) on CPU tensors; lanes_per_row
# forces the kernels' row mapping (0: automatic, 1: a thread per row, 32: a warp per row).


def _cuda_launch_context(t: Tensor):
    index = t.device.index if t.device.index is not None else torch.cuda.current_device()
    return index, torch.cuda.current_stream(t.device).cuda_stream


def _cuda_dtype(y: Tensor) -> str:
    try:
        return _CUDA_DTYPES[y.dtype]
    except KeyError:
        raise ValueError(f"y must be float32 or float64, got {y.dtype}") from None


def _cuda_inputs(y: Tensor, *tensors):
    """The tensors in y's dtype, contiguous, after checking they share y's device."""
    out = []
    for name, t in zip(("logits", "means", "scale", "rho"), tensors):
        if t is None:
            out.append(None)
            continue
        if t.device != y.device:
            raise ValueError(f"{name} is on {t.device} but y is on {y.device}")
        out.append(t.to(dtype=y.dtype).contiguous())
    return out


def _cuda_mask(mask: Optional[Tensor], y: Tensor) -> Optional[Tensor]:
    """One byte per row, nonzero = keep (bool as is; other dtypes: != 0, so NaN keeps,
    as on the CPU)."""
    if mask is None:
        return None
    if mask.device != y.device:
        raise ValueError(f"mask is on {mask.device} but y is on {y.device}")
    return (mask if mask.dtype == torch.bool else mask != 0).contiguous()


def _ptr(t: Optional[Tensor]) -> int:
    return 0 if t is None else t.data_ptr()


def _cuda_workspace(nbytes: int, device: torch.device) -> Optional[Tensor]:
    # Freed when the caller returns; the caching allocator only reuses it for work enqueued
    # after ours on the same stream, so stream order keeps it valid.
    return torch.empty((int(nbytes),), dtype=torch.uint8, device=device) if nbytes else None


def _cuda_forward(cu, device_index: int, stream: int, y, logits, means, scale, rho, mask, covariance, mixture,
                  save_responsibilities, lanes_per_row: int = 0):
    dt = _cuda_dtype(y)
    y = y.contiguous()
    logits, means, scale, rho = _cuda_inputs(y, logits, means, scale, rho)
    m = _cuda_mask(mask, y)
    B, D = y.shape
    K = logits.shape[-1]
    out = torch.empty((B,), dtype=y.dtype, device=y.device)
    resp = torch.empty(_resp_shape(logits) if save_responsibilities else (0,), dtype=y.dtype, device=y.device)
    nbytes = cu.per_sample_workspace_bytes(dt, covariance, mixture, B, K, D, False, lanes_per_row)
    ws = _cuda_workspace(nbytes, y.device)
    cu.per_sample_log_prob(
        device_index, stream, dt, covariance, mixture, B, K, D,
        y.data_ptr(), logits.data_ptr(), means.data_ptr(), scale.data_ptr(), _ptr(rho), _ptr(m),
        out.data_ptr(), resp.data_ptr() if save_responsibilities else 0, _ptr(ws), nbytes, lanes_per_row,
    )
    return out, resp


def _cuda_backward(cu, device_index: int, stream: int, grad, resp, y, logits, means, scale, rho, mask, covariance,
                   mixture, need_y, lanes_per_row: int = 0):
    dt = _cuda_dtype(y)
    for name, t in (("logits", logits), ("means", means), ("scale", scale), ("rho", rho)):
        # the gradients are allocated like their inputs (as the fake implementation says)
        # and written in y's dtype
        if t is not None and t.dtype != y.dtype:
            raise ValueError(f"{name} must have y's dtype {y.dtype} in the backward pass, got {t.dtype}")
    y = y.contiguous()
    logits, means, scale, rho = _cuda_inputs(y, logits, means, scale, rho)
    m = _cuda_mask(mask, y)
    if grad.device != y.device or resp.device != y.device:
        raise ValueError(f"grad and resp must be on y's device {y.device}")
    grad = grad.to(dtype=y.dtype).contiguous()  # an upstream gradient is often expanded (stride 0)
    saved = resp.dim() > 1
    if saved:
        resp = resp.to(dtype=y.dtype).contiguous()
    B, D = y.shape
    K = logits.shape[-1]
    g_y = y.new_empty((B, D) if need_y else (0, D))
    g_logits = torch.empty_like(logits, memory_format=torch.contiguous_format)
    g_means = torch.empty_like(means, memory_format=torch.contiguous_format)
    g_scale = torch.empty_like(scale, memory_format=torch.contiguous_format)
    g_rho = y.new_empty((0,)) if rho is None else torch.empty_like(rho, memory_format=torch.contiguous_format)
    nbytes = cu.per_sample_workspace_bytes(dt, covariance, mixture, B, K, D, True, lanes_per_row)
    ws = _cuda_workspace(nbytes, y.device)
    cu.per_sample_log_prob_backward(
        device_index, stream, dt, covariance, mixture, B, K, D,
        grad.data_ptr(), resp.data_ptr() if saved else 0, y.data_ptr(), logits.data_ptr(), means.data_ptr(),
        scale.data_ptr(), _ptr(rho), _ptr(m),
        g_y.data_ptr() if need_y else 0, g_logits.data_ptr(), g_means.data_ptr(), g_scale.data_ptr(),
        0 if rho is None else g_rho.data_ptr(), _ptr(ws), nbytes, lanes_per_row,
    )
    return g_y, g_logits, g_means, g_scale, g_rho


# ----------------------------------------------------------------------------- the ops


@torch.library.custom_op("gmmfast::per_sample_log_prob", mutates_args=())
def per_sample_log_prob_op(
    y: Tensor,
    logits: Tensor,
    means: Tensor,
    scale: Tensor,
    rho: Optional[Tensor],
    mask: Optional[Tensor],
    covariance: str,
    mixture: str,
    save_responsibilities: bool = True,
) -> tuple[Tensor, Tensor]:
    """(log_prob (B,), responsibilities (B, K) or (B, D, K)); inputs flat and checked.

    Without save_responsibilities the second output is an empty (0,) tensor and the
    backward pass recomputes them."""
    _check_device(y)
    if y.device.type == "cuda":
        return _cuda_forward(
            _cuda_module(), *_cuda_launch_context(y), y, logits, means, scale, rho, mask, covariance, mixture,
            save_responsibilities,
        )
    out = torch.empty((y.shape[0],), dtype=y.dtype, device=y.device)
    resp = torch.empty(_resp_shape(logits) if save_responsibilities else (0,), dtype=y.dtype, device=y.device)
    _core.per_sample_log_prob(
        _np(y.contiguous()),
        _np(logits.contiguous()),
        _np(means.contiguous()),
        _np(scale.contiguous()),
        None if rho is None else _np(rho.contiguous()),
        None if mask is None else _np(mask.contiguous()),
        covariance,
        mixture,
        out=_np(out),
        resp=_np(resp),
        store_resp=save_responsibilities,
        checks=False,
    )
    return out, resp


@per_sample_log_prob_op.register_fake
def _(y, logits, means, scale, rho, mask, covariance, mixture, save_responsibilities=True):
    return y.new_empty((y.shape[0],)), y.new_empty(_resp_shape(logits) if save_responsibilities else (0,))


@torch.library.custom_op("gmmfast::per_sample_log_prob_backward", mutates_args=())
def per_sample_log_prob_backward_op(
    grad: Tensor,
    resp: Tensor,
    y: Tensor,
    logits: Tensor,
    means: Tensor,
    scale: Tensor,
    rho: Optional[Tensor],
    mask: Optional[Tensor],
    covariance: str,
    mixture: str,
    need_y: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (y, logits, means, scale, rho) of Σ_i grad_i log p(y_i).

    ``resp``: the forward pass's responsibilities, or its empty (0,) placeholder (then the
    kernel recomputes them). The y gradient is an empty (0, D) tensor unless need_y; the rho gradient an empty (0,)
    tensor unless rho is given.
    """
    _check_device(y)
    if y.device.type == "cuda":
        return _cuda_backward(
            _cuda_module(), *_cuda_launch_context(y), grad, resp, y, logits, means, scale, rho, mask, covariance,
            mixture, need_y,
        )
    B, D = y.shape
    g_y = y.new_empty((B, D) if need_y else (0, D))
    g_logits = torch.empty_like(logits, memory_format=torch.contiguous_format)
    g_means = torch.empty_like(means, memory_format=torch.contiguous_format)
    g_scale = torch.empty_like(scale, memory_format=torch.contiguous_format)
    g_rho = y.new_empty((0,)) if rho is None else torch.empty_like(rho, memory_format=torch.contiguous_format)
    outs = {"grad_y": _np(g_y), "grad_logits": _np(g_logits), "grad_means": _np(g_means), "grad_scale": _np(g_scale)}
    if rho is not None:
        outs["grad_rho"] = _np(g_rho)
    _core.per_sample_log_prob_backward(
        _np(grad.contiguous()),
        _np(resp.contiguous()) if resp.dim() > 1 else None,
        _np(y.contiguous()),
        _np(logits.contiguous()),
        _np(means.contiguous()),
        _np(scale.contiguous()),
        None if rho is None else _np(rho.contiguous()),
        None if mask is None else _np(mask.contiguous()),
        covariance,
        mixture,
        need_y,
        outs,
    )
    return g_y, g_logits, g_means, g_scale, g_rho


@per_sample_log_prob_backward_op.register_fake
def _(grad, resp, y, logits, means, scale, rho, mask, covariance, mixture, need_y):
    B, D = y.shape
    g_rho = y.new_empty((0,)) if rho is None else torch.empty_like(rho, memory_format=torch.contiguous_format)
    return (
        y.new_empty((B, D) if need_y else (0, D)),
        torch.empty_like(logits, memory_format=torch.contiguous_format),
        torch.empty_like(means, memory_format=torch.contiguous_format),
        torch.empty_like(scale, memory_format=torch.contiguous_format),
        g_rho,
    )


def _setup_context(ctx, inputs, output):
    y, logits, means, scale, rho, mask, covariance, mixture, _save = inputs
    _, resp = output
    ctx.mark_non_differentiable(resp)
    # no B×K zeros for the responsibilities' (always absent) gradient
    ctx.set_materialize_grads(False)
    ctx.covariance = covariance
    ctx.mixture = mixture
    ctx.save_for_backward(resp, y, logits, means, scale, rho, mask)


def _backward(ctx, grad, _grad_resp):
    resp, y, logits, means, scale, rho, mask = ctx.saved_tensors
    if grad is None:
        return (None,) * 9
    need_y = ctx.needs_input_grad[0]
    g_y, g_logits, g_means, g_scale, g_rho = per_sample_log_prob_backward_op(
        grad, resp, y, logits, means, scale, rho, mask, ctx.covariance, ctx.mixture, need_y
    )
    return (
        g_y if need_y else None,
        g_logits if ctx.needs_input_grad[1] else None,
        g_means if ctx.needs_input_grad[2] else None,
        g_scale if ctx.needs_input_grad[3] else None,
        g_rho if (rho is not None and ctx.needs_input_grad[4]) else None,
        None,
        None,
        None,
        None,
    )


torch.library.register_autograd("gmmfast::per_sample_log_prob", _backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- pure torch


def per_sample_log_prob_torch(
    y: Tensor,
    logits: Tensor,
    means: Tensor,
    scale: Tensor,
    rho: Optional[Tensor] = None,
    mask: Optional[Tensor] = None,
    covariance: str = "diag",
    mixture: str = "joint",
) -> Tensor:
    """The fused op's math in plain torch, on flat checked inputs (y (B, D), ...).

    Runs on any device and differentiates with autograd; it materialises B×K×D
    intermediates, so it needs several times the fused op's memory and time. Used on
    devices without a fused kernel, and by the tests as a reference.
    """
    if mask is not None:
        # Masked rows are replaced by a harmless mixture first, so NaN/inf parameters of
        # padded steps cannot leak into the gradients of the kept rows (0 · NaN = NaN).
        keep = mask != 0

        def clean(t: Tensor, value: float) -> Tensor:
            k = keep.reshape(keep.shape + (1,) * (t.dim() - 1))
            return torch.where(k, t, torch.full_like(t, value))

        y, logits, means = clean(y, 0.0), clean(logits, 0.0), clean(means, 0.0)
        if covariance == "full":
            eye = torch.eye(y.shape[-1], dtype=scale.dtype, device=scale.device)
            k = keep.reshape(-1, 1, 1, 1)
            scale = torch.where(k, scale, eye.expand_as(scale))
        else:
            scale = clean(scale, 1.0)
        if rho is not None:
            rho = clean(rho, 0.0)
    if mixture == "per_dim":
        log_w = torch.log_softmax(logits, dim=-1)  # (B, D, K)
        z = (y.unsqueeze(-1) - means) / scale
        comp = -0.5 * z * z - torch.log(scale) - 0.5 * _LOG_2PI
        lp = torch.logsumexp(log_w + comp, dim=-1).sum(-1)
    else:
        log_w = torch.log_softmax(logits, dim=-1)  # (B, K)
        D = y.shape[-1]
        delta = y.unsqueeze(-2) - means  # (B, K, D)
        if covariance == "diag":
            z = delta / scale
            comp = -0.5 * (z * z).sum(-1) - torch.log(scale).sum(-1) - 0.5 * D * _LOG_2PI
        elif covariance == "isotropic":
            z = delta / scale.unsqueeze(-1)
            comp = -0.5 * (z * z).sum(-1) - D * torch.log(scale) - 0.5 * D * _LOG_2PI
        elif covariance == "full":
            L = torch.tril(scale)
            u = torch.linalg.solve_triangular(L, delta.unsqueeze(-1), upper=False).squeeze(-1)
            log_det = torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
            comp = -0.5 * (u * u).sum(-1) - log_det - 0.5 * D * _LOG_2PI
        else:  # correlated2d
            z = delta / scale
            z1, z2 = z[..., 0], z[..., 1]
            s = (1.0 - rho) * (1.0 + rho)
            q = (z1 * z1 + z2 * z2 - 2.0 * rho * z1 * z2) / s
            comp = -0.5 * q - torch.log(scale).sum(-1) - 0.5 * torch.log(s) - _LOG_2PI
        lp = torch.logsumexp(log_w + comp, dim=-1)
    if mask is not None:
        lp = torch.where(mask != 0, lp, torch.zeros_like(lp))
    return lp


# ----------------------------------------------------------------------------- public API


def _expect(name: str, t: Tensor, shape: tuple, meaning: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {meaning} = {tuple(shape)}, got {tuple(t.shape)}")


def check_params(logits, means, scale, rho=None, covariance="diag", mixture="joint"):
    """Validates the parameters of a batch of per-sample mixtures (shapes, options, devices).

    Returns (batch_shape, n_features, n_components); raises ValueError/TypeError naming the
    offending argument.
    """
    for name, t in (("logits", logits), ("means", means), ("scale", scale)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if covariance not in COVARIANCES:
        raise ValueError(f"covariance must be one of {', '.join(map(repr, COVARIANCES))}, got {covariance!r}")
    if mixture not in MIXTURES:
        raise ValueError(f"mixture must be one of {', '.join(map(repr, MIXTURES))}, got {mixture!r}")
    if mixture == "per_dim":
        if covariance not in ("diag", "isotropic"):
            raise ValueError(
                "mixture='per_dim' models each feature by a 1-D mixture: covariance must be 'diag' "
                f"(or 'isotropic', the same in 1-D), got {covariance!r}"
            )
        if logits.dim() < 2 or logits.shape[-1] < 1 or logits.shape[-2] < 1:
            raise ValueError(
                "logits must have shape (..., n_features, n_components) for mixture='per_dim', "
                f"got {tuple(logits.shape)}"
            )
        batch, D, K = tuple(logits.shape[:-2]), logits.shape[-2], logits.shape[-1]
        meaning = "(..., n_features, n_components)"
        _expect("means", means, batch + (D, K), meaning)
        _expect("scale", scale, batch + (D, K), meaning)
    else:
        if logits.dim() < 1 or logits.shape[-1] < 1:
            raise ValueError(f"logits must have shape (..., n_components), got {tuple(logits.shape)}")
        batch, K = tuple(logits.shape[:-1]), logits.shape[-1]
        if means.dim() != len(batch) + 2 or tuple(means.shape[:-1]) != batch + (K,) or means.shape[-1] < 1:
            raise ValueError(
                f"means must have shape (..., n_components, n_features) = {batch + (K,)} + (D,), "
                f"got {tuple(means.shape)}"
            )
        D = means.shape[-1]
        if covariance == "isotropic":
            _expect("scale", scale, batch + (K,), "(..., n_components)")
        elif covariance == "diag":
            _expect("scale", scale, batch + (K, D), "(..., n_components, n_features)")
        elif covariance == "full":
            _expect("scale", scale, batch + (K, D, D), "(..., n_components, n_features, n_features)")
        else:
            if D != 2:
                raise ValueError(f"covariance='correlated2d' needs n_features = 2, got means of shape {tuple(means.shape)}")
            _expect("scale", scale, batch + (K, 2), "(..., n_components, 2) holding (σ1, σ2)")
    if covariance == "correlated2d":
        if rho is None:
            raise ValueError("covariance='correlated2d' needs rho, the correlation of each component, shape (..., n_components)")
        if not isinstance(rho, Tensor):
            raise TypeError(f"rho must be a torch.Tensor, got {type(rho).__name__}")
        _expect("rho", rho, batch + (K,), "(..., n_components)")
    elif rho is not None:
        raise ValueError(f"rho is only used with covariance='correlated2d', got covariance={covariance!r}")
    for name, t in (("means", means), ("scale", scale), ("rho", rho)):
        if t is not None and t.device != logits.device:
            raise ValueError(f"{name} is on {t.device} but logits is on {logits.device}")
    return batch, D, K


def _check(y, logits, means, scale, rho, mask, covariance, mixture):
    batch, D, K = check_params(logits, means, scale, rho, covariance, mixture)
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    _expect("y", y, batch + (D,), "(..., n_features) with the parameters' batch shape")
    if y.device != logits.device:
        raise ValueError(f"y is on {y.device} but the parameters are on {logits.device}")
    if mask is not None:
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}")
        _expect("mask", mask, batch, "the batch shape")
        if mask.dtype.is_complex:
            raise ValueError("mask must be a bool or real tensor")
        if mask.device != y.device:
            raise ValueError(f"mask is on {mask.device} but y is on {y.device}")
    dtype = result_dtype(y, logits, means, scale, rho)
    return batch, dtype


def result_dtype(*tensors) -> torch.dtype:
    """The dtype the kernels compute in: the promoted floating dtype of the inputs
    (float16/bfloat16 -> float32; all-integer -> the default dtype)."""
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors if t is not None])
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    if not dtype.is_floating_point:
        return torch.get_default_dtype()
    return dtype


def per_sample_log_prob(
    y: Tensor,
    logits: Tensor,
    means: Tensor,
    scale: Tensor,
    rho: Optional[Tensor] = None,
    *,
    covariance: str = "diag",
    mixture: str = "joint",
    mask: Optional[Tensor] = None,
    backend: str = "auto",
    save_responsibilities: bool = True,
) -> Tensor:
    """Log-likelihood of ``y`` under per-sample Gaussian mixtures, shape ``y.shape[:-1]``.

    Parameters
    ----------
    y : (..., D) targets.
    logits : (..., K) raw mixture logits (per_dim: (..., D, K)); normalised inside.
    means : (..., K, D) (per_dim: (..., D, K)).
    scale : σ, scale_tril or (σ1, σ2), by ``covariance`` (module docstring).
    rho : (..., K) correlations, for ``covariance="correlated2d"`` only.
    covariance : "isotropic", "diag", "full" or "correlated2d".
    mixture : "joint" or "per_dim".
    mask : (...) bool or float, nonzero = keep. Masked entries give 0 and zero gradients.
    backend : "auto" (the fused op where it has a kernel, else plain torch), "fused" or
        "torch" (:func:`per_sample_log_prob_torch`).
    save_responsibilities : the fused op saves the B×K responsibilities for its backward
        pass (default). False saves nothing but the inputs and recomputes them in the
        backward pass: the smallest memory (only the gradients themselves), for about one
        more forward pass of time.

    All floating inputs are promoted to one dtype (float16/bfloat16 compute in float32).
    Like other torch ops this never raises on values: NaN/inf inputs, σ <= 0 or |ρ| >= 1
    give NaN or -inf for that sample. Differentiable w.r.t. y, logits, means, scale, rho
    (once: no double backward).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
    batch, dtype = _check(y, logits, means, scale, rho, mask, covariance, mixture)
    D = y.shape[-1]
    B = math.prod(batch)
    K = logits.shape[-1]
    flat_y = y.to(dtype).reshape(B, D)
    flat_logits = logits.to(dtype).reshape((B, D, K) if mixture == "per_dim" else (B, K))
    flat_means = means.to(dtype).reshape((B,) + tuple(means.shape[len(batch):]))
    flat_scale = scale.to(dtype).reshape((B,) + tuple(scale.shape[len(batch):]))
    flat_rho = None if rho is None else rho.to(dtype).reshape(B, K)
    flat_mask = None if mask is None else mask.reshape(B)
    if backend == "auto":
        backend = "fused" if fused_available(y.device) else "torch"
    if backend == "fused":
        lp, _ = per_sample_log_prob_op(
            flat_y, flat_logits, flat_means, flat_scale, flat_rho, flat_mask, covariance, mixture,
            save_responsibilities,
        )
    else:
        lp = per_sample_log_prob_torch(
            flat_y, flat_logits, flat_means, flat_scale, flat_rho, flat_mask, covariance, mixture
        )
    return lp.reshape(batch)
