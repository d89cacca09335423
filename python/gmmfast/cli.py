"""The ``gmmfast`` command-line tool.

::

    gmmfast demo                              # a guided tour on the Old Faithful data
    gmmfast fit DATA -k 3 -o model.npz        # fit a mixture to a .csv/.txt/.npy file
    gmmfast fit big.npy -k 3 --chunk-size 1000000   # stream a .npy larger than memory
    gmmfast predict model.npz DATA [-o labels.npy] [--proba]
    gmmfast score model.npz DATA              # mean log-likelihood, BIC, AIC
    gmmfast info [model.npz]                  # a model file, or how gmmfast was built

Needs NumPy only (the demo draws its picture when matplotlib is installed). User errors
(a missing or malformed file, data of the wrong shape, a corrupt model) print one line
on stderr and exit with status 1; command-line usage errors exit with status 2. Set
GMMFAST_DEBUG=1 to get the full traceback instead.

Layout: this module is the front door (the parser, the fit/predict/score/info commands
and ``main``); data and model files live in :mod:`gmmfast._cli_data`, the progress
display and warning reporting in :mod:`gmmfast._cli_progress`, and ``gmmfast demo`` in
:mod:`gmmfast._cli_demo`. Their names stay importable from here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from time import perf_counter

import numpy as np

# The helper modules never import this one; their names are re-exported here, so that
# ``from gmmfast.cli import ...`` keeps working for everything that used to live here.
from ._cli_data import (  # noqa: F401
    CLIError,
    _check_features,
    _guess_delimiter,
    _is_number,
    _load_model,
    _load_text,
    _load_weights,
    _locate_bad_line,
    _model_metadata,
    _one_line,
    _split,
    _write_array,
    load_data,
)
from ._cli_demo import _ellipse_axes, _plot_demo, _time_per_call, cmd_demo  # noqa: F401
from ._cli_progress import (  # noqa: F401
    _format_seconds,
    _Progress,
    _progress_estimator,
    _report_warnings,
    _threads,
)

__all__ = ["main", "load_data"]

_COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
_INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")


# ---------------------------------------------------------------------------- helpers


def _quiet_feature_names(fn, *a, **k):
    # A model fitted from a DataFrame warns when given a plain array: the CLI always
    # passes plain arrays, so the warning would only be noise here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*feature names.*", category=UserWarning)
        return fn(*a, **k)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _fmt_array(a, precision=4) -> str:
    return np.array2string(
        np.asarray(a, dtype=np.float64), precision=precision, suppress_small=True,
        separator=", ", threshold=12, edgeitems=3, max_line_width=100,
    )


# --------------------------------------------------------------------------- commands


def _streamed_score(model, X, sw, rows, dtype):
    """model.score(X, sample_weight=sw), block by block (memory independent of N)."""
    total = weight = 0.0
    for start in range(0, X.shape[0], rows):
        block = np.asarray(X[start : start + rows])
        if dtype is not None:
            block = block.astype(dtype, copy=False)
        ll = _quiet_feature_names(model.score_samples, block).astype(np.float64)
        if sw is None:
            total += float(ll.sum())
            weight += ll.shape[0]
        else:
            w = np.asarray(sw[start : start + rows], dtype=np.float64)
            total += float(np.dot(w, ll))
            weight += float(w.sum())
    return total / weight, weight


def _bayesian_params(args) -> dict:
    """The BayesianGaussianMixture parameters of ``gmmfast fit --bayesian``; a scalar
    --covariance-prior s is s·I (full, tied), s on every feature (diag) or s (spherical)."""
    if args.mini_batch:
        raise CLIError("--bayesian fits by exact variational inference: --mini-batch does not apply")
    return dict(
        weight_concentration_prior_type=args.weight_concentration_prior_type,
        weight_concentration_prior=args.weight_concentration_prior,
        mean_precision_prior=args.mean_precision_prior,
        degrees_of_freedom_prior=args.degrees_of_freedom_prior,
    )


def _covariance_prior(s, covariance_type, n_features):
    if s is None:
        return None
    if covariance_type in ("full", "tied"):
        return s * np.eye(n_features)
    return np.full(n_features, s) if covariance_type == "diag" else s


def cmd_fit(args) -> int:
    streaming = args.chunk_size is not None or args.mini_batch
    if args.mini_batch and args.checkpoint is not None:
        raise CLIError("--checkpoint applies to exact EM: mini-batch EM (--mini-batch) writes no checkpoint")
    bayes = _bayesian_params(args) if args.bayesian else None
    if not args.bayesian:
        given = [o for o in ("weight_concentration_prior", "mean_precision_prior", "degrees_of_freedom_prior",
                             "covariance_prior") if getattr(args, o) is not None]
        if given:
            raise CLIError(f"--{given[0].replace('_', '-')} is a prior of the Bayesian mixture: add --bayesian")
    if bayes is not None and args.missing == "em":
        raise CLIError("--missing em fits the maximum-likelihood mixture only: drop --bayesian, "
                       "or fill the empty cells first")
    is_npy = os.path.splitext(os.fspath(args.data))[1].lower() == ".npy"
    if streaming and not is_npy:
        raise CLIError(
            f"{args.data}: --chunk-size and --mini-batch stream .npy files; convert the data "
            "once with numpy.save, or fit it without them"
        )
    # a .npy file is memory-mapped: its rows are read from the file as EM passes over
    # them (by the page cache, or block by block when streaming)
    X, names = load_data(args.data, delimiter=args.delimiter, skip_header=args.skip_header,
                         mmap=is_npy, missing=args.missing == "em")
    if args.dtype and not streaming:
        X = X.astype(args.dtype)
    sw = None if args.weights is None else _load_weights(args.weights, X.shape[0], args)
    if args.n_components > X.shape[0]:
        raise CLIError(
            f"-k {args.n_components} components for {X.shape[0]} samples: need at least "
            "as many samples as components"
        )
    progress = None if args.quiet else _Progress(sys.stderr, args.progress_interval, args.n_init)
    if progress is not None:
        progress.init_params = args.init_params
    if bayes is not None:
        from .bayesian import BayesianGaussianMixture

        bayes["covariance_prior"] = _covariance_prior(args.covariance_prior, args.covariance_type, X.shape[1])
    model = _progress_estimator(
        progress,
        None if bayes is None else BayesianGaussianMixture,
        **(bayes or {}),
        n_components=args.n_components,
        covariance_type=args.covariance_type,
        tol=args.tol,
        reg_covar=args.reg_covar,
        max_iter=args.max_iter,
        n_init=args.n_init,
        init_params=args.init_params,
        random_state=args.random_state,
        n_threads=args.threads,
        checkpoint=args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        **({} if bayes is not None else {"missing": args.missing}),
    )
    start = perf_counter()
    block_rows = args.chunk_size or 10_000
    dtype = None
    if streaming:
        native = np.float32 if X.dtype == np.float32 else np.float64
        dtype = np.dtype(args.dtype) if args.dtype else native
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if args.mini_batch:
                from .streaming import row_chunks

                model.fit_minibatch(row_chunks(X, block_rows, sw, dtype=dtype),
                                    max_epochs=args.max_epochs)
            elif streaming:
                from .streaming import row_chunks

                model.fit_chunks(row_chunks(X, block_rows, sw, dtype=dtype), init_size=args.init_size)
            else:
                model.fit(X, sample_weight=sw)
    finally:
        if progress is not None:
            progress._cancel_timer()
    elapsed = perf_counter() - start
    model.__class__ = model.__class__.__bases__[0]  # a plain estimator for saving and scoring
    _report_warnings(caught)
    from ._validation import needs_blockwise_conversion

    if bayes is not None:
        bic = aic = None
    elif streaming or needs_blockwise_conversion(X):
        mean_ll, n_eff = _streamed_score(model, X, sw, block_rows, dtype)
        n_params = model._n_parameters()
        bic = -2 * mean_ll * n_eff + n_params * math.log(n_eff)
        aic = -2 * mean_ll * n_eff + 2 * n_params
    else:
        bic = model.bic(X, sample_weight=sw)
        aic = model.aic(X, sample_weight=sw)

    out = sys.stdout
    unit, limit = ("epochs", "--max-epochs") if args.mini_batch else ("iterations", "max_iter")
    feat = f"  ({', '.join(names)})" if names else ""
    what = "a Bayesian Gaussian mixture (variational inference)" if bayes is not None else "a Gaussian mixture"
    print(
        f"Fitted {what} of {model.n_components} component{'s' if model.n_components != 1 else ''} "
        f"(covariance_type={model.covariance_type!r}) to {args.data}",
        file=out,
    )
    rows = [
        ("samples", f"{X.shape[0]}" + ("" if sw is None else f" (weights from {args.weights})")),
        ("features", f"{X.shape[1]}{feat}"),
        ("converged", (f"yes, after {model.n_iter_} {unit}" if model.converged_
                       else f"NO: stopped at {limit}, {model.n_iter_} {unit}")
         + f" (tol {model.tol:g})"),
        ("lower bound", f"{model.lower_bound_:.6f} (mean log-likelihood per sample)"),
        ("BIC", f"{bic:.4f}" if bic is not None else ""),
        ("AIC", f"{aic:.4f}" if aic is not None else ""),
        ("time", f"{_format_seconds(elapsed)} ({_plural(_threads(args.threads), 'thread')}, "
                 f"{_plural(model.n_init, 'init')})"),
    ]
    if bayes is not None:
        from .bayesian import EFFECTIVE_WEIGHT

        rows[3] = ("lower bound", f"{model.lower_bound_:.6f} (variational lower bound, a total over the samples)")
        rows[4] = ("effective", f"{model.n_effective_components_} of {model.n_components} components "
                                f"(weight above {EFFECTIVE_WEIGHT:g})")
        del rows[5]
    if args.mini_batch:
        rows.insert(3, ("mode", f"mini-batch EM, batches of {args.chunk_size or 10_000} rows, "
                                f"{model.n_batch_iter_} batches"))
    elif streaming:
        rows.insert(3, ("mode", f"streamed in blocks of {args.chunk_size} rows (memory-mapped)"))
    for key, value in rows:
        print(f"  {key:<12} {value}", file=out)
    if args.output:
        try:
            model.save(args.output)
        except OSError as exc:
            raise CLIError(f"{args.output}: cannot write ({exc.strerror or exc})") from exc
        print(f"  {'saved to':<12} {args.output}", file=out)
    else:
        print("  (not saved: pass -o model.npz to keep the model)", file=out)
    return 0


def cmd_predict(args) -> int:
    model = _load_model(args.model)
    X, _ = load_data(args.data, delimiter=args.delimiter, skip_header=args.skip_header,
                     missing=getattr(model, "missing", "error") == "em")
    _check_features(model, X, args.data, args.model)
    if args.proba:
        out, fmt = _quiet_feature_names(model.predict_proba, X), "%.10g"
    else:
        out, fmt = _quiet_feature_names(model.predict, X), "%d"
    if args.output:
        _write_array(args.output, out, fmt)
        what = "membership probabilities" if args.proba else "labels"
        print(f"wrote {what} of {X.shape[0]} samples to {args.output}", file=sys.stderr)
    else:
        np.savetxt(sys.stdout, out, fmt=fmt, delimiter=",")
    return 0


def cmd_score(args) -> int:
    model = _load_model(args.model)
    X, _ = load_data(args.data, delimiter=args.delimiter, skip_header=args.skip_header,
                     missing=getattr(model, "missing", "error") == "em")
    _check_features(model, X, args.data, args.model)
    sw = None if args.weights is None else _load_weights(args.weights, X.shape[0], args)
    ll = _quiet_feature_names(model.score, X, sample_weight=sw)
    # the Bayesian mixture has no BIC/AIC (its score is scikit-learn's expected
    # log-density, not a likelihood with a parameter count)
    criteria = hasattr(model, "bic")
    bic = _quiet_feature_names(model.bic, X, sample_weight=sw) if criteria else None
    aic = _quiet_feature_names(model.aic, X, sample_weight=sw) if criteria else None
    if args.json:
        doc = {"n_samples": int(X.shape[0]), "log_likelihood": ll, "bic": bic, "aic": aic}
        print(json.dumps(doc))
        return 0
    print(f"  {'samples':<20} {X.shape[0]}")
    print(f"  {'mean log-likelihood':<20} {ll:.10g}")
    if criteria:
        print(f"  {'BIC':<20} {bic:.10g}")
        print(f"  {'AIC':<20} {aic:.10g}")
    return 0


def _info_model(args) -> int:
    from .selection import n_parameters

    model = _load_model(args.model)
    meta = _model_metadata(args.model)
    K, D = model.means_.shape
    names = getattr(model, "feature_names_in_", None)
    if args.json:
        doc = {
            "type": type(model).__name__,
            "gmmfast_version": meta.get("gmmfast_version"),
            "format_version": meta.get("format_version"),
            "n_components": int(K),
            "n_features": int(D),
            "covariance_type": model.covariance_type,
            "dtype": str(model.means_.dtype),
            "feature_names": None if names is None else [str(n) for n in names],
            "converged": bool(model.converged_),
            "n_iter": int(model.n_iter_),
            "lower_bound": float(model.lower_bound_),
            "n_parameters": n_parameters(K, D, model.covariance_type),
            "params": {k: v for k, v in model.get_params().items() if not k.endswith("_init")},
            "weights": model.weights_.tolist(),
            "means": model.means_.tolist(),
            "covariances": model.covariances_.tolist(),
        }
        print(json.dumps(doc, indent=2, default=str))
        return 0
    version = meta.get("gmmfast_version")
    written = f" (written by gmmfast {version})" if version else ""
    print(f"{args.model}: gmmfast {type(model).__name__}{written}")
    p = model.get_params()
    rows = [
        ("components", f"{K}"),
        ("features", f"{D}" + (f" ({', '.join(map(str, names))})" if names is not None else "")),
        ("covariance type", model.covariance_type),
        ("dtype", str(model.means_.dtype)),
        ("converged", f"{'yes' if model.converged_ else 'NO'}, after {model.n_iter_} iterations"),
        ("lower bound", f"{model.lower_bound_:.6f} " + (
            "(variational lower bound, a total)" if hasattr(model, "n_effective_components_")
            else "(mean log-likelihood on the training data)")),
        ("parameters", f"{n_parameters(K, D, model.covariance_type)} free (counted by BIC/AIC)"),
        ("fit settings", f"tol={p['tol']:g}, reg_covar={p['reg_covar']:g}, "
                         f"max_iter={p['max_iter']}, n_init={p['n_init']}, "
                         f"init_params={p['init_params']!r}, random_state={p['random_state']!r}"),
    ]
    for key, value in rows:
        print(f"  {key:<16} {value}")
    print()
    shown = min(K, 20)
    width = len(str(K - 1))
    print(f"  {'k':>{width}}  {'weight':>8}  mean")
    order = np.argsort(-model.weights_, kind="stable")[:shown] if K > shown else range(K)
    for k in order:
        print(f"  {k:>{width}}  {model.weights_[k]:8.4f}  {_fmt_array(model.means_[k])}")
    if K > shown:
        print(f"  ... and {K - shown} more (the {shown} heaviest are shown; --json lists all)")
    if D <= 4 and K <= 8:
        print(f"\n  covariances ({model.covariance_type}):")
        cov = model.covariances_
        if model.covariance_type == "tied":
            print("    " + _fmt_array(cov).replace("\n", "\n    "))
        else:
            for k in range(K):
                text = _fmt_array(cov[k]).replace("\n", "\n" + " " * (6 + width))
                print(f"    {k:>{width}}  {text}")
    else:
        print(f"\n  covariances: shape {model.covariances_.shape} (--json prints them)")
    return 0


def _info_build(args) -> int:
    import platform

    from . import build_info

    info = build_info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    omp = info.get("openmp")
    isas = ", ".join(info.get("compiled_isas", []))
    if info.get("cuda_compiled"):
        usable = "a device is available" if info.get("cuda_available") else "no usable device"
        cuda = f"compiled, {usable}"
    else:
        cuda = "not compiled (CPU only)"
    print(f"gmmfast {info.get('version')}")
    rows = [
        ("compiler", info.get("compiler")),
        ("build type", info.get("build_type")),
        ("OpenMP", f"yes ({omp})" if omp else "no (single-threaded)"),
        ("threads", f"{info.get('max_threads')} by default (set OMP_NUM_THREADS or --threads)"),
        ("SIMD", f"{info.get('isa')} in use (compiled: {isas}; override with GMMFAST_ISA)"),
        ("CUDA", cuda),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("NumPy", np.__version__),
    ]
    for key, value in rows:
        print(f"  {key:<11} {value}")
    return 0


def cmd_info(args) -> int:
    return _info_model(args) if args.model else _info_build(args)


# ----------------------------------------------------------------------------- parser


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _nonneg_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _positive_float(text):
    value = _nonneg_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _delimiter(text):
    return {"tab": "\t", "\\t": "\t", "space": None, "whitespace": None}.get(text, text)


def _add_data_options(p):
    p.add_argument("--delimiter", type=_delimiter, default=None, metavar="SEP",
                   help="column separator of a text file (default: guessed; 'tab', 'space')")
    p.add_argument("--skip-header", type=_nonneg_int, default=None, metavar="N",
                   help="skip the first N lines of a text file (default: one header line is "
                        "skipped when the first line is not numeric)")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit status 2), pointing to --help."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="gmmfast",
        description="Fast, exact Gaussian mixture models from the command line.",
        epilog="New here? Run `gmmfast demo`. DATA files are .npy arrays or CSV/text files "
               "(one sample per row; '#' starts a comment).",
    )
    parser.add_argument("--version", action="version", version=f"gmmfast {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("fit", help="fit a Gaussian mixture to a data file",
                       description="Fit a Gaussian mixture by EM and save it.")
    p.add_argument("data", metavar="DATA", help="data file (.npy, .csv, .txt)")
    p.add_argument("-k", "--n-components", type=_positive_int, required=True, metavar="N",
                   help="number of mixture components")
    p.add_argument("-o", "--output", metavar="MODEL", help="write the fitted model here (.npz)")
    p.add_argument("--covariance-type", choices=_COVARIANCE_TYPES, default="full")
    p.add_argument("--max-iter", type=_nonneg_int, default=100, metavar="N")
    p.add_argument("--tol", type=_nonneg_float, default=1e-3, metavar="X",
                   help="convergence threshold on the mean log-likelihood (default 1e-3)")
    p.add_argument("--n-init", type=_positive_int, default=1, metavar="N",
                   help="initialisations, the best is kept (default 1)")
    p.add_argument("--init-params", choices=_INIT_PARAMS, default="kmeans")
    p.add_argument("--reg-covar", type=_nonneg_float, default=1e-6, metavar="X",
                   help="added to the covariance diagonals (default 1e-6)")
    p.add_argument("--random-state", type=int, default=None, metavar="SEED")
    p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                   help="OpenMP threads (default: OMP_NUM_THREADS or all cores)")
    p.add_argument("--dtype", choices=("float64", "float32"), default=None,
                   help="fit in this precision (default: the data's; text is float64)")
    p.add_argument("--weights", metavar="FILE", help="per-sample weights, one per row of DATA")
    p.add_argument("--checkpoint", metavar="FILE", default=None,
                   help="write the fit's state to FILE every --checkpoint-every iterations; run "
                        "the same command again after an interruption to resume (not with "
                        "--mini-batch; FILE is removed when the fit ends)")
    p.add_argument("--missing", choices=("error", "em"), default="error",
                   help="em: empty cells and NaN are missing values, fitted by exact EM "
                        "(a model fitted so also predicts and scores rows with missing values); "
                        "default: an error")
    p.add_argument("--checkpoint-every", type=_positive_int, default=10, metavar="N",
                   help="iterations between checkpoints (default 10)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--progress-interval", type=_nonneg_float, default=1.0, metavar="SECONDS",
                   help=argparse.SUPPRESS)
    b = p.add_argument_group(
        "Bayesian mixture",
        "With --bayesian, fit scikit-learn's BayesianGaussianMixture (variational inference): "
        "-k is an upper bound, and a small --weight-concentration-prior switches surplus "
        "components off (the output counts the effective ones). The other priors default "
        "to scikit-learn's (the data's mean and covariance).")
    b.add_argument("--bayesian", action="store_true", help="variational Bayesian mixture")
    b.add_argument("--weight-concentration-prior-type", choices=("dirichlet_process", "dirichlet_distribution"),
                   default="dirichlet_process")
    b.add_argument("--weight-concentration-prior", type=_positive_float, default=None, metavar="X",
                   help="concentration of the weights' prior (default 1/k; smaller prunes more)")
    b.add_argument("--mean-precision-prior", type=_positive_float, default=None, metavar="X",
                   help="precision of the means' prior (default 1)")
    b.add_argument("--degrees-of-freedom-prior", type=_positive_float, default=None, metavar="X",
                   help="degrees of freedom of the Wishart prior (> n_features - 1; default n_features)")
    b.add_argument("--covariance-prior", type=_positive_float, default=None, metavar="X",
                   help="X times the identity as the Wishart prior's covariance (default: the data's)")
    g = p.add_argument_group(
        "large .npy files",
        "A .npy file is memory-mapped, never read whole. With --chunk-size, every EM "
        "iteration streams it in blocks of rows (memory: one block plus the "
        "initialisation sample, whatever the file's size; k-means runs on a random sample "
        "of --init-size rows). With --mini-batch, online EM runs over the blocks instead.")
    g.add_argument("--chunk-size", type=_positive_int, default=None, metavar="ROWS",
                   help="stream the file in blocks of ROWS rows (exact EM)")
    g.add_argument("--init-size", type=_positive_int, default=None, metavar="ROWS",
                   help="rows of the random sample k-means initialises from when streaming "
                        "(default 100000, at most 64 MiB)")
    g.add_argument("--mini-batch", action="store_true",
                   help="mini-batch (online) EM over blocks of --chunk-size rows (default 10000)")
    g.add_argument("--max-epochs", type=_positive_int, default=10, metavar="N",
                   help="passes over the data with --mini-batch (default 10)")
    _add_data_options(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="component labels (or probabilities) of data",
                       description="Assign each row of DATA to a component of MODEL.")
    p.add_argument("model", metavar="MODEL", help="model file written by `gmmfast fit`")
    p.add_argument("data", metavar="DATA")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write to FILE (.npy, .csv, .tsv or text) instead of stdout")
    p.add_argument("--proba", action="store_true",
                   help="membership probabilities (one column per component) instead of labels")
    _add_data_options(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("score", help="mean log-likelihood, BIC and AIC of data",
                       description="Score DATA under MODEL.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--weights", metavar="FILE", help="per-sample weights")
    p.add_argument("--json", action="store_true", help="print a JSON object")
    _add_data_options(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("info", help="describe a model file, or this gmmfast build",
                       description="Describe MODEL; without MODEL, how gmmfast was built.")
    p.add_argument("model", metavar="MODEL", nargs="?")
    p.add_argument("--json", action="store_true", help="print JSON (with every parameter)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="fit the Old Faithful data and draw the result",
                       description="A guided tour: fits a 2-component mixture to the Old "
                                   "Faithful geyser data shipped with gmmfast, compares its "
                                   "speed with the NumPy reference and draws a picture.")
    p.add_argument("--plot", metavar="PATH",
                   help="where to write the picture (default: old_faithful_gmm.png)")
    p.add_argument("--no-plot", action="store_true", help="do not draw the picture")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    """Run the gmmfast command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if os.environ.get("GMMFAST_DEBUG"):
        return args.func(args)
    from .io import ModelFileError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("gmmfast: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`gmmfast predict ... | head`): not an error worth a message
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (CLIError, ModelFileError, FileNotFoundError) as exc:
        print(f"gmmfast: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except (ValueError, OSError, MemoryError) as exc:
        print(f"gmmfast {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
