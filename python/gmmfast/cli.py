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
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import warnings
from time import perf_counter
from typing import Optional

import numpy as np

__all__ = ["main", "load_data"]

_COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
_INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")


class CLIError(Exception):
    """A user error: reported as one line on stderr, exit status 1."""


# ------------------------------------------------------------------------- data files


def _split(line: str, delimiter: Optional[str]) -> list:
    return line.split(delimiter) if delimiter is not None else line.split()


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _guess_delimiter(line: str) -> Optional[str]:
    for d in (",", "\t", ";"):
        if d in line:
            return None if d == "\t" else d  # tabs: any whitespace
    return None


def load_data(path, *, delimiter: Optional[str] = None, skip_header: Optional[int] = None,
              what: str = "data", mmap: bool = False):
    """Read a data matrix from a .npy file or a delimited text file (CSV, TSV, spaces).

    With ``mmap`` a .npy file is memory-mapped (read-only), not read: the checks read it
    block by block, so a file larger than memory can be fitted.

    Text files: lines starting with '#' are comments; the delimiter is guessed from the
    first line (',' then tab then ';', else whitespace) unless given; a first line that
    is not numeric is taken as a header of column names unless ``skip_header`` (a number
    of lines to skip) is given.

    Returns ``(X, names)``: a 2-D array (a single column for 1-D input) and the header's
    column names (None without a header). Raises CLIError with a one-line message.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CLIError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CLIError(f"{path}: is a directory, expected a {what} file")
    ext = os.path.splitext(path)[1].lower()
    names = None
    if ext == ".npy":
        try:
            X = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
        except (OSError, ValueError, EOFError) as exc:
            raise CLIError(f"{path}: not a readable .npy array ({_one_line(exc)})") from exc
    elif ext == ".npz":
        raise CLIError(
            f"{path}: is an .npz archive; {what} must be a .npy array or a CSV/text file"
        )
    else:
        X, names = _load_text(path, delimiter, skip_header)
    if X.dtype.kind not in "fiub":
        raise CLIError(f"{path}: {what} must be numeric, got an array of dtype {X.dtype}")
    if X.ndim == 1:
        X = X.reshape(-1, 1)
    if X.ndim != 2:
        raise CLIError(
            f"{path}: {what} must be a 2-D array (samples x features), got shape {X.shape}"
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise CLIError(f"{path}: no {what} (shape {X.shape})")
    if X.dtype.kind == "f":
        from . import _core

        native = X.dtype if X.dtype in (np.float32, np.float64) else np.float64
        # block by block: a memory-mapped file that needs converting is never copied whole
        block = max(1, (1 << 22) // max(1, X.shape[1])) if isinstance(X, np.memmap) else X.shape[0]
        for start in range(0, X.shape[0], block):
            row = _core.first_nonfinite_row(np.ascontiguousarray(X[start : start + block], dtype=native))
            if row >= 0:
                raise CLIError(
                    f"{path}: data row {start + row + 1} contains NaN or infinity "
                    "(missing values are not supported: remove or impute them)"
                )
    return X, names


def _load_text(path, delimiter, skip_header):
    first, first_index = None, 0
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            for first_index, line in enumerate(fh):
                if line.strip() and not line.lstrip().startswith("#"):
                    first = line.strip()
                    break
    except OSError as exc:
        raise CLIError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if first is None:
        raise CLIError(f"{path}: no data (the file is empty or only comments)")
    if "\x00" in first:
        raise CLIError(f"{path}: looks like a binary file; data must be .npy or text (CSV)")
    if delimiter is None:
        delimiter = _guess_delimiter(first)
    names = None
    if skip_header is None:
        fields = _split(first, delimiter)
        skiprows = first_index
        if not all(_is_number(f) for f in fields):
            names = [f.strip().strip("\"'") for f in fields]
            skiprows = first_index + 1
    else:
        skiprows = skip_header
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": checked below
            X = np.loadtxt(
                path, delimiter=delimiter, skiprows=skiprows, comments="#", ndmin=2,
                dtype=np.float64, encoding="utf-8",
            )
    except ValueError as exc:
        where = _locate_bad_line(path, delimiter, skiprows) or _one_line(exc)
        raise CLIError(f"{path}: {where}") from exc
    except UnicodeDecodeError as exc:
        raise CLIError(f"{path}: not a UTF-8 text file; data must be .npy or text (CSV)") from exc
    if X.size == 0:
        raise CLIError(f"{path}: no data rows")
    if names is not None and len(names) != X.shape[1]:
        names = None
    return X, names


def _locate_bad_line(path, delimiter, skiprows) -> Optional[str]:
    """'line N: ...' for the first malformed line (only run when parsing failed)."""
    n_cols = None
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if lineno <= skiprows:
                continue
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            fields = [f.strip() for f in _split(text, delimiter)]
            for j, f in enumerate(fields, start=1):
                if not _is_number(f):
                    shown = f if f else "an empty field"
                    return f"line {lineno}, column {j}: {shown!r} is not a number" if f else (
                        f"line {lineno}, column {j}: {shown} (missing value)"
                    )
            if n_cols is None:
                n_cols = len(fields)
            elif len(fields) != n_cols:
                return f"line {lineno} has {len(fields)} columns, the lines before it have {n_cols}"
    return None


def _load_weights(path, n_samples, args) -> np.ndarray:
    w, _ = load_data(path, delimiter=args.delimiter, what="weights")
    if w.shape[1] != 1:
        raise CLIError(f"{path}: weights must be a single column, got {w.shape[1]} columns")
    w = w[:, 0]
    if w.shape[0] != n_samples:
        raise CLIError(f"{path}: {w.shape[0]} weights for {n_samples} samples")
    return w


def _write_array(path, arr, fmt):
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            np.save(path, arr)
        else:
            delimiter = {".csv": ",", ".tsv": "\t"}.get(ext, " ")
            np.savetxt(path, arr, fmt=fmt, delimiter=delimiter)
    except OSError as exc:
        raise CLIError(f"{path}: cannot write ({exc.strerror or exc})") from exc


# ---------------------------------------------------------------------------- helpers


def _one_line(exc) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _load_model(path):
    from .mixture import load as load_model

    path = os.fspath(path)
    if os.path.isdir(path):
        raise CLIError(f"{path}: is a directory, expected a model file (.npz)")
    return load_model(path)


def _model_metadata(path) -> dict:
    """The JSON metadata of a model file (already validated by load_model)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return json.loads(str(archive["metadata"]))
    except Exception:  # informative only
        return {}


