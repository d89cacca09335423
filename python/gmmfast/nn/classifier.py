"""Gaussian-mixture classifier head and the L-GM loss (Wan et al., CVPR 2018).

Each class c owns ``components_per_class`` = M Gaussian components k = (c, m) in the
feature space, with mixing weights π_k, means μ_k and precisions Λ_k. With

    d_k(x) = ½ (x − μ_k)ᵀ Λ_k (x − μ_k)        (half the squared Mahalanobis distance)
    a_k    = log π_k + ½ log|Λ_k|

the component logits are ``a_k − d_k (1 + α [class(k) = y])`` and a class logit is the
log-sum-exp of its components' logits (M = 1: the logit itself). With α = 0 this is
log p(x, k) up to the constant D/2 log 2π, so softmax of the logits is the posterior
p(class | x) of the mixture. This is the L-GM paper's ``−d_k (1 + α[k = y]) + ½ log|Λ_k|
+ log p(k)``, i.e. its ``|Σ_k|^{-1/2}`` factor = ``+½ log|Λ_k|``.

The weighted log-densities ``log π_k + log N(x | k)`` come from gmmfast's fused
``gmmfast.torch.log_prob(..., output='weighted')`` op (analytic backward), so no
``[N, K, D]`` tensor is built; d_k is recovered as ``a_k − D/2 log 2π − weighted_k``.
The covariance choices map onto the op's covariance types:

==============  ===================  ==========================================
covariance      op covariance_type   learnable precision
==============  ===================  ==========================================
'identity'      'spherical'          none (Λ_k = I, so log|Λ_k| = 0)
'diag'          'diag'               log of the diagonal precision Cholesky, [K, D]
'shared_diag'   'diag'               one such vector [D], shared by all components
'shared_full'   'tied'               one upper-triangular precision Cholesky [D, D]
==============  ===================  ==========================================
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gmmfast.torch as gt

__all__ = ["GaussianMixtureClassifier", "LGMLoss"]

_COVARIANCES = ("identity", "diag", "shared_diag", "shared_full")
_OP_TYPE = {"identity": "spherical", "diag": "diag", "shared_diag": "diag", "shared_full": "tied"}
_LOG_2PI = math.log(2.0 * math.pi)


class GaussianMixtureClassifier(nn.Module):
    """Classifier head whose class scores are Gaussian-mixture log-posteriors (L-GM).

    Parameters
    ----------
    in_features : int
        Feature dimension D.
    num_classes : int
        Number of classes C.
    covariance : {'identity', 'diag', 'shared_diag', 'shared_full'}, default='identity'
        Precision structure (see the module docstring). The paper's experiments use
        'identity'.
    components_per_class : int, default=1
        M Gaussian components per class; a class score is the log-sum-exp of its
        components' scores.
    learn_prior : bool, default=False
        Learn the mixing weights π (a Parameter ``prior_logits``; log π =
        log_softmax(prior_logits)). Otherwise they are a buffer (uniform unless set by
        :meth:`fit_gda_`).
    init_std : float, default=1.0
        Standard deviation of the normal initialisation of the means.

    Shapes: features ``[N, D]`` (or ``[..., D]``); logits ``[N, C]``.

    Attributes
    ----------
    means : Parameter [C·M, D]
        Component means, component k = c·M + m.
    log_precision : Parameter [C·M, D] ('diag') or [D] ('shared_diag')
        log of the diagonal precision Cholesky factor (= −log σ).
    precision_factor : Parameter [D, D] ('shared_full')
        Upper triangle of the tied precision Cholesky factor U (Λ = U Uᵀ) with its
        diagonal stored as log; entries below the diagonal are unused.
    prior_logits : Parameter or buffer [C·M]
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        covariance: str = "identity",
        components_per_class: int = 1,
        *,
        learn_prior: bool = False,
        init_std: float = 1.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        for name, v in (("in_features", in_features), ("num_classes", num_classes),
                        ("components_per_class", components_per_class)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if covariance not in _COVARIANCES:
            raise ValueError(f"covariance must be one of {', '.join(map(repr, _COVARIANCES))}, got {covariance!r}")
        fk = dict(device=device, dtype=dtype)
        self.in_features = in_features
        self.num_classes = num_classes
        self.covariance = covariance
        self.components_per_class = components_per_class
        self.learn_prior = learn_prior
        self.init_std = float(init_std)
        K, D = num_classes * components_per_class, in_features
        self.means = nn.Parameter(torch.empty(K, D, **fk))
        if covariance == "diag":
            self.log_precision = nn.Parameter(torch.zeros(K, D, **fk))
        elif covariance == "shared_diag":
            self.log_precision = nn.Parameter(torch.zeros(D, **fk))
        elif covariance == "shared_full":
            self.precision_factor = nn.Parameter(torch.zeros(D, D, **fk))
        prior = torch.zeros(K, **fk)
        if learn_prior:
            self.prior_logits = nn.Parameter(prior)
        else:
            self.register_buffer("prior_logits", prior)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.normal_(self.means, std=self.init_std)
            for name in ("log_precision", "precision_factor"):
                if hasattr(self, name):
                    getattr(self, name).zero_()
            self.prior_logits.zero_()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, "
                f"covariance={self.covariance!r}, components_per_class={self.components_per_class}")

    # ------------------------------------------------------------------ parameters

    @property
    def num_components(self) -> int:
        return self.num_classes * self.components_per_class

    def log_weights(self) -> Tensor:
        """log π_k, [C·M] (normalised over all components)."""
        return torch.log_softmax(self.prior_logits, 0)

    def precisions_cholesky(self) -> tuple[Tensor, str, Tensor]:
        """(U in the op's layout, the op's covariance_type, ½ log|Λ_k| [C·M])."""
        K, D = self.num_components, self.in_features
        m = self.means
        if self.covariance == "identity":
            return m.new_ones(K), "spherical", m.new_zeros(K)
        if self.covariance == "diag":
            return self.log_precision.exp(), "diag", self.log_precision.sum(1)
        if self.covariance == "shared_diag":
            lp = self.log_precision
            return lp.exp().expand(K, D), "diag", lp.sum().expand(K)
        P = self.precision_factor
        diag = torch.diagonal(P)
        U = torch.triu(P, 1) + torch.diag_embed(diag.exp())
        return U, "tied", diag.sum().expand(K)

    def precisions(self) -> Tensor:
        """Λ_k as dense matrices [C·M, D, D] (for inspection; not used by forward)."""
        U, kind, _ = self.precisions_cholesky()
        K, D = self.num_components, self.in_features
        if kind == "spherical":
            return torch.eye(D, dtype=U.dtype, device=U.device).expand(K, D, D).clone()
        if kind == "diag":
            return torch.diag_embed(U * U)
        return (U @ U.T).expand(K, D, D).clone()

    def covariances(self) -> Tensor:
        """Σ_k = Λ_k⁻¹ [C·M, D, D] (for inspection)."""
        return torch.linalg.inv(self.precisions())

    # ------------------------------------------------------------------- scoring

    def _flat(self, feats: Tensor) -> Tensor:
        if not isinstance(feats, Tensor):
            raise TypeError(f"feats must be a torch.Tensor, got {type(feats).__name__}")
        if feats.dim() < 1 or feats.shape[-1] != self.in_features:
            raise ValueError(f"feats must have shape [..., {self.in_features}], got {tuple(feats.shape)}")
        return feats.reshape(-1, self.in_features)

    def _terms(self, X: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(a [K], d [N, K], ½ log|Λ| [K]) with a_k = log π_k + ½ log|Λ_k|,
        d_ik = ½ (x_i − μ_k)ᵀ Λ_k (x_i − μ_k); all in X's dtype."""
        lw = self.log_weights()
        U, kind, half_logdet = self.precisions_cholesky()
        weighted = gt.log_prob(X, lw, self.means, U, kind, "weighted")
        a = (lw + half_logdet).to(X.dtype)
        d = (a - 0.5 * self.in_features * _LOG_2PI) - weighted
        return a, d, half_logdet.to(X.dtype)

    def _class_lse(self, comp: Tensor) -> Tensor:
        M = self.components_per_class
        if M == 1:
            return comp
        return torch.logsumexp(comp.view(comp.shape[0], self.num_classes, M), dim=-1)

    def _check_labels(self, labels: Tensor, n: int) -> Tensor:
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
        labels = labels.reshape(-1)
        if labels.shape[0] != n:
            raise ValueError(f"labels must have {n} entries (one per feature row), got {labels.shape[0]}")
        if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
            raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
        return labels.long()

    def forward(self, feats: Tensor) -> Tensor:
        """Class logits [N, C] without margin: log p(x, c) + D/2 log 2π (softmax = posterior)."""
        X = self._flat(feats)
        a, d, _ = self._terms(X)
        return self._class_lse(a - d)

    def lgm_outputs(self, feats: Tensor, labels: Tensor, alpha: float = 0.0):
        """(margin logits [N, C], plain logits [N, C], own-class NLL [N]) in one pass.

        margin logits: the components of the true class have d_k multiplied by 1 + α;
        own-class NLL: −log p(x | y) − D/2 log 2π = d_y − ½ log|Λ_y| for M = 1, and
        −logsumexp_m(log π_{m|y} + ½ log|Λ_{y,m}| − d_{y,m}) for M > 1.
        """
        X = self._flat(feats)
        labels = self._check_labels(labels, X.shape[0])
        N, C, M = X.shape[0], self.num_classes, self.components_per_class
        a, d, half_logdet = self._terms(X)
        plain = a - d
        if alpha != 0.0:
            own = F.one_hot(labels, C).to(X.dtype)
            if M > 1:
                own = own.repeat_interleave(M, dim=1)
            margin = self._class_lse(plain - alpha * own * d)
        else:
            margin = None
        plain_cls = self._class_lse(plain)
        if margin is None:
            margin = plain_cls
        # within-class log weights log π_{m|c}
        lw_within = torch.log_softmax(self.prior_logits.view(C, M), dim=1).reshape(-1).to(X.dtype)
        lik = (lw_within + half_logdet) - d  # [N, K]
        lik_own = lik.view(N, C, M)[torch.arange(N, device=X.device), labels]  # [N, M]
        nll = -torch.logsumexp(lik_own, dim=-1)
        return margin, plain_cls, nll

    def log_density(self, feats: Tensor, per_class: bool = False) -> Tensor:
        """Log-density of the features under the fitted mixture (for out-of-distribution
        scoring: low values are far from every class).

        per_class=False: log p(x) = log Σ_k π_k N(x | k), [N];
        per_class=True: log p(x | c) [N, C].
        """
        X = self._flat(feats)
        lw = self.log_weights()
        U, kind, half_logdet = self.precisions_cholesky()
        if not per_class:
            return gt.log_prob(X, lw, self.means, U, kind, "sample")
        C, M = self.num_classes, self.components_per_class
        lw_within = torch.log_softmax(self.prior_logits.view(C, M), dim=1).reshape(-1)
        # log N(x | k) = weighted_k - log π_k, then the within-class mixture
        weighted = gt.log_prob(X, lw, self.means, U, kind, "weighted")
        return self._class_lse(weighted - lw.to(X.dtype) + lw_within.to(X.dtype))

    @torch.no_grad()
    def predict(self, feats: Tensor) -> Tensor:
        """Most probable class of each row, [N] int64."""
        return self.forward(feats).argmax(dim=1)

    # ------------------------------------------------------------ closed-form fit

    @torch.no_grad()
    def fit_gda_(
        self,
        feats,
        labels,
        *,
        reg_covar: float = 1e-6,
        set_prior: bool = True,
        random_state: Optional[int] = 0,
        **mixture_kwargs,
    ) -> "GaussianMixtureClassifier":
        """Set the parameters by Gaussian discriminant analysis on frozen features.

        Maximum-likelihood estimates (divide by the count, not count − 1), computed in
        float64 and centred per class:

        - means: the class means;
        - 'diag': per-class variances; 'shared_diag': the pooled within-class
          variances Σ_c Σ_{i∈c} (x_i − μ_c)² / N; 'shared_full': the pooled
          within-class covariance (scikit-learn's LinearDiscriminantAnalysis
          ``covariance_`` with empirical priors); 'identity': means only;
        - ``reg_covar`` is added to the variances / the covariance diagonal;
        - set_prior: π = the class frequencies (else the mixing weights are unchanged).

        With ``components_per_class`` = M > 1 each class is fitted by gmmfast's EM
        (:class:`gmmfast.GaussianMixture`, 'spherical' for 'identity', 'diag' for
        'diag'/'shared_diag', 'tied' for 'shared_full'; ``mixture_kwargs`` are passed
        on) and the shared precisions are the count-weighted averages of the classes'
        (co)variances. Returns self.
        """
        X = torch.as_tensor(feats).detach().reshape(-1, self.in_features).to("cpu", torch.float64).numpy()
        y = torch.as_tensor(labels).detach().reshape(-1).to("cpu").numpy()
        if y.shape[0] != X.shape[0]:
            raise ValueError(f"labels must have {X.shape[0]} entries (one per feature row), got {y.shape[0]}")
        if not np.all(np.isfinite(X)):
            raise ValueError("feats contain NaN or infinity")
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got values in [{y.min()}, {y.max()}]")
        C, M, D = self.num_classes, self.components_per_class, self.in_features
        counts = np.bincount(y, minlength=C)
        if np.any(counts < M):
            bad = int(np.argmax(counts < M))
            raise ValueError(f"class {bad} has {counts[bad]} samples; fit_gda_ needs at least "
                             f"components_per_class={M} per class")
        N = X.shape[0]
        means = np.empty((C * M, D))
        within = np.zeros((C, M))  # log π_{m|c}
        var = np.empty((C * M, D))  # per-component variances (diag)
        pooled = np.zeros((D, D)) if self.covariance == "shared_full" else np.zeros(D)
        for c in range(C):
            Xc = X[y == c]
            sl = slice(c * M, (c + 1) * M)
            if M == 1:
                mu = Xc.mean(0)
                R = Xc - mu
                means[sl] = mu
                var[sl] = np.mean(R * R, axis=0)
                pooled += (R.T @ R) if self.covariance == "shared_full" else np.sum(R * R, axis=0)
                continue
            op_type = {"identity": "spherical", "diag": "diag", "shared_diag": "diag",
                       "shared_full": "tied"}[self.covariance]
            from gmmfast import GaussianMixture

            gm = GaussianMixture(n_components=M, covariance_type=op_type, reg_covar=reg_covar,
                                 random_state=random_state, **mixture_kwargs).fit(Xc)
            means[sl] = gm.means_
            within[c] = np.log(gm.weights_)
            if op_type == "diag":
                var[sl] = gm.covariances_ - reg_covar
                pooled += Xc.shape[0] * np.sum(gm.weights_[:, None] * var[sl], axis=0)
            elif op_type == "tied":
                pooled += Xc.shape[0] * (gm.covariances_ - reg_covar * np.eye(D))
        dev, dt = self.means.device, self.means.dtype
        self.means.copy_(torch.as_tensor(means, dtype=dt, device=dev))
        if self.covariance == "diag":
            self.log_precision.copy_(torch.as_tensor(-0.5 * np.log(var + reg_covar), dtype=dt, device=dev))
        elif self.covariance == "shared_diag":
            self.log_precision.copy_(torch.as_tensor(-0.5 * np.log(pooled / N + reg_covar), dtype=dt, device=dev))
        elif self.covariance == "shared_full":
            cov = pooled / N + reg_covar * np.eye(D)
            try:
                L = np.linalg.cholesky(cov)
            except np.linalg.LinAlgError:
                raise ValueError("the pooled within-class covariance is not positive definite; "
                                 "increase reg_covar") from None
            # Λ = Σ⁻¹ = U Uᵀ with U = L⁻ᵀ upper triangular (scikit-learn's precisions_cholesky_)
            U = np.linalg.solve(L, np.eye(D)).T
            P = np.triu(U, 1) + np.diag(np.log(np.diag(U)))
            self.precision_factor.copy_(torch.as_tensor(P, dtype=dt, device=dev))
        if set_prior:
            logp = np.log(np.maximum(counts, 1e-300) / N)[:, None] + within
            self.prior_logits.copy_(torch.as_tensor(logp.reshape(-1), dtype=dt, device=dev))
        return self


class LGMLoss(nn.Module):
    """The L-GM loss: cross-entropy on the margin logits + λ · own-class likelihood term.

    ``loss = CE(margin_logits, y) + λ · mean_i (d_{y_i} − ½ log|Λ_{y_i}|)``

    (Wan et al., CVPR 2018: the likelihood regulariser is −log N(x | μ_y, Σ_y)
    without its constant, so the log-determinant appears both in the logits and here.
    With ``components_per_class`` > 1 it is −log of the class's mixture density.)

    Parameters
    ----------
    alpha : float, default=0.1
        Classification margin α ≥ 0 (the true class's distance is scaled by 1 + α).
    lam : float, default=0.1
        Weight λ ≥ 0 of the likelihood term.
    warmup_steps : int, default=0
        Linear warm-up: α and λ are scaled by min(1, t / warmup_steps) at training step t
        (t counts the calls in training mode, starting at 0; saved in the state_dict).
        In eval mode the full values are used and the counter does not advance.

    Call as ``loss_fn(head, feats, labels)`` with a :class:`GaussianMixtureClassifier`
    ``head``; ``return_logits=True`` also returns the plain (margin-free) logits for
    accuracy, computed in the same pass.
    """

    def __init__(self, alpha: float = 0.1, lam: float = 0.1, warmup_steps: int = 0):
        super().__init__()
        if not alpha >= 0:
            raise ValueError(f"alpha must be >= 0, got {alpha!r}")
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam!r}")
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative int, got {warmup_steps!r}")
        self.alpha = float(alpha)
        self.lam = float(lam)
        self.warmup_steps = warmup_steps
        self.step = 0  # a Python int (no device sync); saved via get_extra_state

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, lam={self.lam}, warmup_steps={self.warmup_steps}"

    def get_extra_state(self):
        return {"step": self.step}

    def set_extra_state(self, state):
        self.step = int(state["step"])

    def warmup_factor(self) -> float:
        if self.warmup_steps == 0 or not self.training:
            return 1.0
        return min(1.0, self.step / self.warmup_steps)

    def current_alpha(self) -> float:
        return self.alpha * self.warmup_factor()

    def current_lam(self) -> float:
        return self.lam * self.warmup_factor()

    def forward(self, head: GaussianMixtureClassifier, feats: Tensor, labels: Tensor,
                return_logits: bool = False):
        if not isinstance(head, GaussianMixtureClassifier):
            raise TypeError(f"head must be a GaussianMixtureClassifier, got {type(head).__name__}")
        alpha, lam = self.current_alpha(), self.current_lam()
        margin, plain, nll = head.lgm_outputs(feats, labels, alpha)
        labels = labels.reshape(-1).long()
        loss = F.cross_entropy(margin, labels)
        if lam != 0.0:
            loss = loss + lam * nll.mean()
        if self.training:
            self.step += 1
        return (loss, plain) if return_logits else loss
