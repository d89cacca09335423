"""Softmax vs the L-GM loss (Wan et al., CVPR 2018) on scikit-learn's 8×8 digits.

A small CNN maps each image to a D-dimensional feature (D = 2 and D = 64); the head is
either a linear layer + softmax cross-entropy, or gmmfast's GaussianMixtureClassifier
(identity covariance, one Gaussian per class) trained with LGMLoss (margin α, likelihood
weight λ). Every configuration is trained from several seeds (each seed also draws its
own stratified train/test split); the script prints test accuracy mean ± std and draws
the 2-D test features of both heads. A third row refits a Gaussian-discriminant head in
closed form (``fit_gda_``, shared full covariance) on the frozen softmax features.

    python examples/cnn_lgm_digits.py            # 5 seeds, 40 epochs (about 3.5 minutes on 2 cores)
    python examples/cnn_lgm_digits.py --quick    # 1 seed, 3 epochs (seconds)

The printed accuracies (with the settings, torch version, elapsed time and date) are also
written to examples/results/cnn_lgm_digits.json (``--json``).
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

from gmmfast.nn import GaussianMixtureClassifier, LGMLoss

# the shared JSON writer beside this script (also when a test loads the script by path)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _results import write_results  # noqa: E402


def load_digits_split(seed: int, test_size: float = 0.3):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)[:, None]  # [N, 1, 8, 8] in [0, 1]
    Xtr, Xte, ytr, yte = train_test_split(X, d.target, test_size=test_size, stratify=d.target, random_state=seed)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return t(Xtr), t(ytr).long(), t(Xte), t(yte).long()


class Features(nn.Module):
    """8×8 → D: two 3×3 conv blocks with pooling, then a linear layer."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # 4×4
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),  # 2×2
            nn.Flatten(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, dim),
        )

    def forward(self, x):
        return self.body(x)


