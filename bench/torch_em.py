"""EM for Gaussian mixtures in plain PyTorch: the benchmark's torch baseline.

Written the way a skilled torch user would: scikit-learn's parameterisation
(precision Cholesky factors, see gmmfast.reference) and its M-step formulas, the
Mahalanobis products of all components in one matmul, ``torch.logsumexp`` for the
responsibilities, ``torch.linalg`` for the Cholesky factors. The E-step runs over
blocks of rows, to bound its rows × K × D temporary (full and tied) and to keep it
cache-sized on CPU; the N × K responsibilities are kept whole, as scikit-learn does.

Device-agnostic and dtype-following: everything is created on X's device in X's dtype,
so the same code serves the CPU benchmark and the GPU one.

    params = GMMParams.from_covariances("full", weights, means, covariances)
    lower_bound, params = em_iteration(X, params)
    result = fit(X, params, tol=1e-3, max_iter=100)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
_LOG_2PI = math.log(2.0 * math.pi)

#: elements of the rows × K × D temporary per block of rows: 8 MiB of float64 on CPU,
#: to stay near cache size, 256 MiB on an accelerator, where fewer and bigger kernels
#: win and memory bandwidth is plentiful
CPU_CHUNK_ELEMENTS = 1 << 20
DEVICE_CHUNK_ELEMENTS = 1 << 25


def default_chunk_elements(device) -> int:
    return CPU_CHUNK_ELEMENTS if torch.device(device).type == "cpu" else DEVICE_CHUNK_ELEMENTS


_ILL_DEFINED = (
    "Fitting the mixture model failed because some components have ill-defined "
    "empirical covariance (for instance caused by singleton or collapsed samples). "
    "Try to decrease the number of components, increase reg_covar, or scale the "
    "input data."
)


@dataclass
class GMMParams:
    """Mixture parameters as tensors, in scikit-learn's shapes for the covariance type."""

    covariance_type: str
    weights: torch.Tensor  # (K,)
    means: torch.Tensor  # (K, D)
    covariances: torch.Tensor  # full (K, D, D), tied (D, D), diag (K, D), spherical (K,)
    precisions_cholesky: torch.Tensor  # same shape; upper triangular for full/tied

    @classmethod
    def from_covariances(cls, covariance_type, weights, means, covariances):
        if covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}")
        return cls(
            covariance_type,
            weights,
            means,
            covariances,
            precision_cholesky(covariances, covariance_type),
        )


@dataclass
class FitResult:
    params: GMMParams
    lower_bound: float
    n_iter: int
    converged: bool


def precision_cholesky(covariances: torch.Tensor, covariance_type: str) -> torch.Tensor:
    """U with U Uᵀ = Σ⁻¹ (U = L⁻ᵀ for Σ = L Lᵀ), or 1/σ for diag/spherical."""
    if covariance_type in ("full", "tied"):
        L, info = torch.linalg.cholesky_ex(covariances)
        if bool((info != 0).any()):
            raise ValueError(_ILL_DEFINED)
        eye = torch.eye(
            covariances.shape[-1], dtype=covariances.dtype, device=covariances.device
        ).expand_as(L)
        return torch.linalg.solve_triangular(L, eye, upper=False).mT
    if bool((covariances <= 0).any()):
        raise ValueError(_ILL_DEFINED)
    return covariances.rsqrt()


def log_det_cholesky(prec_chol: torch.Tensor, covariance_type: str, n_features: int):
    """Σ_j log U[j, j] per component: ½ log det of each precision."""
    if covariance_type == "full":
        return torch.diagonal(prec_chol, dim1=-2, dim2=-1).log().sum(-1)
    if covariance_type == "tied":
        return torch.diagonal(prec_chol).log().sum()
    if covariance_type == "diag":
        return prec_chol.log().sum(1)
    return n_features * prec_chol.log()


