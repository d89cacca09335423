"""The ``gmmfast demo`` command: a guided tour on the Old Faithful data.

Holds ``cmd_demo`` (fits a 2-component mixture to the geyser data shipped with gmmfast,
prints the components, times the native kernels against the NumPy reference with
``_time_per_call``, ranks models by BIC) and the picture it draws when matplotlib is
installed (``_plot_demo``, ``_ellipse_axes``). Imports :mod:`gmmfast._cli_data` and
:mod:`gmmfast._cli_progress`, never :mod:`gmmfast.cli`.
"""

from __future__ import annotations

import math
from time import perf_counter

import numpy as np

from ._cli_data import CLIError
from ._cli_progress import _format_seconds, _threads


def _time_per_call(fn, budget=0.2, min_runs=3, max_runs=500):
    """Median wall time of fn() over repeated calls (after one warm-up call)."""
    result = fn()
    times = []
    total = 0.0
    while (len(times) < min_runs or total < budget) and len(times) < max_runs:
        t0 = perf_counter()
        fn()
        dt = perf_counter() - t0
        times.append(dt)
        total += dt
    return float(np.median(times)), result


def cmd_demo(args) -> int:
    from . import ops
    from . import reference as ref
    from .datasets import load_old_faithful
    from .mixture import GaussianMixture
    from .selection import select_model

    X, names = load_old_faithful()
    seed = 0
    say = print
    title = "gmmfast demo: a Gaussian mixture for the Old Faithful geyser"
    say(title)
    say("=" * len(title))
    say()
    say(f"Data: {X.shape[0]} eruptions of Old Faithful (Yellowstone), R's `faithful` data set")
    spans = (f"{X[:, 0].min():.1f} to {X[:, 0].max():.1f} min",
             f"{X[:, 1].min():.0f} to {X[:, 1].max():.0f} min")
    say(f"  eruptions  how long the eruption lasted  {spans[0]:<16} (mean {X[:, 0].mean():.2f})")
    say(f"  waiting    time to the next eruption     {spans[1]:<16} (mean {X[:, 1].mean():.1f})")
    say()

    gmm = GaussianMixture(n_components=2, covariance_type="full", random_state=seed).fit(X)
    order = np.argsort(gmm.means_[:, 0])  # short eruptions first
    label = {order[0]: "short eruptions", order[1]: "long eruptions"}
    say(f"Model: GaussianMixture(n_components=2, covariance_type='full', random_state={seed})")
    say(f"  {'converged' if gmm.converged_ else 'did NOT converge'} after {gmm.n_iter_} EM "
        f"iterations; mean log-likelihood {gmm.score(X):.4f} per eruption, BIC {gmm.bic(X):.1f}")
    say()
    say(f"  {'component':<17} {'weight':>6}   {'eruptions (min)':<17} {'waiting (min)':<15} "
        "correlation")
    for k in order:
        sd = np.sqrt(np.diag(gmm.covariances_[k]))
        corr = gmm.covariances_[k][0, 1] / (sd[0] * sd[1])
        say(f"  {label[k]:<17} {gmm.weights_[k]:6.1%}   "
            f"{f'{gmm.means_[k, 0]:.2f} ± {sd[0]:.2f}':<17} "
            f"{f'{gmm.means_[k, 1]:.1f} ± {sd[1]:.1f}':<15} {corr:+.2f}")
    say("  (mean ± standard deviation of each component)")
    say()
    say("  covariance matrices (eruptions, waiting; min²):")
    for k in order:
        c = gmm.covariances_[k]
        say(f"    {label[k]:<17} [[{c[0, 0]:8.4f} {c[0, 1]:8.4f}]")
        say(f"    {'':<17}  [{c[1, 0]:8.4f} {c[1, 1]:8.4f}]]")
    say()

    # Speed: the same EM loop from the same start, native kernels vs readable NumPy
    init = ops.initial_params(X, 2, "full", random_state=np.random.RandomState(seed))
    t_fast, fast = _time_per_call(lambda: ops.em(X, init, tol=gmm.tol, max_iter=gmm.max_iter))
    t_ref, slow = _time_per_call(lambda: ref.em(X, init, tol=gmm.tol, max_iter=gmm.max_iter))
    diff = abs(fast.lower_bound - slow.lower_bound)
    threads = _threads(None)
    say(f"Speed: EM from the same k-means start ({fast.n_iter} iterations), "
        "median of repeated runs")
    fast_name = f"gmmfast, C++ kernels ({threads} thread{'s' if threads > 1 else ''})"
    say(f"  {fast_name:<36} {_format_seconds(t_fast):>9} per fit")
    say(f"  {'NumPy reference (gmmfast.reference)':<36} {_format_seconds(t_ref):>9} per fit")
    ratio = t_ref / t_fast if t_fast > 0 else math.inf
    say(f"  gmmfast is {ratio:.1f}x {'faster' if ratio >= 1 else 'slower'}; "
        f"both reach mean log-likelihood {fast.lower_bound:.10f}"
        + (" (identical)" if diff == 0 else f" (they differ by {diff:.1e})"))
    if diff > 1e-8 or fast.n_iter != slow.n_iter:
        say(f"  WARNING: the two implementations disagree ({fast.n_iter} vs {slow.n_iter} "
            "iterations): please report this")
    say()

    # Why two components: one call compares K = 1..4 and every covariance type
    sel = select_model(X, range(1, 5), random_state=seed)
    ranked = sorted((r for r in sel.results if r["error"] is None), key=lambda r: r["bic"])
    best, second = ranked[0], ranked[1]
    say(f"Why two components? gmmfast.select_model(X, range(1, 5)) fits {len(sel.results)} "
        "models")
    say("(1 to 4 components, each covariance type) and ranks them by BIC (lower is better):")
    for name, r in (("best", best), ("next", second)):
        say(f"  {name}   n_components={r['n_components']}, "
            f"covariance_type={r['covariance_type']!r:<8}  BIC {r['bic']:.1f}")
    one = min((r for r in ranked if r["n_components"] == 1), key=lambda r: r["bic"])
    say(f"  (a single Gaussian scores {one['bic']:.1f}: the eruptions really come in two kinds)")
    say()

    if args.no_plot:
        say("Picture: skipped (--no-plot)")
    else:
        path = args.plot or "old_faithful_gmm.png"
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            say("Picture: skipped, matplotlib is not installed. To get it:")
            say("  pip install matplotlib        (or: pip install 'gmmfast[plot]')")
        else:
            _plot_demo(path, X, gmm, order, label)
            say(f"Picture: {path}")
            say("  the eruptions coloured by component, with each component's mean and its")
            say("  1σ and 2σ ellipses (39% and 86% of a 2-D Gaussian's mass)")
    say()
    say("Try it on your own data:")
    say("  gmmfast fit data.csv -k 3 -o model.npz     # fit (CSV, text or .npy; header optional)")
    say("  gmmfast predict model.npz data.csv         # component of each row")
    say("  gmmfast info model.npz                     # what the model contains")
    say("or in Python:")
    say("  import gmmfast")
    say("  from gmmfast.datasets import load_old_faithful")
    say("  X, names = load_old_faithful()")
    say("  gmm = gmmfast.GaussianMixture(n_components=2, random_state=0).fit(X)")
    say("  print(gmm.weights_, gmm.means_, gmm.predict(X[:5]))")
    return 0


