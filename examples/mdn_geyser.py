"""A sequence whose next step is truly bimodal: Old Faithful's eruptions, one after another.

The Old Faithful data that ships with gmmfast (``gmmfast.datasets.load_old_faithful``,
R's ``faithful``) lists 272 eruptions in the order R ships them, which is time order: the
durations alternate (lag-1 autocorrelation -0.55, printed below); R's documentation does
not say whether a night interrupts the series. Eruptions are short (about 2 minutes) or
long (about 4.5): after a short one the next is almost always long, after a long one it
can be either. So the distribution of the next duration given the past is bimodal, and
no single Gaussian, however good its mean, can describe it.

Models of the next eruption's duration (standardised on the training part), trained on
the first 60 % of the series, stopped early on the next 20 %, scored on the last 20 %:

- the MDN-RNN: an LSTM (16 units) with a K=2 mixture head, the input fed to the head
  beside the LSTM's features (``skip=True``), started at a least-squares prediction plus
  the mixture of its residuals (``MDNRNN.init_from_targets(y, x=x)``);
- the Gaussian RNN: the same with K=1;
- a linear AR(p): least squares on the p previous durations with a Gaussian residual,
  p = 1 .. 10 chosen on the validation part (the obvious baseline for a sequence);
- the unconditional mixture: a gmmfast.GaussianMixture(2) of the training durations,
  which ignores the past (the floor any sequence model must beat).

Printed: held-out NLL per eruption (nats) of each, the networks' averaged over
``--seeds`` seeds. The figure shows the one-step predictive densities over the test part.

    python examples/mdn_geyser.py              # seconds on one core
    python examples/mdn_geyser.py --quick      # the test-suite version

Writes examples/figures/geyser.png and examples/results/mdn_geyser.json by default.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch

import gmmfast
from gmmfast.datasets import load_old_faithful

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _baselines import choose_ar, fit_series, step_nll  # noqa: E402
from _results import run_and_record  # noqa: E402

AR_NAME = "linear AR(p), least squares"


def load_series():
    """Eruption durations (minutes) in the order of the data set, and the split indices."""
    X, _ = load_old_faithful()
    e = X[:, 0]
    n = len(e)
    return e, int(0.6 * n), int(0.8 * n)


def fit(K: int, z: torch.Tensor, n_train: int, n_valid: int, steps: int, seed: int, hidden: int = 16):
    """Trains on steps [0, n_train); returns the model at its best validation NLL."""
    return fit_series(K, z, n_train, n_valid, steps, seed, hidden, lr=1e-2, check_every=5)


def run(steps=300, seeds=5, out: str | None = None, verbose=True) -> dict:
    e, n_train, n_valid = load_series()
    m, s = e[:n_train].mean(), e[:n_train].std()
    zn = (e - m) / s
    z = torch.tensor(zn, dtype=torch.float32).reshape(1, -1, 1)
    test = slice(n_valid - 1, None)  # index t predicts t + 1
    res = {"eruptions": {"train": [0, n_train], "valid": [n_train, n_valid], "test": [n_valid, len(e)]},
           "lag1_autocorrelation": float(np.corrcoef(e[:-1], e[1:])[0, 1]), "units": "nats per eruption, "
           "durations standardised on the training part"}
    models = {}
    for K, name in ((2, "MDN-RNN (K=2)"), (1, "Gaussian RNN (K=1)")):
        t0 = time.perf_counter()
        nlls, iters = [], []
        for seed in range(seeds):
            model, it = fit(K, z, n_train, n_valid, steps, seed)
            nlls.append(float(step_nll(model, z)[test].mean()))
            iters.append(it)
            if seed == 0:
                models[K] = model
        res[name] = {"test_nll_per_step": float(np.mean(nlls)), "test_nll_std_over_seeds": float(np.std(nlls)),
                     "test_nll_each_seed": nlls, "early_stopped_at": iters, "seconds": time.perf_counter() - t0}
    ar = choose_ar([(zn[:n_train], 1)], [(zn[:n_valid], n_train)], [(zn, n_valid)], max_p=10)
    res[AR_NAME] = {"p": ar["p"], "test_nll_per_step": ar["test_nll_per_step"], "valid_nll_by_p": ar["valid_nll_by_p"]}
    gm = gmmfast.GaussianMixture(2, random_state=0).fit(zn[:n_train, None])
    res["unconditional mixture (K=2)"] = {"test_nll_per_step": float(-gm.score(zn[n_valid:, None]))}
    res["mdn_gain_over_ar"] = ar["test_nll_per_step"] - res["MDN-RNN (K=2)"]["test_nll_per_step"]
    if verbose:
        print(f"{len(e)} eruptions, lag-1 autocorrelation of the durations {res['lag1_autocorrelation']:+.2f}; "
              f"test: eruptions {n_valid}-{len(e) - 1}")
        for name in ("MDN-RNN (K=2)", "Gaussian RNN (K=1)"):
            r = res[name]
            print(f"{name:28s} held-out NLL {r['test_nll_per_step']:.3f} ± {r['test_nll_std_over_seeds']:.3f} "
                  f"({seeds} seeds, {r['seconds']:.1f} s)")
        print(f"{'linear AR(' + str(ar['p']) + ')':28s} held-out NLL {ar['test_nll_per_step']:.3f}")
        print(f"{'unconditional mixture (K=2)':28s} held-out NLL {res['unconditional mixture (K=2)']['test_nll_per_step']:.3f}")
        print(f"the MDN-RNN beats the linear AR by {res['mdn_gain_over_ar']:.3f} nats per eruption")
    if out:
        plot(models, z, n_valid, m, s, out)
        res["figure"] = out
        if verbose:
            print(f"wrote {out}")
    return res


@torch.no_grad()
def plot(models, z, n_valid, m, s, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = torch.linspace(1.2, 5.6, 300)
    zg = ((grid - m) / s).reshape(-1, 1, 1)
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.6), sharey=True)
    idx = np.arange(n_valid, z.shape[1])
    obs = z[0, n_valid:, 0].numpy() * s + m
    for ax, K in zip(axes, (2, 1)):
        out, _ = models[K](z[:, :-1])
        mix = out.mixture
        p = [None if t is None else t[0, n_valid - 1 :] for t in (mix.logits, mix.means, mix.scale, mix.rho)]
        step = type(mix)(*p, mix.covariance, mix.mixture, validate_args=False)
        dens = step.log_prob(zg.expand(-1, len(idx), 1)).exp().numpy() / s  # (grid, steps), per minute
        ax.imshow(dens, origin="lower", aspect="auto", cmap="Blues", extent=[idx[0] - 0.5, idx[-1] + 0.5,
                  float(grid[0]), float(grid[-1])], vmax=np.quantile(dens, 0.99))
        ax.plot(idx, obs, "k.", ms=5, label="observed duration")
        ax.set_xlabel("eruption number (test part)")
        ax.set_title(("MDN-RNN, K=2" if K == 2 else "Gaussian RNN, K=1") + ": one-step predictive density")
        ax.legend(loc="lower left", fontsize=8)
    axes[0].set_ylabel("eruption duration (minutes)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="Adam steps per model (early-stopped on validation)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="60 steps, one seed (the test-suite version)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="examples/figures/geyser.png", help="figure path ('' for none)")
    p.add_argument("--json", default="examples/results/mdn_geyser.json", help="results path ('' for none)")
    a = p.parse_args(argv)
    kw = dict(steps=60 if a.quick else a.steps, seeds=1 if a.quick else a.seeds, out=a.out or None)
    run_and_record(a, __file__, run, kw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
