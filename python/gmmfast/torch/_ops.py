"""The ``gmmfast::`` torch custom ops.

Registered with :func:`torch.library.custom_op`; each has a fake (meta) implementation,
so torch.compile traces through it, and ``gmmfast::log_prob`` has an autograd formula.
The native code does not link libtorch: the implementations call ``gmmfast._core`` on
CPU tensors and ``gmmfast._cuda`` on CUDA tensors (with the current stream), choosing by
the tensor's device.

Backward (docs/architecture.md and the gradient formulas below): every output of log_prob is a
combination of the per-component log-densities L_ik = log π_k + log N(x_i | k), so its
vector-Jacobian product is Σ_ik W_ik ∂L_ik with weights W built from the upstream
gradient G:

- output 'sample' (LSE_k L_ik):       W_ik = G_i p(k | x_i)   (the E-step, weighted by G)
- output 'weighted' (L_ik):            W_ik = G_ik
- output 'log_resp' (L_ik - LSE_i):    W_ik = G_ik - p(k | x_i) Σ_j G_ij

and Σ_ik W_ik ∂L_ik needs only the W-weighted statistics n_k = Σ_i W_ik,
s1_k = Σ_i W_ik (x_i - μ_k), S2_k = Σ_i W_ik (x_i - μ_k)(x_i - μ_k)ᵀ (em_stats again):

    ∂/∂log π_k = n_k,   ∂/∂μ_k = Λ_k s1_k,   ∂/∂U_k = triu(-S2_k U_k) + n_k diag(1/U_k,jj),
    ∂/∂x_i = -Σ_k W_ik Λ_k (x_i - μ_k)            (log_prob_grad_x)

(diag: ∂/∂p_kd = -p_kd S2_kd + n_k/p_kd; spherical: ∂/∂p_k = -p_k S2_k + D n_k/p_k; tied
sums over k). Entries of U below the diagonal are ignored by the forward, so their
gradient is zero.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _cpu_backend

_OUTPUTS = ("sample", "log_resp", "weighted")


def _backend(t: Tensor):
    if t.device.type == "cuda":
        from . import _cuda_backend

        return _cuda_backend
    if t.device.type == "cpu":
        return _cpu_backend
    raise NotImplementedError(f"gmmfast has no kernels for device {t.device}")


def _param_shape(covariance_type: str, K, D):
    return {
        "full": (K, D, D),
        "tied": (D, D),
        "diag": (K, D),
        "spherical": (K,),
    }[covariance_type]


# ----------------------------------------------------------------------------- log_prob


@torch.library.custom_op("gmmfast::log_prob", mutates_args=())
def log_prob_op(
    X: Tensor,
    log_weights: Tensor,
    means: Tensor,
    precisions_cholesky: Tensor,
    covariance_type: str,
    output: str,
) -> Tensor:
    """Mixture log-densities: 'sample' (N,), 'log_resp' (N, K) or 'weighted' (N, K)."""
    return _backend(X).log_prob(
        X.contiguous(),
        log_weights.contiguous(),
        means.contiguous(),
        precisions_cholesky.contiguous(),
        covariance_type,
        output,
    )


@log_prob_op.register_fake
def _(X, log_weights, means, precisions_cholesky, covariance_type, output):
    N, K = X.shape[0], log_weights.shape[0]
    return X.new_empty((N,)) if output == "sample" else X.new_empty((N, K))


@torch.library.custom_op("gmmfast::log_prob_backward", mutates_args=())
def log_prob_backward_op(
    weights: Tensor,
    X: Tensor,
    log_weights: Tensor,
    means: Tensor,
    precisions_cholesky: Tensor,
    covariance_type: str,
    per_sample: bool,
    need_x: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients (X, log_weights, means, precisions_cholesky) of Σ_ik W_ik L_ik.

    ``weights`` is G (N,) with W_ik = G_i p(k|x_i) when per_sample, else W (N, K).
    The X gradient is an empty (0, D) tensor unless need_x.
    """
    be = _backend(X)
    X = X.contiguous()
    lw, mu, U = log_weights.contiguous(), means.contiguous(), precisions_cholesky.contiguous()
    sw = weights.contiguous() if per_sample else None
    resp = None if per_sample else weights.contiguous()
    _, nk, s1, s2 = be.em_stats(X, lw, mu, U, mu, sw, resp, covariance_type)
    g_lw, g_mu, g_U = _parameter_grads(nk, s1, s2, U.to(torch.float64), covariance_type, X.shape[1])
    dt = X.dtype
    if need_x:
        g_X = be.grad_x(X, lw, mu, U, sw, resp, covariance_type)
    else:
        g_X = X.new_empty((0, X.shape[1]))
    # contiguous, as the fake implementation declares (the tied formula transposes)
    return g_X, g_lw.to(dt).contiguous(), g_mu.to(dt).contiguous(), g_U.to(dt).contiguous()


