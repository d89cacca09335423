"""Handwriting-like strokes: an MDN-RNN with correlated 2-D components and an end-of-stroke
head (the model of Graves 2013, "Generating sequences with recurrent neural networks", §4).

No pen-stroke data ships in any Python package, so a small generator writes "cursive"
lines: words of looped letters (an 'e'-like small loop, an 'l'-like tall loop, an
'n'-like arch), with random size, width, slant and jitter per letter and per writer, and
pen lifts between words. A line is a sequence of pen offsets (dx, dy) and an end-of-stroke
flag (1 where the pen lifts after this point), as in the IAM-OnDB format Graves used.

The MDN-RNN (LSTM) reads (dx, dy, eos) and predicts the next point: a K=10 mixture of
correlated bivariate Gaussians (σ1, σ2, ρ per component: gmmfast's fused
``correlated2d`` op) for the offset and a Bernoulli for the pen lift. Lines have different
lengths; batches are padded and the padding is masked out of the loss. After training the
script samples new lines at several temperatures (logits/τ, σ·√τ) and with Graves' bias,
and draws them under a few training lines.

Printed: held-out negative log-likelihood per point (offsets in units of their standard
deviation, plus the pen-lift term) before and after training, beside the obvious
baselines: the same RNN with a single correlated Gaussian (K=1), and a least-squares
linear AR(p) of the offsets (p chosen on validation lines, full-covariance Gaussian
residual) with the training pen-lift frequency; and the pen-lift rate of training data vs
samples. Both networks start at the mixture of the training offsets
(``MDNRNN.init_from_targets``).

    python examples/mdn_handwriting.py            # ≈ 2 min of CPU (one thread)
    python examples/mdn_handwriting.py --quick    # the test-suite version

The figure goes to examples/figures/handwriting.png and the printed numbers (with the
settings, torch version, elapsed time and date) to examples/results/mdn_handwriting.json
by default.
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time

import numpy as np
import torch

from gmmfast.nn import MDNRNN

# the shared JSON writer beside this script (also when a test loads the script by path)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _baselines import choose_ar  # noqa: E402
from _results import run_and_record  # noqa: E402

# letter shapes on a baseline: x = w·t/2π + b·sin t, y = h (1 - cos t)/2, t in [0, 2π]
# (a trochoid: up to the right, back to the left over the top when b > w/2π, which makes
# the letter's loop, and down crossing the upstroke)
LETTERS = {
    "e": dict(w=0.50, b=0.20, h=0.55),
    "l": dict(w=0.45, b=0.22, h=1.60),
    "n": dict(w=0.60, b=-0.06, h=0.60),
}


def write_line(rng: np.random.Generator, points_per_letter: int = 14, n_words=(2, 3), letters=(3, 5)):
    """One line of cursive: (n, 3) array of (dx, dy, eos)."""
    slant = rng.uniform(0.05, 0.35)  # per writer
    size = rng.uniform(0.85, 1.15)
    xs, ys, eos = [], [], []
    x0 = 0.0
    for _ in range(rng.integers(n_words[0], n_words[1] + 1)):
        word = rng.choice(list(LETTERS), size=rng.integers(letters[0], letters[1] + 1))
        y_base = rng.normal(0.0, 0.04)
        # lead-in stroke from below the baseline
        px, py = [x0 - 0.15], [y_base - 0.12]
        for ch in word:
            p = LETTERS[ch]
            w = p["w"] * size * rng.uniform(0.85, 1.15)
            h = p["h"] * size * rng.uniform(0.85, 1.15)
            b = p["b"] * size * rng.uniform(0.8, 1.2)
            t = np.linspace(0.0, 2.0 * np.pi, points_per_letter + 1)[1:]
            lx = px[-1] + w * t / (2 * np.pi) + b * np.sin(t)
            ly = y_base + h * (1 - np.cos(t)) / 2
            px.extend(lx)
            py.extend(ly)
        px, py = np.array(px), np.array(py)
        px = px + slant * (py - y_base)  # slant the word
        px += rng.normal(0.0, 0.008, px.shape)
        py += rng.normal(0.0, 0.008, py.shape)
        xs.extend(px)
        ys.extend(py)
        eos.extend([0.0] * (len(px) - 1) + [1.0])
        x0 = px.max() + rng.uniform(0.5, 0.8)
    pts = np.stack([xs, ys], 1)
    d = np.diff(np.vstack([pts[:1], pts]), axis=0)  # first offset 0
    return np.column_stack([d, eos]).astype(np.float32)


def make_dataset(n: int, seed: int, **kw):
    rng = np.random.default_rng(seed)
    return [write_line(rng, **kw) for _ in range(n)]


def batch(lines, scale):
    """Padded (B, T, 3) inputs, (B, T, 2) offset targets, (B, T) eos targets, (B, T) mask."""
    T = max(len(s) for s in lines) - 1
    B = len(lines)
    x = torch.zeros(B, T, 3)
    y = torch.zeros(B, T, 2)
    e = torch.zeros(B, T)
    m = torch.zeros(B, T, dtype=torch.bool)
    for i, s in enumerate(lines):
        s = torch.from_numpy(s.copy())
        s[:, :2] /= scale
        n = len(s) - 1
        x[i, :n] = s[:-1]
        y[i, :n] = s[1:, :2]
        e[i, :n] = s[1:, 2]
        m[i, :n] = True
    return x, y, e, m


def offsets_to_strokes(seq: np.ndarray):
    """(n, 3) offsets + eos -> list of (k, 2) pen-down polylines."""
    pts = np.cumsum(seq[:, :2], axis=0)
    strokes, start = [], 0
    for i in range(len(seq)):
        if seq[i, 2] > 0.5:
            strokes.append(pts[start : i + 1])
            start = i + 1
    if start < len(seq):
        strokes.append(pts[start:])
    return [s for s in strokes if len(s) > 1]


def train_model(K, train, scale, xt, yt, et, mt, iters, hidden, batch_size, seed, verbose):
    """An MDN-RNN with K correlated components, started at the mixture of the training
    offsets (init_from_targets), trained on random batches; (model, NLL before, after, s)."""
    torch.manual_seed(seed)
    model = MDNRNN(3, hidden, 2, K, cell="lstm", covariance="correlated2d", extra_heads={"eos": "bernoulli"},
                   min_sigma=1e-3)
    _, y0, _, m0 = batch(train[:500], scale)
    model.init_from_targets(y0, mask=m0, random_state=seed)  # the offsets' mixture, for every input
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters, eta_min=3e-4)

    def test_nll():
        model.eval()
        with torch.no_grad():
            return float(model.nll(xt, yt, mask=mt, targets={"eos": et}))

    before = test_nll()
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    model.train()
    for it in range(iters):
        idx = rng.integers(0, len(train), batch_size)
        x, y, e, m = batch([train[i] for i in idx], scale)
        opt.zero_grad()
        loss = model.nll(x, y, mask=m, targets={"eos": e})
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if verbose and (it + 1) % max(1, iters // 10) == 0:
            print(f"  K={K} step {it + 1}/{iters}: train NLL {loss.item():.3f} nats/point", flush=True)
    return model, before, test_nll(), time.perf_counter() - t0


def ar_baseline(train, valid, test, scale, et, mt) -> dict:
    """Least-squares AR(p) on the offsets (full-covariance Gaussian residual, p on the
    validation lines) plus the training pen-lift frequency as the end-of-stroke model."""
    seqs = lambda lines: [(s[:, :2] / scale, 1) for s in lines]  # noqa: E731
    ar = choose_ar(seqs(train), seqs(valid), seqs(test), max_p=8)
    rate = float(np.mean(np.concatenate([s[1:, 2] for s in train])))
    e = et[mt].double()
    eos_nll = float(-(e * math.log(rate) + (1 - e) * math.log(1 - rate)).mean())
    return {"p": ar["p"], "offsets_nll": ar["test_nll_per_step"], "eos_nll": eos_nll,
            "test_nll": ar["test_nll_per_step"] + eos_nll, "valid_nll_by_p": ar["valid_nll_by_p"]}


def run(iters=1500, hidden=128, K=10, batch_size=32, n_train=2000, quick=False, seed=0, out=None,
        temperatures=(0.1, 0.4, 0.7, 1.0), verbose=True) -> dict:
    torch.manual_seed(seed)
    kw = dict(points_per_letter=8, n_words=(1, 2), letters=(2, 3)) if quick else {}
    train = make_dataset(n_train, seed, **kw)
    valid = make_dataset(256 if not quick else 64, seed + 2000, **kw)
    test = make_dataset(256 if not quick else 64, seed + 1000, **kw)
    scale = float(np.concatenate([s[:, :2] for s in train]).std())
    xt, yt, et, mt = batch(test, scale)
    model, before, after, secs = train_model(K, train, scale, xt, yt, et, mt, iters, hidden, batch_size, seed, verbose)
    res = {"test_nll_before": before, "test_nll_after": after, "train_seconds": secs}
    res["pen_lift_rate_data"] = float(et[mt].mean())
    _, _, g_after, g_secs = train_model(1, train, scale, xt, yt, et, mt, iters, hidden, batch_size, seed, verbose)
    res["single_gaussian_rnn"] = {"test_nll": g_after, "train_seconds": g_secs}
    res["linear_ar"] = ar_baseline(train, valid, test, scale, et, mt)
    if verbose:
        print(f"held-out NLL per point: {res['test_nll_before']:.3f} before training, "
              f"{res['test_nll_after']:.3f} after ({res['train_seconds']:.0f} s); the same RNN with one "
              f"Gaussian (K=1): {g_after:.3f}; linear AR({res['linear_ar']['p']}) + constant pen-lift rate: "
              f"{res['linear_ar']['test_nll']:.3f}")
    # samples
    steps = int(np.mean([len(s) for s in train]))
    torch.manual_seed(seed + 1)
    start = torch.tensor([[0.0, 0.0, 1.0]]).expand(2, 3).contiguous()  # the pen starts lifted
    samples = {}
    for tau in temperatures:
        g = model.generate(start, steps, temperature=tau)
        samples[f"τ={tau}"] = torch.cat([g.outputs * scale, g.extras["eos"].unsqueeze(-1)], -1).numpy()
    g = model.generate(start, steps, temperature=1.0, bias=1.0)
    samples["τ=1, bias=1"] = torch.cat([g.outputs * scale, g.extras["eos"].unsqueeze(-1)], -1).numpy()
    res["pen_lift_rate_samples"] = {k: float(v[..., 2].mean()) for k, v in samples.items()}
    if verbose:
        rates = ", ".join(f"{k}: {v:.3f}" for k, v in res["pen_lift_rate_samples"].items())
        print(f"pen lifts per point: data {res['pen_lift_rate_data']:.3f}; samples {rates}")
    if out:
        plot(train[:2], samples, out, K)
        res["figure"] = out
        if verbose:
            print(f"wrote {out}")
    return res


def plot(examples, samples, path, K):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("training data", examples)] + [(f"generated, {k}", list(v)) for k, v in samples.items()]
    fig, axes = plt.subplots(len(rows), 2, figsize=(16, 1.5 * len(rows) + 0.6))
    for r, (title, seqs) in enumerate(rows):
        for c in range(2):
            ax = axes[r, c]
            for s in offsets_to_strokes(np.asarray(seqs[c])):
                ax.plot(s[:, 0], s[:, 1], "k-" if r == 0 else "b-", lw=1.1)
            ax.set_aspect("equal", adjustable="datalim")
            ax.axis("off")
            if c == 0:
                ax.set_title(title, loc="left", fontsize=10)
    fig.suptitle(f"MDN-RNN handwriting: K={K} correlated 2-D components + end-of-stroke head; "
                 "samples at temperature τ (logits/τ, σ·√τ) and with Graves' bias", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=1500)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="tiny model, 40 steps (the test-suite version)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (small model: 1 is fastest)")
    p.add_argument("--out", default="examples/figures/handwriting.png", help="figure path ('' for none)")
    p.add_argument("--json", default="examples/results/mdn_handwriting.json", help="results path ('' for none)")
    a = p.parse_args(argv)
    if a.quick:
        kw = dict(iters=40, hidden=32, K=5, batch_size=16, n_train=200, quick=True, seed=a.seed, out=a.out or None)
    else:
        kw = dict(iters=a.iters, hidden=a.hidden, seed=a.seed, out=a.out or None)
    run_and_record(a, __file__, run, kw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
