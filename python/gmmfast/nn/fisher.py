"""Fisher-vector and NetVLAD pooling of local CNN features under a Gaussian mixture.

Both layers take a set of N local descriptors x_i ∈ R^D per image — ``[B, N, D]``, or a
feature map ``[B, D, H, W]`` (N = H·W positions), or a single set ``[N, D]`` — and
return one fixed-length vector per image. Soft assignments come from gmmfast's fused
``gmmfast.torch.log_prob(..., output='log_resp')`` op (analytic backward); the
aggregation uses the per-image statistics S0_k = Σ_i q_ik, S1_k = Σ_i q_ik x_i,
S2_k = Σ_i q_ik x_i² (batched matrix products), so no ``[B, N, K, D]`` tensor is built.
The features are shifted by the mean of the component means first (an exact identity),
which keeps the expanded second moment accurate when the features sit far from the
origin.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gmmfast.torch as gt

__all__ = ["FisherVectorPool", "NetVLAD"]


def _as_sets(x: Tensor, D: int, name: str = "x") -> tuple[Tensor, bool]:
    """[B, N, D] view of the input (and whether it was a single unbatched set)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 4:
        if x.shape[1] != D:
            raise ValueError(f"{name} as a feature map must be [B, {D}, H, W], got {tuple(x.shape)}")
        return x.flatten(2).transpose(1, 2), False
    if x.dim() == 3:
        if x.shape[2] != D:
            raise ValueError(f"{name} as descriptor sets must be [B, N, {D}], got {tuple(x.shape)}")
        return x, False
    if x.dim() == 2:
        if x.shape[1] != D:
            raise ValueError(f"{name} as one descriptor set must be [N, {D}], got {tuple(x.shape)}")
        return x.unsqueeze(0), True
    raise ValueError(f"{name} must be [B, D, H, W], [B, N, D] or [N, D], got shape {tuple(x.shape)}")


def _descriptor_matrix(features, D: int, max_samples: Optional[int], random_state) -> np.ndarray:
    """Descriptors as a float64 [M, D] NumPy array (optionally a random subsample)."""
    if isinstance(features, Tensor):
        t = features.detach()
        if t.dim() == 4:
            t = t.flatten(2).transpose(1, 2)
        X = t.reshape(-1, t.shape[-1]).to("cpu", torch.float64).numpy()
    else:
        X = np.asarray(features, dtype=np.float64)
        if X.ndim == 3:
            X = X.reshape(-1, X.shape[-1])
    if X.ndim != 2 or X.shape[1] != D:
        raise ValueError(f"features must hold descriptors of dimension {D} ([M, {D}], [B, N, {D}] "
                         f"or [B, {D}, H, W]), got shape {tuple(X.shape)}")
    if max_samples is not None and X.shape[0] > max_samples:
        rng = np.random.default_rng(random_state)
        X = X[rng.choice(X.shape[0], size=max_samples, replace=False)]
    return X


def _signed_power(z: Tensor, alpha: float) -> Tensor:
    """sign(z)·|z|^α, with a zero (not NaN) gradient where z = 0."""
    tiny = torch.finfo(z.dtype).tiny
    return torch.sign(z) * z.abs().clamp_min(tiny).pow(alpha)


def _set_tensor(t: Tensor, value) -> None:
    with torch.no_grad():
        t.copy_(torch.as_tensor(value, dtype=t.dtype, device=t.device))