@log_prob_backward_op.register_fake
def _(weights, X, log_weights, means, precisions_cholesky, covariance_type, per_sample, need_x):
    D = X.shape[1]
    g_X = X.new_empty((X.shape[0], D)) if need_x else X.new_empty((0, D))
    return g_X, torch.empty_like(log_weights), torch.empty_like(means), torch.empty_like(precisions_cholesky)


def _parameter_grads(nk, s1, s2, U, covariance_type, D):
    """Parameter gradients from W-weighted statistics (float64; see the module docstring)."""
    if covariance_type == "full":
        g_mu = (U @ (U.transpose(-1, -2) @ s1.unsqueeze(-1))).squeeze(-1)
        diag = torch.diagonal(U, dim1=-2, dim2=-1)
        g_U = torch.triu(-(s2 @ U)) + torch.diag_embed(nk.unsqueeze(-1) / diag)
    elif covariance_type == "tied":
        g_mu = (U @ (U.T @ s1.T)).T
        g_U = torch.triu(-(s2 @ U)) + torch.diag(nk.sum() / torch.diagonal(U))
    elif covariance_type == "diag":
        g_mu = U * U * s1
        g_U = -U * s2 + nk.unsqueeze(-1) / U
    else:
        g_mu = (U * U).unsqueeze(-1) * s1
        g_U = -U * s2 + D * nk / U
    return nk, g_mu, g_U


def _setup_context(ctx, inputs, output):
    X, log_weights, means, prec_chol, covariance_type, out_kind = inputs
    ctx.covariance_type = covariance_type
    ctx.out_kind = out_kind
    ctx.save_for_backward(X, log_weights, means, prec_chol, output if out_kind == "log_resp" else None)


def _backward(ctx, grad):
    X, log_weights, means, prec_chol, log_resp = ctx.saved_tensors
    if ctx.out_kind == "sample":
        weights, per_sample = grad, True
    elif ctx.out_kind == "weighted":
        weights, per_sample = grad, False
    else:
        resp = log_resp.exp()
        weights, per_sample = grad - resp * grad.sum(dim=1, keepdim=True), False
    need_x = ctx.needs_input_grad[0]
    g_X, g_lw, g_mu, g_U = log_prob_backward_op(
        weights, X, log_weights, means, prec_chol, ctx.covariance_type, per_sample, need_x
    )
    return (g_X if need_x else None), g_lw, g_mu, g_U, None, None


torch.library.register_autograd("gmmfast::log_prob", _backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------- em_stats


@torch.library.custom_op("gmmfast::em_stats", mutates_args=())
def em_stats_op(
    X: Tensor,
    log_weights: Tensor,
    means: Tensor,
    precisions_cholesky: Tensor,
    centres: Tensor,
    sample_weight: Optional[Tensor],
    covariance_type: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fused E-step + centred statistics: ([log_likelihood, weight_sum], nk, s1, s2), float64."""
    return _backend(X).em_stats(
        X.contiguous(),
        log_weights.contiguous(),
        means.contiguous(),
        precisions_cholesky.contiguous(),
        centres.contiguous(),
        None if sample_weight is None else sample_weight.contiguous(),
        None,
        covariance_type,
    )


@em_stats_op.register_fake
def _(X, log_weights, means, precisions_cholesky, centres, sample_weight, covariance_type):
    K, D = means.shape
    f64 = dict(dtype=torch.float64, device=X.device)
    return (
        torch.empty((2,), **f64),
        torch.empty((K,), **f64),
        torch.empty((K, D), **f64),
        torch.empty(_param_shape(covariance_type, K, D), **f64),
    )


# ----------------------------------------------------------------------------- finalize


@torch.library.custom_op("gmmfast::finalize", mutates_args=())
def finalize_op(
    nk: Tensor,
    s1: Tensor,
    s2: Tensor,
    centres: Tensor,
    reg_covar: float,
    nk_eps: float,
    covariance_type: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Statistics -> (weights, means, covariances, prec_chol, log_det, failed), float64.

    ``failed`` (0-d int64) is the first component whose covariance is not positive
    definite, or -1: the op never raises on it (that would synchronise a CUDA stream);
    the caller checks it together with the lower bound.
    """
    return _backend(nk).finalize(
        nk.contiguous().double(),
        s1.contiguous().double(),
        s2.contiguous().double(),
        centres.contiguous().double(),
        float(reg_covar),
        float(nk_eps),
        covariance_type,
    )


@finalize_op.register_fake
def _(nk, s1, s2, centres, reg_covar, nk_eps, covariance_type):
    K, D = s1.shape
    f64 = dict(dtype=torch.float64, device=nk.device)
    shape = _param_shape(covariance_type, K, D)
    return (
        torch.empty((K,), **f64),
        torch.empty((K, D), **f64),
        torch.empty(shape, **f64),
        torch.empty(shape, **f64),
        torch.empty((K,), **f64),
        torch.empty((), dtype=torch.int64, device=nk.device),
    )
