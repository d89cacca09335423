"""Forecasting with uncertainty: an MDN-RNN on the yearly sunspot numbers (1700-2008).

The series ships with statsmodels (``statsmodels.datasets.sunspots``; install it with
``pip install statsmodels``). Sunspot cycles are asymmetric (fast rise, slow decay) and of
irregular length and height, so the distribution of next year's number given the past is
not a fixed-width bell around a point forecast.

Two LSTM forecasters with the same architecture are trained on 1700-1920 (one-step-ahead
prediction of √(sunspots), standardised), stopped early on 1921-1955, and evaluated on
1956-2008:

- the MDN-RNN: a K=3 Gaussian mixture per step (gmmfast.nn.MDNRNN);
- the Gaussian RNN: the same network with K=1 (a mean and a variance per step);
- the obvious baseline, a linear AR(p): least squares on the p previous years with a
  Gaussian residual, p = 1 .. 15 chosen on the validation years.

Both networks feed the input to the head beside the LSTM's features (``skip=True``) and
start at a least-squares linear prediction plus the mixture of its residuals
(``MDNRNN.init_from_targets(y, x=x)``).

Printed: the held-out negative log-likelihood per step (nats, on the standardised √ scale)
of all three, the networks' averaged over ``--seeds`` training seeds (the series is short,
so single runs are noisy), and the coverage of the networks' 50 % and 90 % one-step
predictive intervals.

The honest result: the linear AR(p) wins (examples/results/mdn_forecast.json). On the √
scale the next year's number given the last few is close to a linear function plus a
roughly Gaussian error (that is why Yule fitted the first autoregression to this series in
1927), and 220 training years are too few for an LSTM with thousands of weights to learn
more than that without overfitting. A mixture only pays when the next step is multimodal:
see examples/mdn_geyser.py. The figure
shows the one-step-ahead predictive intervals over the validation and test years, and a
free-running forecast (200 sampled futures from MDNRNN.generate, primed with 1700-1955)
against what happened.

    python examples/mdn_forecast.py               # seconds on one core
    python examples/mdn_forecast.py --quick       # the test-suite version

The figure goes to examples/figures/forecast.png and the printed numbers (with the settings,
torch version, elapsed time and date) to examples/results/mdn_forecast.json by default.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch


# the shared JSON writer beside this script (also when a test loads the script by path)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _baselines import choose_ar, fit_series, step_nll  # noqa: E402
from _results import run_and_record  # noqa: E402

TRAIN_END, VALID_END = 1921, 1956  # first year of validation, first year of test
AR_NAME = "linear AR(p), least squares"


def load_sunspots():
    """(years, sunspot numbers) from statsmodels' bundled data set."""
    try:
        import statsmodels.api as sm
    except ImportError:  # pragma: no cover - depends on the environment
        raise SystemExit("this example needs statsmodels: pip install statsmodels") from None
    df = sm.datasets.sunspots.load_pandas().data
    return df["YEAR"].to_numpy().astype(int), df["SUNACTIVITY"].to_numpy().astype(np.float64)


class Scaler:
    """z = (√v - m) / s, fitted on the training years."""

    def __init__(self, v):
        r = np.sqrt(v)
        self.m, self.s = float(r.mean()), float(r.std())

    def fwd(self, v):
        return (np.sqrt(v) - self.m) / self.s

    def inv(self, z):
        return np.clip(np.asarray(z) * self.s + self.m, 0.0, None) ** 2


def fit(K: int, z: torch.Tensor, n_train: int, n_valid: int, steps: int, seed: int, hidden: int = 32):
    """Trains on steps [0, n_train); returns the model at its best validation NLL."""
    return fit_series(K, z, n_train, n_valid, steps, seed, hidden, lr=5e-3, check_every=10)


@torch.no_grad()
def quantiles(mix, probs, grid):
    """Quantiles of 1-D mixtures (batch (T,)) by inverting their CDF on a grid."""
    w = mix.mixture_weights  # (T, K)
    mu, sd = mix.means[..., 0], mix.scale[..., 0]  # (T, K)
    cdf = (w[:, None, :] * torch.special.ndtr((grid[None, :, None] - mu[:, None, :]) / sd[:, None, :])).sum(-1)
    out = []
    for p in probs:
        idx = torch.searchsorted(cdf, torch.full((cdf.shape[0], 1), p, dtype=cdf.dtype)).clamp(1, len(grid) - 1)
        lo, hi = grid[idx - 1][:, 0], grid[idx][:, 0]
        c_lo = cdf.gather(1, idx - 1)[:, 0]
        c_hi = cdf.gather(1, idx)[:, 0]
        out.append(lo + (hi - lo) * ((p - c_lo) / (c_hi - c_lo).clamp_min(1e-12)))
    return torch.stack(out, 0)


