"""Does MDN training find every mode? Seeds × learning rates, today's training vs the
training aids of gmmfast.nn (issue 21), in one run, on the same data and seeds.

Methods (every run: full-batch Adam, float32, one torch thread):

- ``default``   the layers as constructed (nn.Linear's initialisation): today's behaviour;
- ``revive``    default + ``revive_dead_components`` every 50 steps (revival alone);
- ``init``      ``init_from_targets`` before training (Bishop 1994: start at a
                gmmfast.GaussianMixture of the targets; means learnt in units of σ);
- ``skip``      MDNRNN(skip=True) (the input beside the recurrent features), default init;
- ``skip+init`` both, with ``init_from_targets(y, x=x)`` (the mixture of the residuals
                around the least-squares trend on the head's features).

Problems and goals (issue 21):

- ``const``: a constant bimodal target, y = ±0.1 + N(0, 0.01²) whatever the input
  (MLP 1→16 tanh→MDNHead K=2, 4096 training points, 600 steps). Gap = held-out NLL minus
  the true density's NLL on the same 4000 points. Goal: 10/10 seeds within 0.05 nats at
  lr 1e-3, 3e-3 and 1e-2.
- ``walk``: y[t+1] = y[t] ± 0.1 + N(0, 0.01²) (MDNRNN LSTM 32, K=2, 32 sequences of 100
  steps, 600 steps, the parameters of the best validation NLL (32 more walks, checked
  every 25 steps) kept). Gap to the true conditional NLL on 64 held-out sequences; split =
  on ≥ 90% of the held-out steps two components of weight ≥ 0.2 have means ≥ 0.1 apart.
  Also recorded: the gap after all 600 steps, on the held-out and on the training walks
  (the network overfits the positions its 32 training walks visit: the training gap
  falls below 0 while the held-out gap grows). Goal: 5/5 seeds split and within 0.2 nats.
  Baselines: a single Gaussian step and the least-squares AR(p) (p chosen on validation
  sequences).
- ``bishop``: Bishop's inverse problem x | t, t = x + 0.3 sin 2πx + U(-0.1, 0.1)
  (MLP 1→20 tanh→MDNHead K=3, 1000 points, 3000 steps: the demo's model). A branch at
  t ∈ {0.4, 0.5, 0.6} is found when a component of weight ≥ 0.1 has its mean within 0.05
  of it; recorded: the first step (checked every 10) from which all nine stay found to the
  end, and the held-out NLL (5000 points). Goal: every seed, in fewer steps than default.
- ``faithful``: Old Faithful eruption duration given waiting time (gmmfast.datasets;
  standardised on the training part; MLP 1→16 tanh→MDNHead K=2, 1000 steps; a random
  160/40/72 train/validation/test split per seed; the test NLL at the best validation
  NLL (checked every 20 steps), and after all 1000 steps: with 160 points every model
  overfits after a few hundred steps). Goal: held-out NLL no worse than default. K=1 (a
  single Gaussian) beside it.

    python bench/bench_mdn_training.py                    # ≈ 10 min on a quiet core (26 min under load)
    python bench/bench_mdn_training.py --problems walk --update   # re-run one problem into the JSON
    python bench/bench_mdn_training.py --quick            # a smoke test (seconds)
    python bench/bench_mdn_training.py --problems const,walk --json out.json

Writes bench/results/mdn-training.json by default: every run, the summaries and the verdict
on every goal.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import pathlib
import sys
import time
from typing import Tuple

import numpy as np
import torch
from torch import nn

import gmmfast
from gmmfast.datasets import load_old_faithful
from gmmfast.nn import MDNHead, MDNRNN

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
from _baselines import choose_ar  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import machine  # noqa: E402


def _t(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float32)


def _adam_loop(params, loss_fn, lr, steps, every=None, callback=None):
    opt = torch.optim.Adam(params, lr=lr)
    for it in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        if callback is not None and (it + 1) % every == 0:
            callback(it + 1, opt)
    return opt


def _bimodal_nll(d: torch.Tensor, sep: float = 0.1, sd: float = 0.01) -> torch.Tensor:
    """-log of ½N(sep, sd²) + ½N(-sep, sd²) at d (float64)."""
    d = d.double()
    lp = torch.stack([torch.distributions.Normal(m, sd).log_prob(d) for m in (sep, -sep)])
    return -(torch.logsumexp(lp, 0) + math.log(0.5))


# --------------------------------------------------------------------------------- const


def run_const(method: str, lr: float, seed: int, steps: int = 600, n: int = 4096) -> dict:
    rng = np.random.default_rng(seed)

    def data(m):
        x = rng.uniform(-1, 1, (m, 1))
        y = 0.1 * rng.choice([-1.0, 1.0], m) + 0.01 * rng.standard_normal(m)
        return _t(x), _t(y[:, None])

    x, y = data(n)
    xt, yt = data(4000)
    torch.manual_seed(seed)
    body, head = nn.Sequential(nn.Linear(1, 16), nn.Tanh()), MDNHead(16, 1, 2)
    if method == "init":
        head.init_from_targets(y)
    revived = []

    def revive(it, opt):
        revived.extend((it, k) for k in head.revive_dead_components(body(x).detach(), y, optimizer=opt))

    params = list(body.parameters()) + list(head.parameters())
    _adam_loop(params, lambda: head.nll(body(x), y), lr, steps, 50, revive if method == "revive" else None)
    with torch.no_grad():
        gap = float(head.nll(body(xt), yt)) - float(_bimodal_nll(yt[:, 0]).mean())
        w = head(body(xt)).mixture.mixture_weights.mean(0).tolist()
    return {"gap_nats": gap, "mean_weights": w, "revived": revived}


# --------------------------------------------------------------------------------- walk


def _walks(B, T, rng):
    steps = 0.1 * rng.choice([-1.0, 1.0], (B, T)) + 0.01 * rng.standard_normal((B, T))
    return np.concatenate([np.zeros((B, 1)), np.cumsum(steps, 1)], 1)[..., None]


def walk_data(seed: int):
    rng = np.random.default_rng(seed)
    return _walks(32, 100, rng), _walks(32, 100, rng), _walks(64, 100, rng)  # train, valid, test


def _walk_eval(model, z) -> Tuple[float, float]:
    """(NLL per step, fraction of steps split) of model on the walks z."""
    with torch.no_grad():
        out, _ = model(z[:, :-1])
        nll = float(model.head.loss(out, z[:, 1:]))
        w, mu = out.mixture.mixture_weights, out.mixture.means[..., 0]
        split = ((w.min(-1).values >= 0.2) & ((mu[..., 0] - mu[..., 1]).abs() >= 0.1)).float().mean()
    return nll, float(split)


def run_walk(method: str, lr: float, seed: int, steps: int = 600) -> dict:
    train, valid, test = walk_data(seed)
    z, zv, zt = _t(train), _t(valid), _t(test)
    torch.manual_seed(seed)
    model = MDNRNN(1, 32, 1, 2, skip=method.startswith("skip"))
    if method.endswith("init"):
        model.init_from_targets(z[:, 1:], x=z[:, :-1])
    best = {"valid": math.inf}

    def keep_best(it, opt):  # early stopping on the validation walks, checked every 25 steps
        v, _ = _walk_eval(model, zv)
        if v < best["valid"]:
            best.update(valid=v, iteration=it, state={k: t.clone() for k, t in model.state_dict().items()})

    _adam_loop(model.parameters(), lambda: model.nll(z[:, :-1], z[:, 1:]), lr, steps, 25, keep_best)
    opt = float(_bimodal_nll((zt[:, 1:] - zt[:, :-1])[..., 0]).mean())
    opt_train = float(_bimodal_nll((z[:, 1:] - z[:, :-1])[..., 0]).mean())
    nll_last, split_last = _walk_eval(model, zt)
    train_last, _ = _walk_eval(model, z)
    model.load_state_dict(best["state"])
    nll, split = _walk_eval(model, zt)
    return {"gap_nats": nll - opt, "nll": nll, "optimum": opt, "split_fraction": split, "split": bool(split >= 0.9),
            "best_iteration": best["iteration"], "gap_nats_at_600": nll_last - opt, "split_at_600": bool(split_last >= 0.9),
            "train_gap_nats_at_600": train_last - opt_train}


def walk_baselines(seed: int) -> dict:
    train, valid, test = walk_data(seed)
    seqs = lambda a: [(s, 1) for s in a]  # noqa: E731
    ar = choose_ar(seqs(train), seqs(valid), seqs(test), max_p=5)
    d = np.diff(train[..., 0], axis=1).ravel()
    dt = np.diff(test[..., 0], axis=1).ravel()
    m, s = d.mean(), d.std()
    single = float(np.mean(0.5 * ((dt - m) / s) ** 2 + math.log(s) + 0.5 * math.log(2 * math.pi)))
    opt = float(_bimodal_nll(torch.tensor(dt)).mean())
    return {"optimum": opt, "ar": {"p": ar["p"], "test_nll": ar["test_nll_per_step"]},
            "single_gaussian_step": single}


# --------------------------------------------------------------------------------- bishop


def _bishop_data(n, rng):
    x = rng.uniform(0.0, 1.0, n)
    t = x + 0.3 * np.sin(2 * np.pi * x) + rng.uniform(-0.1, 0.1, n)
    return _t(t[:, None]), _t(x[:, None])


def _branches(t: float) -> np.ndarray:
    g = np.linspace(0.0, 1.0, 200_001)
    f = g + 0.3 * np.sin(2 * np.pi * g) - t
    return g[np.nonzero(np.sign(f[:-1]) != np.sign(f[1:]))[0]]


BISHOP_T = (0.4, 0.5, 0.6)
BRANCHES = {t: _branches(t) for t in BISHOP_T}


def run_bishop(method: str, lr: float, seed: int, steps: int = 3000) -> dict:
    rng = np.random.default_rng(seed)
    t, x = _bishop_data(1000, rng)
    tt, xt = _bishop_data(5000, rng)
    torch.manual_seed(seed)
    body, head = nn.Sequential(nn.Linear(1, 20), nn.Tanh()), MDNHead(20, 1, 3)
    if method == "init":
        head.init_from_targets(x)
    probe = _t([[v] for v in BISHOP_T])
    state = {"since": None, "curve": []}

    def check(it, opt):
        with torch.no_grad():
            mix = head(body(probe)).mixture
            w, mu = mix.mixture_weights, mix.means[..., 0]
            ok = all(bool(((w[i] >= 0.1) & ((mu[i] - b).abs() < 0.05)).any())
                     for i, v in enumerate(BISHOP_T) for b in BRANCHES[v])
            if it % 100 == 0:
                state["curve"].append((it, float(head.nll(body(tt), xt))))
        state["since"] = (state["since"] or it) if ok else None

    _adam_loop(list(body.parameters()) + list(head.parameters()), lambda: head.nll(body(t), x), lr, steps, 10, check)
    with torch.no_grad():
        nll = float(head.nll(body(tt), xt))
    return {"all_branches_from_step": state["since"], "test_nll": nll, "test_nll_every_100": state["curve"]}


# --------------------------------------------------------------------------------- faithful


def run_faithful(method: str, lr: float, seed: int, steps: int = 1000, K: int = 2) -> dict:
    X, _ = load_old_faithful()
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(X))
    tr, va, te = idx[:160], idx[160:200], idx[200:]
    m, s = X[tr].mean(0), X[tr].std(0)
    Z = (X - m) / s
    w, e = _t(Z[:, 1:2]), _t(Z[:, 0:1])  # input: waiting time; target: eruption duration
    torch.manual_seed(seed)
    body, head = nn.Sequential(nn.Linear(1, 16), nn.Tanh()), MDNHead(16, 1, K)
    if method == "init":
        head.init_from_targets(e[tr])
    best = {"valid": math.inf}

    def keep_best(it, opt):  # early stopping on the 40 validation eruptions, every 20 steps
        with torch.no_grad():
            v = float(head.nll(body(w[va]), e[va]))
            if v < best["valid"]:
                best.update(valid=v, iteration=it, test=float(head.nll(body(w[te]), e[te])))

    _adam_loop(list(body.parameters()) + list(head.parameters()), lambda: head.nll(body(w[tr]), e[tr]), lr, steps,
               20, keep_best)
    with torch.no_grad():
        last = float(head.nll(body(w[te]), e[te]))
    return {"test_nll": best["test"], "best_iteration": best["iteration"], "test_nll_at_end": last}


# --------------------------------------------------------------------------------- driver

PROBLEMS = {
    "const": (run_const, ("default", "revive", "init"), (1e-3, 3e-3, 1e-2), 10),
    "walk": (run_walk, ("default", "init", "skip", "skip+init"), (3e-3, 1e-2), 5),
    "bishop": (run_bishop, ("default", "init"), (3e-3, 1e-2), 5),
    "faithful": (run_faithful, ("default", "init"), (3e-3, 1e-2), 5),
}


def summarise(problem: str, runs: list, extra: dict) -> dict:
    out = {}
    for r in runs:
        key = f"{r['method']} lr={r['lr']:g}"
        out.setdefault(key, []).append(r)
    summary = {}
    for key, rs in out.items():
        s = {"seeds": len(rs)}
        if problem == "const":
            g = [r["gap_nats"] for r in rs]
            s.update(within_0_05=sum(v <= 0.05 for v in g), gap_median=float(np.median(g)), gap_max=max(g))
        elif problem == "walk":
            g = [r["gap_nats"] for r in rs]
            g600 = [r["gap_nats_at_600"] for r in rs]
            s.update(split=sum(r["split"] for r in rs), within_0_2=sum(v <= 0.2 for v in g),
                     gap_mean=float(np.mean(g)), gap_max=max(g), nll_mean=float(np.mean([r["nll"] for r in rs])),
                     at_600={"split": sum(r["split_at_600"] for r in rs), "within_0_2": sum(v <= 0.2 for v in g600),
                             "gap_mean": float(np.mean(g600)), "gap_max": max(g600),
                             "train_gap_mean": float(np.mean([r["train_gap_nats_at_600"] for r in rs]))})
        elif problem == "bishop":
            st = [r["all_branches_from_step"] for r in rs]
            found = [v for v in st if v is not None]
            s.update(all_branches=len(found), steps_median=float(np.median(found)) if found else None,
                     steps_max=max(found) if found else None,
                     test_nll_mean=float(np.mean([r["test_nll"] for r in rs])))
        else:
            v = [r["test_nll"] for r in rs]
            end = [r["test_nll_at_end"] for r in rs]
            s.update(test_nll_mean=float(np.mean(v)), test_nll_std=float(np.std(v)),
                     best_iteration_median=float(np.median([r["best_iteration"] for r in rs])),
                     test_nll_at_end_mean=float(np.mean(end)), test_nll_at_end_std=float(np.std(end)))
        summary[key] = s
    summary.update(extra)
    return summary


def goals(summaries: dict) -> dict:
    v = {}
    c = summaries.get("const")
    if c:
        v["const: init, 10/10 within 0.05 nats at lr 1e-3, 3e-3, 1e-2"] = {
            lr: f"{c[f'init lr={lr}']['within_0_05']}/{c[f'init lr={lr}']['seeds']}" for lr in ("0.001", "0.003", "0.01")}
    w = summaries.get("walk")
    if w:
        v["walk: 5/5 split and within 0.2 nats (early-stopped; after all 600 steps)"] = {
            k: f"split {s['split']}/{s['seeds']}, within 0.2: {s['within_0_2']}/{s['seeds']}; after 600: split "
               f"{s['at_600']['split']}/{s['seeds']}, within 0.2: {s['at_600']['within_0_2']}/{s['seeds']}"
            for k, s in w.items() if isinstance(s, dict) and "at_600" in s}
    b = summaries.get("bishop")
    if b:
        v["bishop: all branches on every seed, fewer steps than default"] = {
            k: f"{s['all_branches']}/{s['seeds']} seeds, median {s['steps_median']} steps, max {s['steps_max']}"
            for k, s in b.items() if isinstance(s, dict)}
    f = summaries.get("faithful")
    if f:
        v["faithful: init no worse than default (early-stopped; after all steps)"] = {
            k: f"{s['test_nll_mean']:.4f} ± {s['test_nll_std']:.4f}; after all steps {s['test_nll_at_end_mean']:.4f}"
            for k, s in f.items() if isinstance(s, dict) and "test_nll_mean" in s}
    return v


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problems", default="const,walk,bishop,faithful")
    p.add_argument("--quick", action="store_true", help="2 seeds, a tenth of the steps: a smoke test")
    p.add_argument("--json", default="bench/results/mdn-training.json", help="results path ('' for none)")
    p.add_argument("--update", action="store_true",
                   help="replace only the problems run in the existing --json file (each problem records its date)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    doc = {"script": "bench/bench_mdn_training.py", "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "torch": torch.__version__, "gmmfast": gmmfast.__version__, "torch_threads": 1,
           "machine": machine.summary(1), "quick": a.quick, "runs": {}, "summary": {}}
    for problem in a.problems.split(","):
        fn, methods, lrs, seeds = PROBLEMS[problem]
        seeds = 2 if a.quick else seeds
        kw = {} if not a.quick else {"steps": {"const": 60, "walk": 60, "bishop": 300, "faithful": 100}[problem]}
        runs = []
        for lr in lrs:
            for method in methods:
                for seed in range(seeds):
                    t0 = time.perf_counter()
                    r = fn(method, lr, seed, **kw)
                    r.update(method=method, lr=lr, seed=seed, seconds=time.perf_counter() - t0)
                    runs.append(r)
                    print(f"{problem:8s} {method:9s} lr={lr:<6g} seed={seed} "
                          + " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                                     if k in ("gap_nats", "split", "gap_nats_at_600", "train_gap_nats_at_600",
                                              "all_branches_from_step", "test_nll", "seconds")),
                          flush=True)
        extra = {}
        if problem == "walk":
            extra["baselines"] = [walk_baselines(s) for s in range(seeds)]
        if problem == "faithful":
            k1 = {lr: [run_faithful("default", lr, s, K=1, **kw) for s in range(seeds)] for lr in lrs}
            extra["single_gaussian (K=1, default)"] = {
                f"lr={lr:g}": {"test_nll_mean": float(np.mean([r["test_nll"] for r in rs])),
                               "test_nll_at_end_mean": float(np.mean([r["test_nll_at_end"] for r in rs]))}
                for lr, rs in k1.items()}
        doc["runs"][problem] = runs
        doc["summary"][problem] = summarise(problem, runs, extra)
        doc["summary"][problem]["date"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        print(json.dumps(doc["summary"][problem], indent=1), flush=True)
    doc["elapsed_seconds"] = time.perf_counter() - t_start
    if a.update and a.json and pathlib.Path(a.json).exists():
        old = json.loads(pathlib.Path(a.json).read_text(encoding="utf-8"))
        for key in ("runs", "summary"):
            old[key].update(doc[key])
        old.setdefault("updates", []).append({k: doc[k] for k in ("date", "torch", "gmmfast", "quick", "elapsed_seconds")}
                                             | {"problems": a.problems})
        doc = old
    doc["goals"] = goals(doc["summary"])
    print(json.dumps(doc["goals"], indent=1))
    if a.json:
        path = pathlib.Path(a.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
