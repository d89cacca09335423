"""Fisher-vector pooling of local descriptors on scikit-learn's 8×8 digits.

Local descriptors are the 3×3 patches of each image at its 8×8 positions (zero padding;
9-D, plus the patch position scaled by ``--pos-weight``, as in spatially augmented
FV encodings), i.e. a [B, D, 8, 8] feature map of the kind a convolutional layer
produces. gmmfast's EM fits the diagonal GMM of FisherVectorPool (``fit_gmm_``) on the
training descriptors; every image becomes an improved Fisher vector, classified by
logistic regression. Baselines: the same classifier on the raw pixels and on the
average-pooled descriptors, and NetVLAD pooling (initialised from an isotropic GMM).
Several seeds (each draws its own train/test split and GMM initialisation).

    python examples/cnn_fisher_digits.py           # 5 seeds, K = 16
    python examples/cnn_fisher_digits.py --quick   # 1 seed, K = 8 (seconds)

The printed accuracies (with the settings, torch version, elapsed time and date) are also
written to examples/results/cnn_fisher_digits.json (``--json``).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from gmmfast.nn import FisherVectorPool, NetVLAD

# the shared JSON writer beside this script (also when a test loads the script by path)
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _results import write_results  # noqa: E402


def descriptor_maps(images: np.ndarray, pos_weight: float) -> torch.Tensor:
    """[B, 9 (+2), 8, 8]: 3×3 patches around every pixel (+ its scaled position)."""
    x = torch.from_numpy(images[:, None].astype(np.float64))
    patches = F.unfold(x, 3, padding=1).view(len(images), 9, 8, 8)
    if pos_weight == 0:
        return patches
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 8, dtype=torch.float64),
                            torch.linspace(-1, 1, 8, dtype=torch.float64), indexing="ij")
    pos = pos_weight * torch.stack((ys, xs)).expand(len(images), 2, 8, 8)
    return torch.cat((patches, pos), 1)


def logistic_accuracy(train, ytr, test, yte, C=10.0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(train)
    clf = LogisticRegression(C=C, max_iter=2000).fit(sc.transform(train), ytr)
    return clf.score(sc.transform(test), yte)


def accuracy_summary(accs) -> dict:
    """Test accuracies per seed, and their mean ± std in percent as printed."""
    a = 100 * np.asarray(accs)
    return {"per_seed": [float(x) for x in accs], "mean_pct": float(a.mean()), "std_pct": float(a.std())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 seed, K = 8, GMM fitted on 10,000 descriptors")
    p.add_argument("--max-samples", type=int, default=40000, help="descriptors the GMMs are fitted on")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--components", type=int, default=16)
    p.add_argument("--pos-weight", type=float, default=1.0)
    p.add_argument("--test-size", type=float, default=0.3)
    p.add_argument("--out", default="examples/figures")
    p.add_argument("--json", default="examples/results/cnn_fisher_digits.json", help="results path ('' for none)")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    if args.quick:
        args.seeds, args.components, args.max_samples = 1, 8, 10000
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    images = d.images / 16.0
    maps = descriptor_maps(images, args.pos_weight)
    D = maps.shape[1]
    rows = {"raw pixels (64-D)": [], f"average-pooled descriptors ({D}-D)": []}
    fv_name = f"Fisher vector, K={args.components} ({2 * args.components * D}-D)"
    vlad_name = f"NetVLAD (isotropic GMM init), K={args.components} ({args.components * D}-D)"
    rows[fv_name], rows[vlad_name] = [], []
    t0 = time.perf_counter()
    pool = None
    for seed in range(args.seeds):
        idx_tr, idx_te = train_test_split(np.arange(len(images)), test_size=args.test_size,
                                          stratify=d.target, random_state=seed)
        ytr, yte = d.target[idx_tr], d.target[idx_te]
        raw = images.reshape(len(images), -1)
        rows["raw pixels (64-D)"].append(logistic_accuracy(raw[idx_tr], ytr, raw[idx_te], yte))
        avg = maps.mean((2, 3)).numpy()
        rows[f"average-pooled descriptors ({D}-D)"].append(logistic_accuracy(avg[idx_tr], ytr, avg[idx_te], yte))
        pool = FisherVectorPool(D, args.components, improved=True, dtype=torch.float64)
        pool.fit_gmm_(maps[idx_tr], random_state=seed, max_samples=args.max_samples)
        vlad = NetVLAD(D, args.components, decoupled=False, dtype=torch.float64)
        vlad.fit_gmm_(maps[idx_tr], random_state=seed, max_samples=args.max_samples)
        with torch.no_grad():
            fv = pool(maps).numpy()
            vl = vlad(maps).numpy()
        rows[fv_name].append(logistic_accuracy(fv[idx_tr], ytr, fv[idx_te], yte))
        rows[vlad_name].append(logistic_accuracy(vl[idx_tr], ytr, vl[idx_te], yte))
    elapsed = time.perf_counter() - t0
    print(f"digits 8x8, logistic regression on pooled 3x3-patch descriptors, {args.seeds} seed(s) "
          f"({elapsed:.0f} s)")
    for name, accs in rows.items():
        a = 100 * np.asarray(accs)
        print(f"{name:<52}{a.mean():>8.2f} ± {a.std():.2f} %")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    K = args.components
    order = np.argsort(-pool.weights().detach().numpy())
    means = pool.means.detach().numpy()
    cols = min(K, 8)
    r = -(-K // cols)
    fig, axes = plt.subplots(r, cols, figsize=(1.3 * cols, 1.75 * r + 0.8), squeeze=False)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[K:]:
        ax.set_visible(False)
    for j, k in enumerate(order):
        ax = axes[j // cols, j % cols]
        ax.imshow(means[k, :9].reshape(3, 3), cmap="gray_r", vmin=0, vmax=1)
        title = f"π = {pool.weights()[k].item():.2f}"
        if D > 9:
            title += f"\nat ({means[k, 9]:+.1f}, {means[k, 10]:+.1f})"
        ax.set_title(title, fontsize=7.5)
    fig.suptitle(f"GMM of 3×3 digit patches (+ position) fitted by gmmfast EM, seed {args.seeds - 1}: "
                 "component means by weight\n(black = ink; 'at (row, col)' = mean patch position, "
                 "image corners at ±1)", fontsize=8.5)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    path = out / "fisher_digits_gmm.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")
    if args.json:
        summary = {"pooling_and_classification_seconds": elapsed,
                   "accuracy": {name: accuracy_summary(accs) for name, accs in rows.items()}}
        write_results(args.json, __file__, args, summary, time.perf_counter() - t_start)
    return rows


if __name__ == "__main__":
    main()