def run(steps=300, seeds=3, out: str | None = None, verbose=True, n_paths=200) -> dict:
    years, v = load_sunspots()
    n_train = int(np.searchsorted(years, TRAIN_END))
    n_valid = int(np.searchsorted(years, VALID_END))
    sc = Scaler(v[:n_train])
    z = torch.tensor(sc.fwd(v), dtype=torch.float32).reshape(1, -1, 1)
    test = slice(n_valid - 1, None)  # predictions of years VALID_END.. (index t predicts t+1)
    res = {"years": {"train": [int(years[0]), TRAIN_END - 1], "valid": [TRAIN_END, VALID_END - 1],
                     "test": [VALID_END, int(years[-1])]}}
    models = {}
    grid = torch.linspace(-4.0, 6.0, 4001)
    for K, name in ((3, "MDN-RNN (K=3)"), (1, "Gaussian RNN (K=1)")):
        t0 = time.perf_counter()
        nlls, cover50, cover90, iters = [], [], [], []
        for seed in range(seeds):
            model, it = fit(K, z, n_train, n_valid, steps, seed)
            nll = step_nll(model, z)
            nlls.append(float(nll[test].mean()))
            out_, _ = model(z[:, :-1])
            q = quantiles(_first(out_.mixture), (0.05, 0.25, 0.75, 0.95), grid)[:, test]
            target = z[0, 1:, 0][test]
            cover50.append(float(((target >= q[1]) & (target <= q[2])).float().mean()))
            cover90.append(float(((target >= q[0]) & (target <= q[3])).float().mean()))
            iters.append(it)
            if seed == 0:
                models[K] = model
        res[name] = {
            "test_nll_per_step": float(np.mean(nlls)),
            "test_nll_std_over_seeds": float(np.std(nlls)),
            "test_nll_each_seed": nlls,
            "coverage_50": float(np.mean(cover50)),
            "coverage_90": float(np.mean(cover90)),
            "early_stopped_at": iters,
            "seconds": time.perf_counter() - t0,
        }
        if verbose:
            r = res[name]
            print(f"{name:20s} held-out NLL {r['test_nll_per_step']:.3f} ± {r['test_nll_std_over_seeds']:.3f} "
                  f"nats/step ({seeds} seeds), 50%/90% interval coverage {r['coverage_50']:.2f}/{r['coverage_90']:.2f}, "
                  f"{r['seconds']:.1f} s")
    zn = z[0].numpy().astype(np.float64)
    ar = choose_ar([(zn[:n_train], 1)], [(zn[:n_valid], n_train)], [(zn, n_valid)], max_p=15)
    res[AR_NAME] = {"p": ar["p"], "test_nll_per_step": ar["test_nll_per_step"], "valid_nll_by_p": ar["valid_nll_by_p"]}
    if verbose:
        print(f"{'linear AR(' + str(ar['p']) + ')':20s} held-out NLL {ar['test_nll_per_step']:.3f} nats/step "
              f"(least squares, p chosen on the validation years)")
    gain = res["Gaussian RNN (K=1)"]["test_nll_per_step"] - res["MDN-RNN (K=3)"]["test_nll_per_step"]
    res["mdn_gain_nats_per_step"] = gain
    res["mdn_minus_ar_nats_per_step"] = res["MDN-RNN (K=3)"]["test_nll_per_step"] - ar["test_nll_per_step"]
    if verbose:
        print(f"test years {VALID_END}-{years[-1]} ({len(years) - n_valid} steps): the MDN-RNN's NLL is "
              f"{'lower' if gain > 0 else 'higher'} than the Gaussian RNN's by {abs(gain):.3f} nats/step and "
              f"{'lower' if res['mdn_minus_ar_nats_per_step'] < 0 else 'higher'} than the linear AR's by "
              f"{abs(res['mdn_minus_ar_nats_per_step']):.3f}")
    if out:
        plot(models, z, years, v, sc, n_train, n_valid, grid, out, n_paths)
        res["figure"] = out
        if verbose:
            print(f"wrote {out}")
    return res


