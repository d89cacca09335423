"""Data-driven initialisation and dead-component revival for :class:`~gmmfast.nn.MDNHead`.

Bishop (1994, §5 of "Mixture density networks") starts a mixture density network at the
unconditional density of its targets: fit a Gaussian mixture to the training targets and
set the output layer's biases so that every input predicts that mixture, with small
input-dependent weights. Training then starts with every component on a mode of the data
instead of K copies of one broad Gaussian at the origin, which is where gradient descent
merges components or lets them die (their weight goes to 0 and no gradient brings them
back).

:func:`init_head` does that with :class:`gmmfast.GaussianMixture`, optionally on the
residuals of a least-squares fit of the targets on the head's input features (for
targets that follow their input, such as the next step of a walk: the unconditional
density of a walk's positions says nothing about its steps). :func:`revive_dead` is the
training-time counterpart of EM's ``recovery="reseed"``: a component whose mean
responsibility has fallen below a floor is restarted at the targets the mixture explains
worst.

Private: the public faces are ``MDNHead.init_from_targets``,
``MDNHead.revive_dead_components`` and their ``MDNRNN`` versions.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

# the covariance type of gmmfast.GaussianMixture that fits each head form's components
_GMM_COVARIANCE = {"diag": "diag", "isotropic": "spherical", "full": "full", "correlated2d": "full"}


# ----------------------------------------------------------------------------- inputs


def _as_tensor(name: str, v) -> Tensor:
    if isinstance(v, Tensor):
        t = v.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(v, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a tensor or an array of numbers, got {type(v).__name__}") from exc
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64, torch.int16, torch.int8, torch.uint8)):
        raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    return t.to(device="cpu", dtype=torch.float64)


def collect_rows(
    y, width: int, mask=None, h=None, h_width: Optional[int] = None, max_samples: int = 100_000,
    random_state: int = 0, min_rows: int = 1,
) -> Tuple[Tensor, Optional[Tensor]]:
    """The kept rows of y (..., width) (and of h (..., h_width)) as float64 (n, width) on the
    CPU, at most ``max_samples`` of them (a seeded random subset); errors name the
    argument."""
    yt = _as_tensor("y", y)
    if yt.dim() < 1 or yt.shape[-1] != width:
        raise ValueError(f"y must have shape (..., {width}) (out_features = {width}), got {tuple(yt.shape)}")
    lead = tuple(yt.shape[:-1])
    ht = None
    if h is not None:
        ht = _as_tensor("h", h)
        if tuple(ht.shape) != lead + (h_width,):
            raise ValueError(f"h must have shape {lead + (h_width,)} (y's leading dimensions, then {h_width}), "
                             f"got {tuple(ht.shape)}")
    keep = None
    if mask is not None:
        m = mask.detach().cpu() if isinstance(mask, Tensor) else torch.as_tensor(np.asarray(mask))
        if tuple(m.shape) != lead:
            raise ValueError(f"mask must have y's leading shape {lead}, got {tuple(m.shape)}")
        keep = (m != 0).reshape(-1)
    rows = yt.reshape(-1, width)
    hrows = None if ht is None else ht.reshape(-1, h_width)
    if keep is not None:
        rows = rows[keep]
        hrows = None if hrows is None else hrows[keep]
    if not torch.isfinite(rows).all():
        raise ValueError("y contains NaN or infinity (in the rows that mask keeps): the initialisation needs finite targets")
    if hrows is not None and not torch.isfinite(hrows).all():
        raise ValueError("h contains NaN or infinity (in the rows that mask keeps)")
    if rows.shape[0] < min_rows:
        raise ValueError(f"y has {rows.shape[0]} kept rows; the initialisation needs at least {min_rows}")
    if not isinstance(max_samples, int) or max_samples < min_rows:
        raise ValueError(f"max_samples must be an int >= {min_rows}, got {max_samples!r}")
    if rows.shape[0] > max_samples:
        g = torch.Generator().manual_seed(int(random_state))
        idx = torch.randperm(rows.shape[0], generator=g)[:max_samples]
        rows = rows[idx]
        hrows = None if hrows is None else hrows[idx]
    return rows, hrows


# ----------------------------------------------------------------------------- σ


def inverse_sigma(head, sigma: Tensor) -> Tensor:
    """The raw output that gives σ under ``head``'s activation and floor (σ below the floor
    is raised to 1.01 × the floor: the head cannot represent less)."""
    s = (sigma - head.min_sigma).clamp_min(0.01 * head.min_sigma)
    if head.sigma_activation == "softplus":
        return s + torch.log(-torch.expm1(-s))  # log(exp(s) - 1), stable for small and large s
    if head.sigma_activation == "exp":
        return torch.log(s)
    return torch.where(s >= 1.0, s - 1.0, torch.log(s))  # elu(r) + 1 = s


# ----------------------------------------------------------------------------- the fit


def _fit_mixture(rows: Tensor, K: int, covariance: str, random_state: int, n_init: int):
    """gmmfast.GaussianMixture(K) fitted to rows (n, D): (weights (K,), means (K, D),
    covariances in the fitted type's shape), as float64 tensors."""
    from ..mixture import GaussianMixture as EMGaussianMixture

    X = rows.numpy()
    n, D = X.shape
    var = X.var(axis=0)
    scale = float(var.mean()) if np.isfinite(var.mean()) and var.mean() > 0 else 1.0
    K_fit = min(K, n)
    gm = EMGaussianMixture(
        n_components=K_fit, covariance_type=covariance, reg_covar=1e-6 * scale, n_init=n_init,
        tol=1e-6, max_iter=500, random_state=random_state, recovery="reseed",
    )
    gm.fit(X)
    w = torch.as_tensor(gm.weights_, dtype=torch.float64)
    mu = torch.as_tensor(gm.means_, dtype=torch.float64)
    cov = torch.as_tensor(gm.covariances_, dtype=torch.float64)
    if K_fit < K:  # fewer rows than components: the extra components copy the first ones
        reps = [i % K_fit for i in range(K)]
        w = w[reps] / w[reps].sum()
        mu, cov = mu[reps], cov[reps]
    return w, mu, cov, gm


def _mode_offsets(res: Tensor, K: int, covariance: str, per_dim: bool, random_state: int, n_init: int) -> Tensor:
    """Each row's expected component mean under a mixture fitted to the residuals res
    (n, D): the mode it belongs to, to be removed before the trend is fitted again."""
    cols = [res[:, d : d + 1] for d in range(res.shape[1])] if per_dim else [res]
    out = []
    for c in cols:
        *_, gm = _fit_mixture(c, K, "diag" if per_dim else covariance, random_state, n_init)
        out.append(torch.as_tensor(gm.predict_proba(c.numpy()) @ gm.means_, dtype=torch.float64))
    return torch.cat(out, 1)


def _component_biases(head, w: Tensor, mu: Tensor, cov: Tensor) -> Dict[str, Tensor]:
    """The head's raw outputs (per output block) that give the mixture (w, mu, cov)."""
    D = head.out_features
    b = {"logits": torch.log(w.clamp_min(1e-12)), "means": mu.reshape(-1)}
    if head.covariance == "isotropic":
        b["sigma"] = inverse_sigma(head, cov.sqrt())
    elif head.covariance == "diag":
        b["sigma"] = inverse_sigma(head, cov.sqrt()).reshape(-1)
    elif head.covariance == "full":
        L = torch.linalg.cholesky(cov)  # (K, D, D)
        b["sigma"] = inverse_sigma(head, torch.diagonal(L, dim1=-2, dim2=-1)).reshape(-1)
        if D > 1:
            rows, cols = torch.tril_indices(D, D, offset=-1)
            b["offdiag"] = L[:, rows, cols].reshape(-1)
    else:  # correlated2d
        s = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()  # (K, 2)
        rho = cov[:, 0, 1] / (s[:, 0] * s[:, 1])
        lim = head.max_correlation * (1 - 1e-6)
        b["sigma"] = inverse_sigma(head, s).reshape(-1)
        b["rho"] = torch.atanh(rho.clamp(-lim, lim) / head.max_correlation)
    return b


def _blocks(head) -> Dict[str, slice]:
    out, start = {}, 0
    for name, n in head._sizes:
        out[name] = slice(start, start + n)
        start += n
    return out


@torch.no_grad()
def init_head(
    head, y, h=None, mask=None, weight_scale: float = 0.1, max_samples: int = 100_000,
    random_state: int = 0, n_init: int = 1, refine: int = 3,
) -> dict:
    """Set ``head``'s output layer so that every input predicts the mixture fitted to y.

    h: the head's input features for the same rows (optional). Without h the mixture is
    fitted to y and the input-dependent weights of every output are scaled by
    ``weight_scale``. With h the means first follow the least-squares linear prediction of
    y from h (shared by every component), refitted ``refine`` times with each row's mode
    taken out, and the mixture is fitted to the residuals.

    Returns a summary: the fitted weights, means and σ (as lists), and whether h was used.
    """
    if not (isinstance(weight_scale, (int, float)) and math.isfinite(weight_scale) and weight_scale >= 0):
        raise ValueError(f"weight_scale must be a finite number >= 0, got {weight_scale!r}")
    if not isinstance(n_init, int) or n_init < 1:
        raise ValueError(f"n_init must be a positive int, got {n_init!r}")
    if not isinstance(refine, int) or refine < 0:
        raise ValueError(f"refine must be an int >= 0, got {refine!r}")
    K, D, F_in = head.num_components, head.out_features, head.in_features
    rows, hrows = collect_rows(y, D, mask, h, F_in, max_samples, random_state, min_rows=2)
    weight, bias = head.proj.weight, head.proj.bias
    blocks = _blocks(head)
    # the linear trend of y on h (least squares with an intercept), removed before the fit
    A = None
    target = rows
    if hrows is not None:
        hc = hrows - hrows.mean(0)
        # ridge: 1e-3 of the features' mean variance (features are often nearly collinear)
        ridge = 1e-3 * float((hc * hc).sum(0).mean()) + 1e-300
        gram = hc.T @ hc + ridge * torch.eye(F_in, dtype=hc.dtype)

        def trend(t: Tensor) -> Tensor:  # (D, F_in): least squares of t on h, with an intercept
            return torch.linalg.solve(gram, hc.T @ (t - t.mean(0))).T

        A = trend(rows)
        # the modes are noise to least squares: fit the residuals' mixture, take each row's
        # mode out and fit the trend again (EM for a mixture of regressions sharing a slope)
        for _ in range(refine):
            offsets = _mode_offsets(rows - hrows @ A.T, K, _GMM_COVARIANCE.get(head.covariance, "diag"),
                                    head.mixture == "per_dim", random_state, n_init)
            A = trend(rows - offsets)
        target = rows - hrows @ A.T  # residuals, still carrying the intercept
    new_w = weight.detach().to(torch.float64).cpu().clone()
    new_b = bias.detach().to(torch.float64).cpu().clone()
    if head.mixture == "per_dim":
        parts = [_fit_mixture(target[:, d : d + 1], K, "diag", random_state, n_init)[:3] for d in range(D)]
        w = torch.stack([p[0] for p in parts])  # (D, K)
        mu = torch.stack([p[1][:, 0] for p in parts])
        sd = torch.stack([p[2][:, 0].sqrt() for p in parts])
        biases = {"logits": torch.log(w.clamp_min(1e-12)).reshape(-1), "means": mu.reshape(-1),
                  "sigma": inverse_sigma(head, sd).reshape(-1)}
        summary = {"weights": w.tolist(), "means": mu.tolist(), "sigma": sd.tolist(), "covariance_type": "diag"}
    else:
        w, mu, cov, _ = _fit_mixture(target, K, _GMM_COVARIANCE[head.covariance], random_state, n_init)
        biases = _component_biases(head, w, mu, cov)
        sig = cov.sqrt() if head.covariance == "isotropic" else torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
        summary = {"weights": w.tolist(), "means": mu.tolist(), "sigma": sig.tolist(), "covariances": cov.tolist(),
                   "covariance_type": _GMM_COVARIANCE[head.covariance]}
    # the unit of the means' input-dependent weights: the components' typical σ per feature
    # (weight-averaged), so that the perturbation costs about weight_scale²/2 nats
    sig_t = torch.as_tensor(summary["sigma"], dtype=torch.float64)
    w_t = torch.as_tensor(summary["weights"], dtype=torch.float64)
    if head.mixture == "per_dim":
        spread = (w_t * sig_t).sum(-1)
    elif head.covariance == "isotropic":
        spread = (w_t * sig_t).sum().expand(D)
    else:
        spread = (w_t.unsqueeze(-1) * sig_t).sum(0)
    spread = spread.clamp_min(head.min_sigma)
    h_mean = None if hrows is None else hrows.mean(0)
    for name, sl in blocks.items():
        if name.startswith("extra:"):
            continue  # the extra heads keep their initialisation
        P = new_w[sl]  # the input-dependent perturbation, scaled below
        if name == "means":
            unit = spread.repeat(K) if head.mixture == "joint" else spread.repeat_interleave(K)
            P = P * (weight_scale * unit).unsqueeze(1)
        else:
            P = P * weight_scale
        new_b[sl] = biases[name]
        new_w[sl] = P
        if hrows is not None:
            new_b[sl] -= P @ h_mean  # at the features' mean the perturbation is 0
            if name == "means":  # every component's mean follows the linear trend
                new_w[sl] += A.repeat(K, 1) if head.mixture == "joint" else A.repeat_interleave(K, 0)
    # learn the means in units of σ: output_scale carries the unit, proj the rest
    scale = head.output_scale.detach().to(torch.float64).cpu().clone()
    sl = blocks["means"]
    scale[sl] = spread.repeat(K) if head.mixture == "joint" else spread.repeat_interleave(K)
    for name, sl in blocks.items():
        if not name.startswith("extra:"):
            if name != "means":
                scale[sl] = 1.0
            new_w[sl] /= scale[sl].unsqueeze(1)
            new_b[sl] /= scale[sl]
    weight.copy_(new_w.to(weight))
    bias.copy_(new_b.to(bias))
    head.output_scale.copy_(scale.to(head.output_scale))
    summary["linear_trend"] = hrows is not None
    summary["rows"] = int(rows.shape[0])
    return summary


# ----------------------------------------------------------------------------- revival


def _output_index(head, block: str, k: int, d: Optional[int] = None) -> List[int]:
    """Rows of head.proj for component k's outputs in ``block`` (all its features, or
    feature d)."""
    sl = _blocks(head)[block]
    K = head.num_components
    if head.mixture == "per_dim":  # (D, K) blocks, d-major
        return [sl.start + d * K + k]
    n = sl.stop - sl.start
    per = n // K  # logits 1, means D, sigma 1 / D / 2, rho 1, offdiag D(D-1)/2
    return list(range(sl.start + k * per, sl.start + (k + 1) * per))


@torch.no_grad()
def revive_dead(head, h, y, mask=None, min_weight: float = 1e-3, optimizer=None) -> List:
    """Restart the components whose mean responsibility over (h, y) is below min_weight.

    Each dead component takes over from the component that explains best the target the
    whole mixture explains worst (among the rows not already used): it copies that
    parent's input-dependent weights, its mean is moved onto that target (at that row's
    features), and parent and child share the parent's mixture weight (both logits drop
    by log 2), so the mixture elsewhere is unchanged. With ``optimizer`` (e.g. Adam), its
    per-parameter state (moments) for the rewritten outputs is reset to zero.

    Returns the revived components: indices k (``mixture="joint"``) or (d, k) pairs
    (``"per_dim"``).
    """
    if not (isinstance(min_weight, (int, float)) and 0.0 < min_weight < 1.0):
        raise ValueError(f"min_weight must lie in (0, 1), got {min_weight!r}")
    K, D = head.num_components, head.out_features
    p = next(head.parameters())
    if not isinstance(h, Tensor):
        raise TypeError(f"h must be a tensor, got {type(h).__name__}")
    if h.dim() < 1 or h.shape[-1] != head.in_features:
        raise ValueError(f"h must have shape (..., {head.in_features}), got {tuple(h.shape)}")
    rows, hrows = collect_rows(y, D, mask, h, head.in_features, max_samples=2**62, min_rows=1)
    hrows = hrows.to(device=p.device, dtype=p.dtype)
    rows_t = rows.to(device=p.device, dtype=p.dtype)
    out = head(hrows)
    mix = out.mixture
    lw = torch.log_softmax(mix.logits, -1)
    if head.mixture == "per_dim":  # (n, D, K) per-feature 1-D components
        comp = torch.distributions.Normal(mix.means, mix.scale).log_prob(rows_t.unsqueeze(-1))
    else:
        comp = _component_log_prob(mix, rows_t)  # (n, K)
    joint = lw + comp
    logp = torch.logsumexp(joint, -1, keepdim=True)
    resp = torch.exp(joint - logp)
    mean_resp = resp.mean(0)  # (K,) or (D, K)
    if not torch.isfinite(mean_resp).all():
        raise ValueError("the mixture's responsibilities are not finite for these rows (NaN parameters or inputs?)")
    W, b = head.proj.weight, head.proj.bias
    changed: List[int] = []
    revived: List = []
    features = [None] if head.mixture == "joint" else list(range(D))
    for d in features:
        mr = mean_resp if d is None else mean_resp[d]
        dead = [int(k) for k in torch.nonzero(mr < min_weight).flatten()]
        if not dead or len(dead) == K:
            continue  # nothing to do, or nothing alive to split
        lp = logp[:, 0] if d is None else logp[:, d, 0]
        order = torch.argsort(lp)  # worst explained first
        for i, k in enumerate(dead):
            r = int(order[i % len(order)])
            parent = int(joint[r].argmax() if d is None else joint[r, d].argmax())
            if parent in dead:
                alive = [j for j in range(K) if j not in dead]
                parent = alive[int(mr[alive].argmax())]
            for block in [n for n, _ in head._sizes if not n.startswith("extra:")]:
                src, dst = _output_index(head, block, parent, d), _output_index(head, block, k, d)
                W[dst] = W[src]
                b[dst] = b[src]
                changed += dst
            # the child's mean sits on the target at that row's features
            idx_m = _output_index(head, "means", k, d)
            target = rows_t[r] if d is None else rows_t[r, d : d + 1]
            b[idx_m] += (target - out_means(mix, r, parent, d)) / head.output_scale[idx_m]
            for j in (parent, k):
                b[_output_index(head, "logits", j, d)] -= math.log(2.0)
            changed += _output_index(head, "logits", parent, d)
            revived.append(k if d is None else (d, k))
    if optimizer is not None and changed:
        rows_changed = torch.tensor(sorted(set(changed)), device=p.device)
        for param in (W, b):
            for v in optimizer.state.get(param, {}).values():
                if isinstance(v, Tensor) and v.shape == param.shape:
                    v[rows_changed] = 0
    return revived


def out_means(mix, r: int, k: int, d: Optional[int]) -> Tensor:
    """Component k's mean at row r ((D,) for joint mixtures, (1,) for feature d)."""
    if d is None:
        return mix.means[r, k]
    return mix.means[r, d, k : k + 1]


def _component_log_prob(mix, y: Tensor) -> Tensor:
    """log N_k(y) for every row and component of a joint mixture: (n, K)."""
    D = torch.distributions
    yk = y.unsqueeze(-2)  # (n, 1, D)
    if mix.covariance == "diag":
        return D.Normal(mix.means, mix.scale).log_prob(yk).sum(-1)
    if mix.covariance == "isotropic":
        return D.Normal(mix.means, mix.scale.unsqueeze(-1)).log_prob(yk).sum(-1)
    if mix.covariance == "full":
        return D.MultivariateNormal(mix.means, scale_tril=mix.scale).log_prob(yk)
    s1, s2, rho = mix.scale[..., 0], mix.scale[..., 1], mix.rho  # correlated2d
    zero = torch.zeros_like(s1)
    L = torch.stack([torch.stack([s1, zero], -1), torch.stack([rho * s2, s2 * torch.sqrt(1 - rho * rho)], -1)], -2)
    return D.MultivariateNormal(mix.means, scale_tril=L).log_prob(yk)
