"""torch.distributions for per-sample Gaussian mixtures (mixture density networks).

:class:`GaussianMixture` is a batch of Gaussian mixtures, one per batch element, each with
its own logits, means and scales, as a mixture density network predicts them. Its
``log_prob`` is gmmfast's fused op (:func:`gmmfast.torch.per_sample.per_sample_log_prob`):
one pass, log-sum-exp fused, closed-form backward, a fraction of the memory of
``torch.distributions.MixtureSameFamily``. ``sample`` draws each sample's component first
and then draws only from that component.

Example
-------
>>> import torch
>>> from gmmfast.distributions import GaussianMixture
>>> logits, means, sigma = torch.zeros(8, 3), torch.randn(8, 3, 2), torch.ones(8, 3, 2)
>>> gm = GaussianMixture(logits, means, sigma, covariance="diag")
>>> gm.log_prob(torch.randn(8, 2)).shape
torch.Size([8])
>>> gm.sample((5,)).shape
torch.Size([5, 8, 2])

Needs PyTorch.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from .torch.per_sample import BACKENDS, check_params, per_sample_log_prob, result_dtype

__all__ = ["GaussianMixture"]


class GaussianMixture(Distribution):
    """A batch of Gaussian mixtures whose parameters differ per batch element.

    Parameters
    ----------
    logits : (..., K) raw mixture logits (``mixture="per_dim"``: (..., D, K)).
    means : (..., K, D) (per_dim: (..., D, K)).
    scale : σ (..., K) for ``"isotropic"``, (..., K, D) for ``"diag"``, the lower Cholesky
        factor (..., K, D, D) for ``"full"`` (Σ = L Lᵀ, like MultivariateNormal's
        scale_tril), (σ1, σ2) (..., K, 2) for ``"correlated2d"``; per_dim: (..., D, K).
    rho : (..., K) correlations in (-1, 1), for ``"correlated2d"`` only.
    covariance : "isotropic", "diag", "full" or "correlated2d".
    mixture : "joint" (one mixture of D-dimensional Gaussians) or "per_dim" (an
        independent 1-D mixture per feature).
    backend : how log_prob is computed: "auto" (the fused op where it has a kernel for
        the device, plain torch elsewhere: fused on the CPU, and on CUDA when gmmfast
        was built with its CUDA kernels),
        "fused" or "torch".

    batch_shape is ``...``, event_shape ``(D,)``.
    """

    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        logits: Tensor,
        means: Tensor,
        scale: Tensor,
        rho: Optional[Tensor] = None,
        covariance: str = "diag",
        mixture: str = "joint",
        backend: str = "auto",
        validate_args: Optional[bool] = None,
    ):
        batch, D, K = check_params(logits, means, scale, rho, covariance, mixture)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        self.logits, self.means, self.scale, self.rho = logits, means, scale, rho
        self.covariance, self.mixture, self.backend = covariance, mixture, backend
        self.n_components, self.n_features = K, D
        super().__init__(torch.Size(batch), torch.Size((D,)), validate_args=validate_args)

    # ---------------------------------------------------------------- constraints
    @property
    def arg_constraints(self):
        c = {"logits": constraints.real_vector, "means": constraints.real}
        if self.covariance == "full":
            c["scale"] = constraints.lower_cholesky
        else:
            c["scale"] = constraints.positive
        if self.rho is not None:
            c["rho"] = constraints.interval(-1.0, 1.0)
        return c

    @property
    def _param_names(self):
        return ("logits", "means", "scale") + (("rho",) if self.rho is not None else ())

    # ---------------------------------------------------------------- derived quantities
    @property
    def mixture_weights(self) -> Tensor:
        """softmax(logits): (..., K), per_dim (..., D, K)."""
        return torch.softmax(self.logits, dim=-1)

    @property
    def mean(self) -> Tensor:
        w = self.mixture_weights
        if self.mixture == "per_dim":
            return (w * self.means).sum(-1)
        return (w.unsqueeze(-1) * self.means).sum(-2)

    @property
    def variance(self) -> Tensor:
        """Diagonal of the mixture's covariance: Σ_k π_k (diag Σ_k + μ_k²) - mean²."""
        w = self.mixture_weights
        if self.mixture == "per_dim":
            second = (w * (self.scale**2 + self.means**2)).sum(-1)
        else:
            if self.covariance == "isotropic":
                var = (self.scale**2).unsqueeze(-1).expand_as(self.means)
            elif self.covariance == "full":
                L = torch.tril(self.scale)
                var = (L * L).sum(-1)
            else:  # diag, correlated2d
                var = self.scale**2
            second = (w.unsqueeze(-1) * (var + self.means**2)).sum(-2)
        return (second - self.mean**2).clamp_min(0.0)

    # ---------------------------------------------------------------- log_prob
    def log_prob(self, value: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        """log p(value), shape ``value.shape[:-1]`` (value may carry extra leading sample
        dimensions). ``mask`` (that shape, nonzero = keep) zeroes padded entries and their
        gradients."""
        if self._validate_args:
            self._validate_sample(value)
        params = self._params()
        if value.dim() < 1 or value.shape[-1] != self.n_features:
            raise ValueError(
                f"value must have shape (..., {self.n_features}) for this mixture, got {tuple(value.shape)}"
            )
        shape = tuple(value.shape[:-1])
        if shape != tuple(self.batch_shape):
            # sample dimensions in front of the batch: broadcast the parameters
            try:
                full = torch.broadcast_shapes(shape, tuple(self.batch_shape))
            except RuntimeError:
                raise ValueError(
                    f"value of shape {tuple(value.shape)} does not broadcast with batch shape "
                    f"{tuple(self.batch_shape)} and event shape ({self.n_features},)"
                ) from None
            nb = len(self.batch_shape)
            params = [
                None if p is None else p.expand(full + tuple(p.shape[nb:])) for p in params
            ]
            value = value.expand(full + (self.n_features,))
        logits, means, scale, rho = params
        return per_sample_log_prob(
            value,
            logits,
            means,
            scale,
            rho,
            covariance=self.covariance,
            mixture=self.mixture,
            mask=mask,
            backend=self.backend,
        )

    def _params(self):
        return [self.logits, self.means, self.scale, self.rho]

    # ---------------------------------------------------------------- sampling
    def _component_params(self, comp: Tensor, shape):
        """The parameters of the chosen components, broadcast to ``shape`` (sample + batch)."""
        nb = len(self.batch_shape)

        def take(p: Tensor, dim_from_end: int) -> Tensor:
            # p: batch + (…, K at position -dim_from_end, …); comp: shape (+ (D,) for per_dim)
            p = p.expand(tuple(shape) + tuple(p.shape[nb:]))
            idx = comp
            k_dim = p.dim() - dim_from_end
            for _ in range(p.dim() - idx.dim()):
                idx = idx.unsqueeze(-1)
            expand_to = list(p.shape)
            expand_to[k_dim] = 1
            idx = idx.expand(expand_to)
            return p.gather(k_dim, idx).squeeze(k_dim)

        if self.mixture == "per_dim":
            return take(self.means, 1), take(self.scale, 1), None
        means = take(self.means, 2)
        if self.covariance == "isotropic":
            scale = take(self.scale, 1)
        elif self.covariance == "full":
            scale = take(self.scale, 3)
        else:
            scale = take(self.scale, 2)
        rho = take(self.rho, 1) if self.rho is not None else None
        return means, scale, rho

    def _sample_components(self, sample_shape) -> Tensor:
        return torch.distributions.Categorical(logits=self.logits).sample(sample_shape)

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()) -> Tensor:
        """Draws sample_shape + batch_shape + (D,): the component first, then only that
        component's Gaussian (no K-fold work)."""
        shape = self._extended_shape(sample_shape)[:-1]
        comp = self._sample_components(sample_shape)
        means, scale, rho = self._component_params(comp, shape)
        eps = torch.randn(tuple(shape) + (self.n_features,), dtype=means.dtype, device=means.device)
        return self._transform(eps, means, scale, rho)

    def _transform(self, eps: Tensor, means: Tensor, scale: Tensor, rho: Optional[Tensor]) -> Tensor:
        if self.mixture == "per_dim" or self.covariance == "diag":
            return means + scale * eps
        if self.covariance == "isotropic":
            return means + scale.unsqueeze(-1) * eps
        if self.covariance == "full":
            return means + (torch.tril(scale) @ eps.unsqueeze(-1)).squeeze(-1)
        e1, e2 = eps[..., 0], eps[..., 1]
        x1 = means[..., 0] + scale[..., 0] * e1
        x2 = means[..., 1] + scale[..., 1] * (rho * e1 + torch.sqrt((1.0 - rho) * (1.0 + rho)) * e2)
        return torch.stack([x1, x2], dim=-1)

    @torch.no_grad()
    def greedy(self) -> Tensor:
        """The mean of the most probable component (per feature for per_dim): the
        deterministic "sample" used by greedy decoding. Shape batch_shape + (D,)."""
        comp = self.logits.argmax(dim=-1)
        means, _, _ = self._component_params(comp, self.batch_shape)
        return means

    # ---------------------------------------------------------------- sampling controls
    def temper(self, temperature: float = 1.0, bias: float = 0.0) -> "GaussianMixture":
        """The mixture with sampling temperature τ and Graves' bias b (2013, eq. 61-62):
        logits · (1 + b) / τ and every scale · exp(-b) · √τ (σ, the Cholesky factor, or
        σ1 and σ2; ρ unchanged). τ < 1 and b > 0 make samples more likely and less varied;
        τ = 1, b = 0 is the model itself."""
        temperature, bias = float(temperature), float(bias)
        if not temperature > 0.0 or not math.isfinite(temperature):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        if not bias >= 0.0 or not math.isfinite(bias):
            raise ValueError(f"bias must be a finite number >= 0, got {bias}")
        if temperature == 1.0 and bias == 0.0:
            return self
        logits = self.logits * ((1.0 + bias) / temperature)
        scale = self.scale * (math.exp(-bias) * math.sqrt(temperature))
        return GaussianMixture(
            logits, self.means, scale, self.rho, self.covariance, self.mixture, self.backend,
            validate_args=False,
        )

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        nb = len(self.batch_shape)
        p = [None if t is None else t.expand(tuple(batch_shape) + tuple(t.shape[nb:])) for t in self._params()]
        return GaussianMixture(*p, self.covariance, self.mixture, self.backend, validate_args=False)

    def to_dtype(self, dtype: Optional[torch.dtype] = None) -> "GaussianMixture":
        """The same mixture with every parameter in one floating dtype (default: promoted)."""
        dtype = dtype or result_dtype(*self._params())
        p = [None if t is None else t.to(dtype) for t in self._params()]
        return GaussianMixture(*p, self.covariance, self.mixture, self.backend, validate_args=False)

    def __repr__(self) -> str:
        return (
            f"GaussianMixture(batch_shape={tuple(self.batch_shape)}, n_features={self.n_features}, "
            f"n_components={self.n_components}, covariance={self.covariance!r}, mixture={self.mixture!r})"
        )