def _first(mix):
    """The (T,) mixtures of batch element 0."""
    from gmmfast.distributions import GaussianMixture

    p = [None if t is None else t[0] for t in (mix.logits, mix.means, mix.scale, mix.rho)]
    return GaussianMixture(*p, mix.covariance, mix.mixture, validate_args=False)


@torch.no_grad()
def plot(models, z, years, v, sc, n_train, n_valid, grid, path, n_paths):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(13, 8.5))
    ax = axes[0]
    t0 = n_train - 1
    yrs = years[1:][t0:]
    for K, color, label in ((3, "C0", "MDN-RNN K=3"), (1, "C3", "Gaussian RNN")):
        out, _ = models[K](z[:, :-1])
        q = quantiles(_first(out.mixture), (0.05, 0.25, 0.5, 0.75, 0.95), grid)[:, t0:].numpy()
        q = sc.inv(q)
        if K == 3:
            ax.fill_between(yrs, q[0], q[4], color=color, alpha=0.18, lw=0, label=f"{label}: 90% interval")
            ax.fill_between(yrs, q[1], q[3], color=color, alpha=0.35, lw=0, label=f"{label}: 50% interval")
            ax.plot(yrs, q[2], color=color, lw=1, label=f"{label}: median")
        else:
            ax.plot(yrs, q[0], color=color, lw=1, ls="--", label=f"{label}: 90% interval")
            ax.plot(yrs, q[4], color=color, lw=1, ls="--")
    ax.plot(years, v, "k.-", lw=0.8, ms=3, label="observed")
    ax.axvspan(years[n_train], years[n_valid] - 0.5, color="0.9", zorder=0)
    ax.text(years[n_train] + 1, 255, "validation (early stopping)", fontsize=9)
    ax.text(years[n_valid] + 1, 255, "test (held out)", fontsize=9)
    ax.set_xlim(years[n_train] - 20, years[-1] + 1)
    ax.set_ylim(0, 270)
    ax.set_ylabel("yearly sunspot number")
    ax.set_title("One-step-ahead predictive intervals (each year predicted from all earlier years)")
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.07))

    ax = axes[1]
    model = models[3]
    torch.manual_seed(1)
    prime = z[:, :n_valid].expand(n_paths, -1, -1).contiguous()
    gen = model.generate(prime, steps=len(years) - n_valid)
    paths = sc.inv(gen.outputs[..., 0].numpy())  # (n_paths, steps)
    fy = years[n_valid:]
    qs = np.quantile(paths, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
    ax.fill_between(fy, qs[0], qs[4], color="C0", alpha=0.18, lw=0, label="90% of sampled futures")
    ax.fill_between(fy, qs[1], qs[3], color="C0", alpha=0.35, lw=0, label="50% of sampled futures")
    for p in paths[:3]:
        ax.plot(fy, p, color="C0", lw=0.7, alpha=0.8)
    ax.plot([], [], color="C0", lw=0.7, label="three sampled futures")
    ax.plot(years, v, "k.-", lw=0.8, ms=3, label="observed")
    ax.axvline(years[n_valid] - 0.5, color="0.5", lw=1)
    ax.set_xlim(years[n_valid] - 60, years[-1] + 1)
    ax.set_ylim(0, 270)
    ax.set_ylabel("yearly sunspot number")
    ax.set_xlabel("year")
    ax.set_title(f"Free-running MDN-RNN forecast from {years[n_valid]} ({n_paths} futures sampled with MDNRNN.generate)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=300, help="Adam steps per model (early-stopped on validation)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds averaged per model")
    p.add_argument("--quick", action="store_true", help="60 steps, one seed (the test-suite version)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="examples/figures/forecast.png", help="figure path ('' for none)")
    p.add_argument("--json", default="examples/results/mdn_forecast.json", help="results path ('' for none)")
    a = p.parse_args(argv)
    if a.quick:
        kw = dict(steps=60, seeds=1, out=a.out or None, n_paths=50)
    else:
        kw = dict(steps=a.steps, seeds=a.seeds, out=a.out or None)
    run_and_record(a, __file__, run, kw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
