"""Shared by the MDN sequence demos and bench/bench_mdn_training.py: the obvious baseline
for a sequence, a least-squares linear autoregression AR(p) with a Gaussian residual (full
covariance for several features), p chosen on validation data; and the demos' early-stopped
training of an MDN-RNN on one series.

Sequences are arrays (T, D). Step t >= 1 of a sequence is predicted from steps t-1 ...
t-p; before the start of a sequence its first value stands in (a constant history), so
every step t >= 1 is scored, the same steps an MDN-RNN fed y[:-1] predicts.
``score_from`` marks the first step scored (earlier ones are context only).
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import numpy as np
import torch

from gmmfast.nn import MDNRNN

Scored = Tuple[np.ndarray, int]  # (a sequence (T, D), the first step scored)


def _design(seqs: Sequence[Scored], p: int):
    X, Y = [], []
    for seq, start in seqs:
        seq = np.asarray(seq, dtype=np.float64)
        if seq.ndim == 1:
            seq = seq[:, None]
        pad = np.concatenate([np.repeat(seq[:1], p, 0), seq], 0)
        for t in range(max(1, start), len(seq)):
            X.append(np.concatenate([pad[t + p - lag].ravel() for lag in range(1, p + 1)] + [np.ones(1)]))
            Y.append(seq[t])
    return np.array(X), np.array(Y)


def fit_ar(seqs: Sequence[Scored], p: int, ridge: float = 1e-8):
    """Least squares (with an intercept) and the residuals' covariance."""
    X, Y = _design(seqs, p)
    A = np.linalg.solve(X.T @ X + ridge * np.eye(X.shape[1]), X.T @ Y)
    R = Y - X @ A
    cov = R.T @ R / len(R)
    return {"p": p, "coef": A, "cov": cov}


def ar_step_nll(model, seqs: Sequence[Scored]) -> np.ndarray:
    """-log p(y_t | past) of every scored step, nats."""
    X, Y = _design(seqs, model["p"])
    R = Y - X @ model["coef"]
    cov = model["cov"]
    D = cov.shape[0]
    L = np.linalg.cholesky(cov)
    z = np.linalg.solve(L, R.T)
    return 0.5 * (z * z).sum(0) + np.log(np.diag(L)).sum() + 0.5 * D * math.log(2 * math.pi)


def choose_ar(train: Sequence[Scored], valid: Sequence[Scored], test: Sequence[Scored], max_p: int = 10) -> dict:
    """AR(p) for p = 1 .. max_p fitted on train; the p with the lowest validation NLL is
    scored on test. Returns p, the validation NLL of every p, and the test NLL per step."""
    valid_nll: List[float] = []
    models = []
    for p in range(1, max_p + 1):
        m = fit_ar(train, p)
        models.append(m)
        valid_nll.append(float(ar_step_nll(m, valid).mean()))
    best = int(np.argmin(valid_nll))
    return {"p": best + 1, "valid_nll_by_p": valid_nll, "test_nll_per_step": float(ar_step_nll(models[best], test).mean()),
            "residual_sd": np.sqrt(np.diag(models[best]["cov"])).tolist()}


def fit_series(K: int, z: torch.Tensor, n_train: int, n_valid: int, steps: int, seed: int, hidden: int, lr: float,
               check_every: int):
    """An MDNRNN (LSTM, ``skip=True``, σ floor 0.01) trained on steps [0, n_train) of the
    series z (1, T, 1), started at a least-squares prediction from its features plus the
    mixture of the residuals (``init_from_targets(y, x=x)``); returns the parameters of the
    best validation NLL (steps [n_train, n_valid), checked every ``check_every``
    iterations) and that iteration."""
    torch.manual_seed(seed)
    model = MDNRNN(1, hidden, 1, K, cell="lstm", min_sigma=1e-2, skip=True)
    x, y = z[:, :-1], z[:, 1:]
    model.init_from_targets(y[:, : n_train - 1], x=x[:, : n_train - 1], random_state=seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    best = (math.inf, None, -1)
    for it in range(steps):
        model.train()
        opt.zero_grad()
        model.nll(x[:, : n_train - 1], y[:, : n_train - 1]).backward()
        opt.step()
        if it % check_every == check_every - 1 or it == steps - 1:
            valid = float(step_nll(model, z)[n_train - 1 : n_valid - 1].mean())
            if valid < best[0]:
                best = (valid, {k: v.clone() for k, v in model.state_dict().items()}, it + 1)
    model.load_state_dict(best[1])
    model.eval()
    return model, best[2]


@torch.no_grad()
def step_nll(model, z: torch.Tensor) -> torch.Tensor:
    """-log p(z_{t+1} | z_≤t) for every t (teacher forcing), shape (T-1,)."""
    model.eval()
    out, _ = model(z[:, :-1])
    return -out.mixture.log_prob(z[:, 1:])[0]