def _ellipse_axes(cov):
    """Semi-axes and angle (degrees) of the 1σ ellipse of a 2x2 covariance."""
    vals, vecs = np.linalg.eigh(cov)
    angle = math.degrees(math.atan2(vecs[1, 1], vecs[0, 1]))  # of the largest axis
    return math.sqrt(vals[1]), math.sqrt(vals[0]), angle


def _plot_demo(path, X, gmm, order, label):
    # The object-oriented API with the Agg canvas: no pyplot, no global backend state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Ellipse

    colours = {order[0]: "#1f77b4", order[1]: "#d62728"}
    labels = gmm.predict(X)
    fig = Figure(figsize=(8.0, 6.0), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    handles = []
    for k in order:
        mine = labels == k
        ax.scatter(X[mine, 0], X[mine, 1], s=18, color=colours[k], alpha=0.55,
                   edgecolors="white", linewidths=0.4, zorder=2)
        a, b, angle = _ellipse_axes(gmm.covariances_[k])
        for r, style, width in ((1, "-", 2.0), (2, "--", 1.4)):
            ax.add_patch(Ellipse(gmm.means_[k], 2 * r * a, 2 * r * b, angle=angle, fill=False,
                                 edgecolor=colours[k], linestyle=style, linewidth=width, zorder=3))
        ax.add_patch(Ellipse(gmm.means_[k], 2 * a, 2 * b, angle=angle, facecolor=colours[k],
                             alpha=0.10, edgecolor="none", zorder=1))
        ax.plot(*gmm.means_[k], marker="X", markersize=13, color=colours[k],
                markeredgecolor="black", markeredgewidth=1.2, linestyle="none", zorder=4)
        handles.append(Line2D([], [], marker="o", linestyle="none", color=colours[k], alpha=0.8,
                              label=f"{label[k]} ({gmm.weights_[k]:.0%}): mean duration "
                                    f"{gmm.means_[k, 0]:.1f} min, wait {gmm.means_[k, 1]:.0f} min"))
    handles += [
        Line2D([], [], marker="X", markersize=10, linestyle="none", color="grey",
               markeredgecolor="black", label="component means"),
        Line2D([], [], color="grey", linewidth=2.0, label="1σ ellipse (39% of a component)"),
        Line2D([], [], color="grey", linewidth=1.4, linestyle="--", label="2σ ellipse (86%)"),
    ]
    ax.legend(handles=handles, loc="upper left", fontsize=8.5, framealpha=0.92)
    ax.set_xlabel("Eruption duration (minutes)")
    ax.set_ylabel("Waiting time to the next eruption (minutes)")
    ax.set_title("Old Faithful geyser: 2-component Gaussian mixture fitted by gmmfast",
                 fontsize=11.5)
    ax.grid(True, alpha=0.25, zorder=0)
    ax.set_xlim(1.0, 6.0)
    ax.set_ylim(35, 108)
    ax.text(0.99, 0.01, f"data: {X.shape[0]} eruptions, R's datasets::faithful (Härdle 1991)",
            transform=ax.transAxes, ha="right", va="bottom", fontsize=7.5, color="grey")
    try:
        fig.savefig(path)
    except OSError as exc:
        raise CLIError(f"{path}: cannot write the picture ({exc.strerror or exc})") from exc