def _rows_per_chunk(n_samples, n_components, n_features, covariance_type, chunk_elements):
    # full/tied build a rows × K × D tensor; diag/spherical only rows × max(K, D)
    if covariance_type in ("full", "tied"):
        per_row = n_components * n_features
    else:
        per_row = max(n_components, n_features)
    return max(1, min(n_samples, chunk_elements // per_row))


def _mahalanobis_sq(X, means, prec_chol, covariance_type):
    """‖(x_i − μ_k)ᵀ U_k‖² as (rows, K), in scikit-learn's arithmetic."""
    if covariance_type == "full":
        # X U_k for all k as ONE (rows, D) @ (D, K·D) matmul, then − μ_k U_k
        n_components, n_features = means.shape
        u_all = prec_chol.permute(1, 0, 2).reshape(n_features, -1)
        mu_u = torch.matmul(means.unsqueeze(1), prec_chol).reshape(-1)  # (K·D,)
        y = (X @ u_all - mu_u).view(X.shape[0], n_components, n_features)
        return y.square_().sum(-1)
    if covariance_type == "tied":
        y = (X @ prec_chol).unsqueeze(1) - means @ prec_chol  # (rows, K, D)
        return y.square_().sum(-1)
    precisions = prec_chol.square()
    if covariance_type == "diag":
        # expanded form, as scikit-learn: two matmuls instead of a rows × K × D tensor
        return (
            (means.square() * precisions).sum(1)
            - 2.0 * (X @ (means * precisions).T)
            + X.square() @ precisions.T
        )
    return (
        means.square().sum(1) * precisions
        - 2.0 * (X @ means.T) * precisions
        + torch.outer(X.square().sum(1), precisions)
    )


def estimate_weighted_log_prob(X, params: GMMParams) -> torch.Tensor:
    """log π_k + log N(x_i | k) for a block of rows, shape (rows, K)."""
    n_features = X.shape[1]
    log_det = log_det_cholesky(params.precisions_cholesky, params.covariance_type, n_features)
    maha = _mahalanobis_sq(X, params.means, params.precisions_cholesky, params.covariance_type)
    return -0.5 * (n_features * _LOG_2PI + maha) + log_det + params.weights.log()


def e_step(X, params: GMMParams, chunk_elements: int | None = None):
    """(mean log-likelihood as a 0-d float64 tensor, responsibilities (N, K))."""
    n_samples, n_features = X.shape
    n_components = params.means.shape[0]
    chunk_elements = chunk_elements or default_chunk_elements(X.device)
    rows = _rows_per_chunk(
        n_samples, n_components, n_features, params.covariance_type, chunk_elements
    )
    resp = torch.empty((n_samples, n_components), dtype=X.dtype, device=X.device)
    # the total is accumulated in float64: a float32 sum over 1e6 rows loses digits
    # that the convergence test (|Δ| < 1e-3) needs
    total = torch.zeros((), dtype=torch.float64, device=X.device)
    for start in range(0, n_samples, rows):
        stop = min(start + rows, n_samples)
        weighted = estimate_weighted_log_prob(X[start:stop], params)
        log_norm = torch.logsumexp(weighted, dim=1)
        torch.exp(weighted - log_norm.unsqueeze(1), out=resp[start:stop])
        total += log_norm.sum(dtype=torch.float64)
    return total / n_samples, resp


def m_step(X, resp, covariance_type: str, reg_covar: float = 1e-6) -> GMMParams:
    """scikit-learn's M-step (``_estimate_gaussian_parameters``) in torch."""
    n_features = X.shape[1]
    # scikit-learn's guard against empty components
    nk = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps
    means = (resp.T @ X) / nk.unsqueeze(1)
    if covariance_type == "full":
        # centred at the new means, one component at a time as scikit-learn: a batched
        # (K, N, D) version measured 2x slower on CPU (it streams K copies of X through
        # memory) and needs chunking to bound its memory
        cov = torch.empty(
            (nk.shape[0], n_features, n_features), dtype=X.dtype, device=X.device
        )
        for k in range(nk.shape[0]):
            diff = X - means[k]
            torch.matmul(diff.T * resp[:, k], diff, out=cov[k])
        cov /= nk.view(-1, 1, 1)
        cov.diagonal(dim1=-2, dim2=-1).add_(reg_covar)
    elif covariance_type == "tied":
        cov = (X.T @ X - (nk * means.T) @ means) / nk.sum()
        cov.diagonal().add_(reg_covar)
    else:
        cov = (resp.T @ X.square()) / nk.unsqueeze(1) - means.square() + reg_covar
        if covariance_type == "spherical":
            cov = cov.mean(1)
    return GMMParams.from_covariances(covariance_type, nk / nk.sum(), means, cov)


def em_iteration(X, params: GMMParams, reg_covar: float = 1e-6, chunk_elements=None):
    """One EM iteration: (lower bound of ``params`` as a 0-d tensor, new parameters)."""
    lower_bound, resp = e_step(X, params, chunk_elements)
    return lower_bound, m_step(X, resp, params.covariance_type, reg_covar)


def fit(
    X,
    init: GMMParams,
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    reg_covar: float = 1e-6,
    chunk_elements=None,
) -> FitResult:
    """EM from ``init`` with scikit-learn's loop: stop when the lower bound (mean
    log-likelihood before the M-step) changes by less than ``tol``."""
    params = init
    lower_bound = -math.inf
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        previous = lower_bound
        lb, params = em_iteration(X, params, reg_covar, chunk_elements)
        lower_bound = float(lb)  # one device sync per iteration, for the stopping rule
        if abs(lower_bound - previous) < tol:
            converged = True
            break
    return FitResult(params, lower_bound, n_iter, converged)