def train(head_kind: str, dim: int, seed: int, epochs: int, args):
    torch.manual_seed(seed)
    Xtr, ytr, Xte, yte = load_digits_split(seed)
    feats = Features(dim)
    if head_kind == "softmax":
        head = nn.Linear(dim, 10)
        loss_fn = None
    else:
        head = GaussianMixtureClassifier(dim, 10, "identity", init_std=args.init_std)
        loss_fn = LGMLoss(alpha=args.alpha, lam=args.lam, warmup_steps=args.warmup)
    params = list(feats.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=args.lr)
    steps_per_epoch = -(-len(Xtr) // args.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        feats.train()
        perm = torch.randperm(len(Xtr), generator=g)
        for i in range(0, len(Xtr), args.batch):
            idx = perm[i:i + args.batch]
            f = feats(Xtr[idx])
            if loss_fn is None:
                loss = F.cross_entropy(head(f), ytr[idx])
            else:
                loss = loss_fn(head, f, ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    feats.eval()
    with torch.no_grad():
        fte, ftr = feats(Xte), feats(Xtr)
        acc = (head(fte).argmax(1) == yte).float().mean().item()
        gda_acc = None
        if head_kind == "softmax":
            gda = GaussianMixtureClassifier(dim, 10, "shared_full").fit_gda_(ftr, ytr, reg_covar=1e-4)
            gda_acc = (gda.predict(fte) == yte).float().mean().item()
    return acc, gda_acc, (fte.numpy(), yte.numpy(), head)


def scatter(ax, f, y, title, means=None):
    cmap = __import__("matplotlib").colormaps["tab10"]
    for c in range(10):
        m = y == c
        ax.scatter(f[m, 0], f[m, 1], s=7, color=cmap(c), label=str(c), alpha=0.75, linewidths=0)
    if means is not None:
        ax.scatter(means[:, 0], means[:, 1], marker="X", s=90, c=[cmap(c) for c in range(10)],
                   edgecolors="black", linewidths=1.0, label="class means")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("feature 1")
    ax.set_ylabel("feature 2")
    ax.set_aspect("equal", adjustable="datalim")


def accuracy_summary(accs) -> dict:
    """Test accuracies per seed, and their mean ± std in percent as printed."""
    a = 100 * np.asarray(accs)
    return {"per_seed": [float(x) for x in accs], "mean_pct": float(a.mean()), "std_pct": float(a.std())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, 3 epochs (smoke test)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--alpha", type=float, default=0.3, help="L-GM margin α")
    p.add_argument("--lam", type=float, default=0.1, help="L-GM likelihood weight λ")
    p.add_argument("--warmup", type=int, default=100, help="L-GM warm-up steps for α and λ")
    p.add_argument("--init-std", type=float, default=3.0, help="std of the initial class means")
    p.add_argument("--dims", type=int, nargs="+", default=[2, 64])
    p.add_argument("--out", default="examples/figures", help="folder for the PNG")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default="examples/results/cnn_lgm_digits.json", help="results path ('' for none)")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    if args.quick:
        args.seeds, args.epochs = 1, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    results, gda, keep = {}, {}, {}
    t0 = time.perf_counter()
    for dim in args.dims:
        for kind in ("softmax", "lgm"):
            accs = []
            for seed in range(args.seeds):
                acc, gacc, extra = train(kind, dim, seed, args.epochs, args)
                accs.append(acc)
                if gacc is not None:
                    gda.setdefault(dim, []).append(gacc)
                if seed == 0:
                    keep[(kind, dim)] = extra
            results[(kind, dim)] = accs
    elapsed = time.perf_counter() - t0

    print(f"digits 8x8, {args.seeds} seed(s) x {args.epochs} epochs, alpha={args.alpha}, lambda={args.lam} "
          f"({elapsed:.0f} s)")
    print(f"{'head':<34}{'feature dim':>12}{'test accuracy':>22}")
    for dim in args.dims:
        rows = [("softmax (linear + CE)", results[("softmax", dim)]),
                ("L-GM (GaussianMixtureClassifier)", results[("lgm", dim)]),
                ("softmax features + GDA refit", gda[dim])]
        for name, accs in rows:
            a = 100 * np.asarray(accs)
            print(f"{name:<34}{dim:>12}{a.mean():>14.2f} ± {a.std():.2f} %")
    if args.seeds > 1:
        for dim in args.dims:
            diff = 100 * (np.asarray(results[("lgm", dim)]) - np.asarray(results[("softmax", dim)]))
            print(f"L-GM − softmax, D={dim}, per seed (points): {np.array2string(diff, precision=2)}")

    if 2 in args.dims:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
        f, y, _ = keep[("softmax", 2)]
        a = 100 * results[("softmax", 2)][0]
        scatter(axes[0], f, y, f"softmax, 2-D test features (seed 0, acc {a:.1f} %)")
        f, y, head = keep[("lgm", 2)]
        a = 100 * results[("lgm", 2)][0]
        scatter(axes[1], f, y, f"L-GM (α={args.alpha}, λ={args.lam}), seed 0, acc {a:.1f} %",
                means=head.means.detach().numpy())
        axes[1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=1.5)
        fig.suptitle("scikit-learn digits: 2-D CNN features learned with softmax vs L-GM loss")
        fig.tight_layout()
        path = out / "lgm_digits_features2d.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(f"wrote {path}")
    if args.json:
        summary = {"training_seconds": elapsed, "dims": {}}
        for dim in args.dims:
            d = {"softmax": accuracy_summary(results[("softmax", dim)]),
                 "lgm": accuracy_summary(results[("lgm", dim)]),
                 "softmax_features_gda_refit": accuracy_summary(gda[dim])}
            d["lgm_minus_softmax_points_per_seed"] = [
                100 * (a - b) for a, b in zip(results[("lgm", dim)], results[("softmax", dim)])]
            summary["dims"][str(dim)] = d
        write_results(args.json, __file__, args, summary, time.perf_counter() - t_start)
    return results


if __name__ == "__main__":
    main()