def _check_features(model, X, data_path, model_path):
    D = int(model.n_features_in_)
    if X.shape[1] != D:
        raise CLIError(
            f"{data_path}: has {X.shape[1]} feature column(s), but the model {model_path} "
            f"was fitted on {D}"
        )


def _quiet_feature_names(fn, *a, **k):
    # A model fitted from a DataFrame warns when given a plain array: the CLI always
    # passes plain arrays, so the warning would only be noise here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*feature names.*", category=UserWarning)
        return fn(*a, **k)


def _threads(n_threads) -> int:
    from . import _core

    return int(n_threads) if n_threads else int(_core.build_info().get("max_threads", 1))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _format_seconds(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def _fmt_array(a, precision=4) -> str:
    return np.array2string(
        np.asarray(a, dtype=np.float64), precision=precision, suppress_small=True,
        separator=", ", threshold=12, edgeitems=3, max_line_width=100,
    )


# ------------------------------------------------------------------------ progress


class _Progress:
    """Reports a long EM fit on stderr: at most one line per ``interval`` seconds."""

    def __init__(self, stream, interval=1.0, n_init=1):
        self.stream = stream
        self.interval = interval
        self.n_init = n_init
        self.lower_bound = math.nan
        self.init = 0
        self.start = self.last = perf_counter()
        self.printed = False

    def begin(self, init):
        self.init = init
        self.printed = False
        self.start = self.last = perf_counter()
        # k-means runs before the first iteration, in native code that releases the
        # GIL: a timer thread says so when it takes long.
        self._cancel_timer()
        self._timer = threading.Timer(self.interval, self._initialising)
        self._timer.daemon = True
        self._timer.start()

    _timer = None

    def _cancel_timer(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _initialising(self):
        self.printed = True
        which = f"init {self.init + 1}/{self.n_init}: " if self.n_init > 1 else ""
        method = "k-means" if self.init_params == "kmeans" else self.init_params
        self.stream.write(f"  {which}initialising ({method})...\n")
        self.stream.flush()

    init_params = "kmeans"

    def iteration(self, n_iter, change):
        if n_iter == 1:
            self._cancel_timer()
        now = perf_counter()
        if now - self.last < self.interval:
            return
        self.last = now
        self.printed = True
        which = f"init {self.init + 1}/{self.n_init}, " if self.n_init > 1 else ""
        change_text = f"change {change:.2e}" if math.isfinite(change) else "first iteration"
        self.stream.write(
            f"  {which}iteration {n_iter}: lower bound {self.lower_bound:.6f} "
            f"({change_text}), {now - self.start:.1f} s\n"
        )
        self.stream.flush()

    def end(self, lower_bound, converged):
        self._cancel_timer()
        if self.printed:
            which = f"init {self.init + 1}/{self.n_init} " if self.n_init > 1 else ""
            self.stream.write(
                f"  {which}{'converged' if converged else 'stopped (max_iter)'}: lower bound "
                f"{lower_bound:.6f}, {perf_counter() - self.start:.1f} s\n"
            )
            self.stream.flush()


def _progress_estimator(progress: Optional[_Progress], **params):
    """A GaussianMixture that reports to ``progress`` through the estimator's verbose
    hooks (the lower bound is read from the E-step statistics in the M-step hook)."""
    from .mixture import GaussianMixture

    class _ProgressMixture(GaussianMixture):
        def _verbose_init_begin(self, n_init, *a, **k):
            super()._verbose_init_begin(n_init, *a, **k)
            if progress is not None:
                progress.begin(n_init)

        def _on_iteration(self, n_iter, lower_bound, change):
            if progress is not None:
                progress.lower_bound = lower_bound
            super()._on_iteration(n_iter, lower_bound, change)

        def _verbose_iter_end(self, n_iter, diff_ll, *a, **k):
            super()._verbose_iter_end(n_iter, diff_ll, *a, **k)
            if progress is not None:
                progress.iteration(n_iter, diff_ll)

        def _verbose_init_end(self, lb, converged, *a, **k):
            super()._verbose_init_end(lb, converged, *a, **k)
            if progress is not None:
                progress.end(lb, converged)

    return _ProgressMixture(**params)


def _report_warnings(caught, prefix="warning"):
    seen = set()
    for w in caught:
        msg = _one_line(w.message)
        if msg not in seen:
            seen.add(msg)
            print(f"gmmfast: {prefix}: {msg}", file=sys.stderr)


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


def cmd_fit(args) -> int:
    from .mixture import GaussianMixture

    streaming = args.chunk_size is not None or args.mini_batch
    is_npy = os.path.splitext(os.fspath(args.data))[1].lower() == ".npy"
    if streaming and not is_npy:
        raise CLIError(
            f"{args.data}: --chunk-size and --mini-batch stream .npy files; convert the data "
            "once with numpy.save, or fit it without them"
        )
    # a .npy file is memory-mapped: its rows are read from the file as EM passes over
    # them (by the page cache, or block by block when streaming)
    X, names = load_data(args.data, delimiter=args.delimiter, skip_header=args.skip_header,
                         mmap=is_npy)
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
    model = _progress_estimator(
        progress,
        n_components=args.n_components,
        covariance_type=args.covariance_type,
        tol=args.tol,
        reg_covar=args.reg_covar,
        max_iter=args.max_iter,
        n_init=args.n_init,
        init_params=args.init_params,
        random_state=args.random_state,
        n_threads=args.threads,
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
    model.__class__ = GaussianMixture  # a plain estimator for saving and scoring
    _report_warnings(caught)
    from ._validation import needs_blockwise_conversion

    if streaming or needs_blockwise_conversion(X):
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
    print(
        f"Fitted a Gaussian mixture of {model.n_components} component{'s' if model.n_components != 1 else ''} "
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
        ("BIC", f"{bic:.4f}"),
        ("AIC", f"{aic:.4f}"),
        ("time", f"{_format_seconds(elapsed)} ({_plural(_threads(args.threads), 'thread')}, "
                 f"{_plural(model.n_init, 'init')})"),
    ]
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
    X, _ = load_data(args.data, delimiter=args.delimiter, skip_header=args.skip_header)
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
    X, _ = load_data(args.data, delimiter=args.delimiter, skip_header=args.skip_header)
    _check_features(model, X, args.data, args.model)
    sw = None if args.weights is None else _load_weights(args.weights, X.shape[0], args)
    ll = _quiet_feature_names(model.score, X, sample_weight=sw)
    bic = _quiet_feature_names(model.bic, X, sample_weight=sw)
    aic = _quiet_feature_names(model.aic, X, sample_weight=sw)
    if args.json:
        doc = {"n_samples": int(X.shape[0]), "log_likelihood": ll, "bic": bic, "aic": aic}
        print(json.dumps(doc))
        return 0
    print(f"  {'samples':<20} {X.shape[0]}")
    print(f"  {'mean log-likelihood':<20} {ll:.10g}")
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
            "type": "GaussianMixture",
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
    print(f"{args.model}: gmmfast GaussianMixture{written}")
    p = model.get_params()
    rows = [
        ("components", f"{K}"),
        ("features", f"{D}" + (f" ({', '.join(map(str, names))})" if names is not None else "")),
        ("covariance type", model.covariance_type),
        ("dtype", str(model.means_.dtype)),
        ("converged", f"{'yes' if model.converged_ else 'NO'}, after {model.n_iter_} iterations"),
        ("lower bound", f"{model.lower_bound_:.6f} (mean log-likelihood on the training data)"),
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


# ------------------------------------------------------------------------------- demo


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
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--progress-interval", type=_nonneg_float, default=1.0, metavar="SECONDS",
                   help=argparse.SUPPRESS)
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
    except (ValueError, OSError) as exc:
        print(f"gmmfast {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
