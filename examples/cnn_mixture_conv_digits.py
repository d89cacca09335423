"""Mixture-of-Gaussians convolution kernels on scarce data (scikit-learn's 8×8 digits).

Trains on a few hundred images (30 per class by default) and tests on the rest, from
several seeds (each seed draws its own training subset and initialisation):

- ordinary CNN: two 5×5 Conv2d layers (1→16→32), ReLU + 2×2 max-pooling, linear head;
- narrow ordinary CNN: the same with 8 channels in the second layer (about the
  parameter count of the mixture CNN);
- mixture CNN: the same architecture with gmmfast's GaussianMixtureConv2d: layer 1 has
  5 full-covariance Gaussians per filter, layer 2 5 isotropic Gaussians per filter with
  the geometry shared across input channels (only the amplitudes differ).

Prints test accuracy mean ± std and parameter counts; draws the learned first-layer
kernels of both models (seed 0) with the mixture components' 1-σ ellipses.

    python examples/cnn_mixture_conv_digits.py           # 5 seeds, 80 epochs (about 25 s on 2 cores)
    python examples/cnn_mixture_conv_digits.py --quick   # 1 seed, 6 epochs (seconds)

The printed accuracies and parameter counts (with the settings, torch version, elapsed time
and date) are also written to examples/results/cnn_mixture_conv_digits.json (``--json``).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gmmfast.nn import GaussianMixtureConv2d

# the shared JSON writer beside this script (also when a test loads the script by path)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _results import write_results  # noqa: E402


def load_scarce_digits(seed: int, per_class: int):
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)])
    test = np.setdiff1d(np.arange(len(y)), train)
    t = torch.from_numpy
    return t(X[train]), t(y[train]).long(), t(X[test]), t(y[test]).long()


def make_model(kind: str, args) -> nn.Module:
    if kind == "cnn":
        c1 = nn.Conv2d(1, 16, 5, padding=2)
        c2 = nn.Conv2d(16, 32, 5, padding=2)
        width = 32
    elif kind == "cnn_narrow":
        c1 = nn.Conv2d(1, 16, 5, padding=2)
        c2 = nn.Conv2d(16, 8, 5, padding=2)
        width = 8
    else:
        c1 = GaussianMixtureConv2d(1, 16, 5, args.components, padding=2, covariance="full",
                                   init_sigma=args.init_sigma)
        c2 = GaussianMixtureConv2d(16, 32, 5, args.components, padding=2, covariance="isotropic",
                                   share_geometry=not args.own_geometry, init_sigma=args.init_sigma)
        width = 32
    return nn.Sequential(c1, nn.ReLU(), nn.MaxPool2d(2), c2, nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dropout(args.dropout), nn.Linear(width * 4, 10))


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train(kind: str, seed: int, args):
    torch.manual_seed(seed)
    Xtr, ytr, Xte, yte = load_scarce_digits(seed, args.per_class)
    model = make_model(kind, args)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * -(-len(Xtr) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps)
    mixture_layers = [m for m in model.modules() if isinstance(m, GaussianMixtureConv2d)]
    g = torch.Generator().manual_seed(seed)
    for _ in range(args.epochs):
        model.train()
        perm = torch.randperm(len(Xtr), generator=g)
        for i in range(0, len(Xtr), args.batch):
            idx = perm[i:i + args.batch]
            loss = F.cross_entropy(model(Xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            for m in mixture_layers:  # keep the positions inside the kernel (DCLS)
                m.clamp_parameters_()
    model.eval()
    with torch.no_grad():
        acc = (model(Xte).argmax(1) == yte).float().mean().item()
    return acc, model


def draw_kernels(cnn, mix, path, acc_cnn, acc_mix):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Ellipse

    w_cnn = cnn[0].weight.detach()[:, 0].numpy()
    layer = mix[0]
    w_mix = layer.kernel().detach()[:, 0].numpy()
    means = layer.clamped_means().detach()[:, 0].numpy()  # [16, K, 2] (row, col)
    covs = layer.covariances().detach()[:, 0].numpy()  # [16, K, 2, 2]
    amps = layer.amplitude.detach()[:, 0].numpy()  # [16, K]
    r = (layer.kernel_size[0] - 1) / 2
    n = w_cnn.shape[0]
    cols = 8
    rows = -(-n // cols)
    fig, axes = plt.subplots(2 * rows, cols, figsize=(1.25 * cols, 1.2 * 2 * rows + 0.8))
    for i in range(n):
        for block, w in enumerate((w_cnn[i], w_mix[i])):
            ax = axes[block * rows + i // cols, i % cols]
            v = np.abs(w).max()
            ax.imshow(w, cmap="RdBu_r", vmin=-v, vmax=v, extent=(-r - 0.5, r + 0.5, r + 0.5, -r - 0.5))
            ax.set_xticks([])
            ax.set_yticks([])
            if block == 1:
                for k in range(means.shape[1]):
                    vals, vecs = np.linalg.eigh(covs[i, k])
                    # (row, col) → plot (x = col, y = row); angle of the major axis in x-y
                    major = vecs[:, 1]
                    angle = np.degrees(np.arctan2(major[0], major[1]))
                    color = "darkred" if amps[i, k] > 0 else "navy"
                    # fade components with small amplitudes
                    alpha = max(0.25, abs(amps[i, k]) / np.abs(amps[i]).max())
                    ax.add_patch(Ellipse((means[i, k, 1], means[i, k, 0]), 2 * np.sqrt(vals[1]),
                                         2 * np.sqrt(vals[0]), angle=angle, fill=False, lw=1.0,
                                         color=color, alpha=alpha))
                    ax.plot(means[i, k, 1], means[i, k, 0], ".", ms=4, color=color, alpha=alpha)
                ax.set_xlim(-r - 0.5, r + 0.5)
                ax.set_ylim(r + 0.5, -r - 0.5)
    axes[0, 0].set_ylabel(f"Conv2d\n{100 * acc_cnn:.1f} %", fontsize=9)
    axes[rows, 0].set_ylabel(f"mixture\n{100 * acc_mix:.1f} %", fontsize=9)
    fig.suptitle("learned first-layer 5×5 kernels (seed 0, 300 training digits)\n"
                 f"top: ordinary Conv2d; bottom: {means.shape[1]} full-covariance Gaussians per filter "
                 "(1-σ ellipses; red: positive, blue: negative amplitude; faint: small |amplitude|)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def accuracy_summary(accs) -> dict:
    """Test accuracies per seed, and their mean ± std in percent as printed."""
    a = 100 * np.asarray(accs)
    return {"per_seed": [float(x) for x in accs], "mean_pct": float(a.mean()), "std_pct": float(a.std())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, 6 epochs (smoke test)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=80)
    p.add_argument("--per-class", type=int, default=30, help="training images per class")
    p.add_argument("--components", type=int, default=5, help="Gaussians per mixture filter")
    p.add_argument("--init-sigma", type=float, default=0.6, help="initial σ of the Gaussians (pixels)")
    p.add_argument("--own-geometry", action="store_true",
                   help="layer 2: one geometry per (output, input) channel pair instead of shared")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-2)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--out", default="examples/figures", help="folder for the PNG")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default="examples/results/cnn_mixture_conv_digits.json",
                   help="results path ('' for none)")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    if args.quick:
        args.seeds, args.epochs = 1, 6
    if args.threads:
        torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    kinds = {"cnn": "ordinary CNN", "cnn_narrow": "ordinary CNN, narrow", "mixture": "mixture-kernel CNN"}
    results, models = {}, {}
    t0 = time.perf_counter()
    for kind in kinds:
        accs = []
        for seed in range(args.seeds):
            acc, model = train(kind, seed, args)
            accs.append(acc)
            if seed == 0:
                models[kind] = (model, acc)
        results[kind] = accs
    elapsed = time.perf_counter() - t0
    print(f"scarce digits: {10 * args.per_class} training images, "
          f"{1797 - 10 * args.per_class} test images, {args.seeds} seed(s) x {args.epochs} epochs "
          f"({elapsed:.0f} s)")
    print(f"{'model':<26}{'parameters':>11}{'test accuracy':>22}")
    for kind, name in kinds.items():
        a = 100 * np.asarray(results[kind])
        print(f"{name:<26}{n_params(models[kind][0]):>11}{a.mean():>14.2f} ± {a.std():.2f} %")
    if args.seeds > 1:
        diff = 100 * (np.asarray(results["mixture"]) - np.asarray(results["cnn"]))
        print(f"mixture − ordinary, per seed (points): {np.array2string(diff, precision=2)}")
    path = out / "mixture_conv_kernels.png"
    draw_kernels(models["cnn"][0], models["mixture"][0], path, models["cnn"][1], models["mixture"][1])
    print(f"wrote {path}")
    if args.json:
        summary = {"training_seconds": elapsed, "train_images": 10 * args.per_class,
                   "test_images": 1797 - 10 * args.per_class, "models": {}}
        for kind, name in kinds.items():
            summary["models"][kind] = {"name": name, "parameters": n_params(models[kind][0]),
                                       **accuracy_summary(results[kind])}
        summary["mixture_minus_ordinary_points_per_seed"] = [
            100 * (a - b) for a, b in zip(results["mixture"], results["cnn"])]
        write_results(args.json, __file__, args, summary, time.perf_counter() - t_start)
    return results


if __name__ == "__main__":
    main()