class FisherVectorPool(nn.Module):
    r"""Improved Fisher-vector encoding of local features under a diagonal GMM (FV-CNN).

    Formulas and sign conventions are VLFeat's (``vl_fisher``). With posteriors
    q_ik = p(k | x_i) under the GMM (π_k, μ_k, σ_k²) and N descriptors:

    .. math::

        u_k &= \frac{1}{N\sqrt{\pi_k}} \sum_i q_{ik} \frac{x_i - \mu_k}{\sigma_k} \\
        v_k &= \frac{1}{N\sqrt{2\pi_k}} \sum_i q_{ik}
               \Big[\Big(\frac{x_i - \mu_k}{\sigma_k}\Big)^2 - 1\Big] \\
        w_k &= \frac{1}{N\sqrt{\pi_k}} \sum_i (q_{ik} - \pi_k)
               \quad\text{(only with include\_weights; Sánchez et al. 2013)}

    (element-wise over the D dimensions). Layout: ``[w_1..w_K,] u_1, …, u_K, v_1, …, v_K``
    — the weight block (K entries, optional) first, then all mean blocks (K·D, component
    major), then all variance blocks (K·D): 2KD (+K) entries. VLFeat has no weight block;
    its layout for u and v is the same. ``improved=True`` applies the power
    normalisation sign(z)|z|^power_alpha and then L2 normalisation to the whole vector
    (VLFeat's ``Improved`` = SquareRoot + Normalized). Unlike VLFeat no posterior is
    truncated (VLFeat skips q_ik < 1e-4).

    scikit-image's ``skimage.feature.fisher_vector`` returns ``[w, u, −v]``: the same
    blocks and layout with include_weights=True, but the variance block negated (its
    derivative is taken with respect to σ² with the opposite sign).

    Parameters
    ----------
    feature_dim : int
        Descriptor dimension D.
    num_components : int
        GMM components K.
    improved : bool, default=True
        Power + L2 normalisation.
    include_weights : bool, default=False
        Prepend the K mixture-weight derivatives.
    learnable : bool, default=False
        GMM parameters are Parameters (trained by backprop through the encoding) rather
        than buffers.
    power_alpha : float, default=0.5
        Exponent of the power normalisation (0.5: signed square root).
    eps : float, default=1e-12
        Lower bound of the norm in the L2 normalisation.

    Attributes
    ----------
    means : [K, D];  log_sigmas : [K, D] (σ_k = exp);  weight_logits : [K] (π = softmax).
    Parameters when learnable, buffers otherwise; set them with :meth:`fit_gmm_`.
    """

    def __init__(
        self,
        feature_dim: int,
        num_components: int,
        improved: bool = True,
        include_weights: bool = False,
        learnable: bool = False,
        *,
        power_alpha: float = 0.5,
        eps: float = 1e-12,
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, v in (("feature_dim", feature_dim), ("num_components", num_components)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not 0 < power_alpha <= 1:
            raise ValueError(f"power_alpha must be in (0, 1], got {power_alpha!r}")
        self.feature_dim = feature_dim
        self.num_components = num_components
        self.improved = improved
        self.include_weights = include_weights
        self.learnable = learnable
        self.power_alpha = float(power_alpha)
        self.eps = float(eps)
        fk = dict(device=device, dtype=dtype)
        g = torch.Generator().manual_seed(0)
        init = {
            "means": torch.randn(num_components, feature_dim, generator=g).to(**fk),
            "log_sigmas": torch.zeros(num_components, feature_dim, **fk),
            "weight_logits": torch.zeros(num_components, **fk),
        }
        for name, t in init.items():
            if learnable:
                setattr(self, name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)
        self.gmm_ = None

    def extra_repr(self) -> str:
        return (f"feature_dim={self.feature_dim}, num_components={self.num_components}, "
                f"improved={self.improved}, include_weights={self.include_weights}, learnable={self.learnable}")

    @property
    def output_dim(self) -> int:
        K, D = self.num_components, self.feature_dim
        return 2 * K * D + (K if self.include_weights else 0)

    def weights(self) -> Tensor:
        return torch.softmax(self.weight_logits, 0)

    def sigmas(self) -> Tensor:
        return self.log_sigmas.exp()

    @torch.no_grad()
    def fit_gmm_(self, features, *, max_samples: Optional[int] = None, random_state=0,
                 reg_covar: float = 1e-6, max_iter: int = 100, n_init: int = 1, **kwargs) -> "FisherVectorPool":
        """Fit the diagonal GMM to descriptors with gmmfast's EM and store its parameters.

        ``features``: [M, D], [B, N, D] or [B, D, H, W] (tensor or array). ``max_samples``
        fits on a random subsample; other keyword arguments go to
        :class:`gmmfast.GaussianMixture` (covariance_type='diag'). The fitted estimator
        is kept as ``gmm_``. Returns self.
        """
        from gmmfast import GaussianMixture

        X = _descriptor_matrix(features, self.feature_dim, max_samples, random_state)
        if X.shape[0] < self.num_components:
            raise ValueError(f"fit_gmm_ needs at least num_components={self.num_components} descriptors, "
                             f"got {X.shape[0]}")
        gm = GaussianMixture(n_components=self.num_components, covariance_type="diag", reg_covar=reg_covar,
                             max_iter=max_iter, n_init=n_init, random_state=random_state, **kwargs).fit(X)
        self.set_gmm_(gm.weights_, gm.means_, gm.covariances_)
        self.gmm_ = gm
        return self

    @torch.no_grad()
    def set_gmm_(self, weights, means, variances) -> "FisherVectorPool":
        """Set π [K], μ [K, D] and the diagonal variances σ² [K, D] directly."""
        K, D = self.num_components, self.feature_dim
        w = np.asarray(weights, np.float64)
        mu = np.asarray(means, np.float64)
        var = np.asarray(variances, np.float64)
        if w.shape != (K,) or mu.shape != (K, D) or var.shape != (K, D):
            raise ValueError(f"expected weights ({K},), means ({K}, {D}), variances ({K}, {D}); got "
                             f"{w.shape}, {mu.shape}, {var.shape}")
        if np.any(w <= 0) or np.any(var <= 0):
            raise ValueError("weights and variances must be positive")
        _set_tensor(self.weight_logits, np.log(w / w.sum()))
        _set_tensor(self.means, mu)
        _set_tensor(self.log_sigmas, 0.5 * np.log(var))
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Fisher vectors: [B, output_dim] (or [output_dim] for a single [N, D] set)."""
        X, single = _as_sets(x, self.feature_dim)
        B, N, D = X.shape
        K = self.num_components
        if N == 0:
            raise ValueError("each set must hold at least one descriptor")
        dt = X.dtype
        mu = self.means.to(dt)
        log_sigma = self.log_sigmas.to(dt)
        lw = torch.log_softmax(self.weight_logits.to(dt), 0)
        pi = lw.exp()
        flat = X.reshape(B * N, D)
        q = gt.log_prob(flat, lw, mu, torch.exp(-log_sigma), "diag", "log_resp").exp().view(B, N, K)
        shift = mu.detach().mean(0)  # exact shift: keeps the expanded moments accurate
        xc = X - shift
        mc = mu - shift
        qT = q.transpose(1, 2)  # [B, K, N]
        s0 = q.sum(1)  # [B, K]
        s1 = torch.bmm(qT, xc)  # [B, K, D]
        s2 = torch.bmm(qT, xc * xc)
        inv_sigma = torch.exp(-log_sigma)
        first = s1 - s0.unsqueeze(-1) * mc  # Σ q (x − μ)
        second = s2 - 2.0 * mc * s1 + s0.unsqueeze(-1) * mc * mc  # Σ q (x − μ)²
        sqrt_pi = pi.sqrt().unsqueeze(-1)
        u = first * inv_sigma / (N * sqrt_pi)
        v = (second * inv_sigma * inv_sigma - s0.unsqueeze(-1)) / (N * math.sqrt(2.0) * sqrt_pi)
        parts = [u.reshape(B, K * D), v.reshape(B, K * D)]
        if self.include_weights:
            parts.insert(0, (s0 / N - pi) / pi.sqrt())
        fv = torch.cat(parts, dim=1)
        if self.improved:
            fv = F.normalize(_signed_power(fv, self.power_alpha), dim=1, eps=self.eps)
        return fv[0] if single else fv


class NetVLAD(nn.Module):
    r"""NetVLAD pooling (Arandjelović et al., CVPR 2016) as an isotropic-GMM encoding.

    Soft assignment of descriptor x_i to cluster k is the posterior of an isotropic
    Gaussian mixture with a shared precision 2α,

    .. math:: a_{ik} = \mathrm{softmax}_k\big(\log\pi_k - \alpha\,\lVert x_i - m_k\rVert^2\big),

    which is exactly NetVLAD's softmax(w_kᵀx_i + b_k) with w_k = 2α m_k,
    b_k = log π_k − α‖m_k‖² (the −α‖x_i‖² term cancels in the softmax); computed by
    ``gmmfast.torch.log_prob(..., 'spherical', 'log_resp')``. The aggregation is the
    first-order residual V_k = Σ_i a_ik (x_i − c_k) (the Fisher vector's u_k with
    σ_k = 1 and without its 1/(N√π_k) scale), followed by intra-normalisation
    (L2 of each V_k) and L2 normalisation of the flattened K·D vector.

    Parameters
    ----------
    feature_dim : int
    num_clusters : int
    alpha : float, default=1.0
        Initial assignment sharpness α (> 0).
    decoupled : bool, default=True
        As in the paper, the assignment parameters (m_k, log π_k, α) are learned
        separately from the residual centres c_k. False: m_k = c_k, uniform π and a
        fixed α (the plain isotropic-GMM VLAD).
    normalize_input : bool, default=False
        L2-normalise each descriptor first (common in NetVLAD implementations).
    intra_normalization : bool, default=True
    eps : float, default=1e-12

    Attributes: ``centroids`` [K, D]; with decoupled, ``assign_means`` [K, D],
    ``prior_logits`` [K] and ``log_alpha`` [] are Parameters too (otherwise
    ``prior_logits`` and ``log_alpha`` are buffers).
    """

    def __init__(
        self,
        feature_dim: int,
        num_clusters: int,
        alpha: float = 1.0,
        decoupled: bool = True,
        *,
        normalize_input: bool = False,
        intra_normalization: bool = True,
        eps: float = 1e-12,
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, v in (("feature_dim", feature_dim), ("num_clusters", num_clusters)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha!r}")
        self.feature_dim = feature_dim
        self.num_clusters = num_clusters
        self.decoupled = decoupled
        self.normalize_input = normalize_input
        self.intra_normalization = intra_normalization
        self.eps = float(eps)
        fk = dict(device=device, dtype=dtype)
        g = torch.Generator().manual_seed(0)
        c = torch.randn(num_clusters, feature_dim, generator=g).to(**fk)
        self.centroids = nn.Parameter(c.clone())
        prior = torch.zeros(num_clusters, **fk)
        log_alpha = torch.full((), math.log(alpha), **fk)
        if decoupled:
            self.assign_means = nn.Parameter(c.clone())
            self.prior_logits = nn.Parameter(prior)
            self.log_alpha = nn.Parameter(log_alpha)
        else:
            self.register_buffer("prior_logits", prior)
            self.register_buffer("log_alpha", log_alpha)
        self.gmm_ = None  # the fitted gmmfast.GaussianMixture, set by fit_gmm_

    def extra_repr(self) -> str:
        return (f"feature_dim={self.feature_dim}, num_clusters={self.num_clusters}, "
                f"decoupled={self.decoupled}, normalize_input={self.normalize_input}")

    @property
    def output_dim(self) -> int:
        return self.num_clusters * self.feature_dim

    def _assign_means(self) -> Tensor:
        return self.assign_means if self.decoupled else self.centroids

    def soft_assign(self, X: Tensor) -> Tensor:
        """a_ik for rows X [M, D] → [M, K]."""
        K = self.num_clusters
        dt = X.dtype
        lw = torch.log_softmax(self.prior_logits.to(dt), 0)
        # spherical precision Cholesky p: log N ∝ −½ p² ‖x − m‖², so p = sqrt(2α)
        p = torch.exp(0.5 * (self.log_alpha.to(dt) + math.log(2.0))).expand(K)
        return gt.log_prob(X, lw, self._assign_means().to(dt), p, "spherical", "log_resp").exp()

    @torch.no_grad()
    def fit_gmm_(self, features, *, max_samples: Optional[int] = None, random_state=0,
                 max_iter: int = 100, **kwargs) -> "NetVLAD":
        """Initialise from an isotropic GMM fitted by gmmfast's EM ('spherical'):
        centres (and assignment means) = the GMM means, π = its weights (decoupled
        only), α = 1 / (2 · mean variance). Returns self."""
        from gmmfast import GaussianMixture

        X = _descriptor_matrix(features, self.feature_dim, max_samples, random_state)
        if self.normalize_input:
            X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), self.eps)
        if X.shape[0] < self.num_clusters:
            raise ValueError(f"fit_gmm_ needs at least num_clusters={self.num_clusters} descriptors, got {X.shape[0]}")
        gm = GaussianMixture(n_components=self.num_clusters, covariance_type="spherical",
                             max_iter=max_iter, random_state=random_state, **kwargs).fit(X)
        _set_tensor(self.centroids, gm.means_)
        if self.decoupled:
            _set_tensor(self.assign_means, gm.means_)
            _set_tensor(self.prior_logits, np.log(gm.weights_))
        var = float(np.dot(gm.weights_, gm.covariances_))
        _set_tensor(self.log_alpha, math.log(1.0 / (2.0 * var)))
        self.gmm_ = gm
        return self

    def forward(self, x: Tensor) -> Tensor:
        """VLAD vectors [B, K·D] (or [K·D] for a single [N, D] set)."""
        X, single = _as_sets(x, self.feature_dim)
        B, N, D = X.shape
        K = self.num_clusters
        if N == 0:
            raise ValueError("each set must hold at least one descriptor")
        if self.normalize_input:
            X = F.normalize(X, dim=2, eps=self.eps)
        a = self.soft_assign(X.reshape(B * N, D)).view(B, N, K)
        c = self.centroids.to(X.dtype)
        aT = a.transpose(1, 2)
        V = torch.bmm(aT, X) - a.sum(1).unsqueeze(-1) * c  # Σ_i a_ik (x_i − c_k), [B, K, D]
        if self.intra_normalization:
            V = F.normalize(V, dim=2, eps=self.eps)
        out = F.normalize(V.reshape(B, K * D), dim=1, eps=self.eps)
        return out[0] if single else out
