"""Model selection in one call: fit every (n_components, covariance_type) and rank by BIC/AIC.

>>> import gmmfast
>>> from gmmfast.datasets import load_old_faithful
>>> X, _ = load_old_faithful()
>>> sel = gmmfast.select_model(X, n_components=range(1, 5), random_state=0)
>>> sel.best_params_["n_components"] >= 2
True

Work shared between the models
------------------------------
X is converted once. The k-means initialisation of a given ``n_components`` does not
depend on the covariance type, so it runs once per ``n_components`` (per ``n_init``
run) and every covariance type starts from its labels: their initial statistics are
computed exactly as the estimator computes them from its own k-means labels, and the
estimator does the rest (the initial M-step under its ``recovery`` policy, then EM).
Every model is therefore *bit-identical* to
``GaussianMixture(n_components, covariance_type=..., random_state=seed, **params).fit(X)``
with the same integer seed (the tests check it).

Why a hook rather than ``weights_init``/``means_init``/``precisions_init``: the estimator
takes precisions and recomputes their Cholesky factors, and inverse-then-Cholesky does not
reproduce the factors of the k-means M-step to the last bit for full and tied
covariances, so the fits would differ from independent ones in the last digits (and, in
rare cases, by one EM iteration at the ``tol`` threshold); the M-step would also bypass
the estimator's ``recovery`` policy. The hook hands the estimator the statistics of the
shared labels and lets it do the rest.
"""

from __future__ import annotations

import copy
import math
import numbers
import warnings
from time import perf_counter
from typing import Iterable, Optional

import numpy as np

from . import _core, ops
from ._compat import ConvergenceWarning
from ._types import COVARIANCE_TYPES
from ._validation import check_random_state, rng_state_bytes, set_rng_state
from .bayesian import EFFECTIVE_WEIGHT
from .mixture import GaussianMixture
from .sources.array import ArraySource

__all__ = ["select_model", "ModelSelection", "effective_components"]

_CRITERIA = ("bic", "aic")
# Estimator parameters that make no sense across models of different sizes, or that
# select_model sets itself.
_REJECTED_PARAMS = ("weights_init", "means_init", "precisions_init", "warm_start")
_RESULT_KEYS = (
    "n_components",
    "covariance_type",
    "bic",
    "aic",
    "log_likelihood",
    "n_iter",
    "converged",
    "fit_seconds",
    "n_effective",
)


def n_parameters(n_components: int, n_features: int, covariance_type: str) -> int:
    """Free parameters of a Gaussian mixture (scikit-learn's count, used by BIC/AIC)."""
    K, D = n_components, n_features
    cov = {
        "full": K * D * (D + 1) / 2.0,
        "diag": K * D,
        "tied": D * (D + 1) / 2.0,
        "spherical": K,
    }[covariance_type]
    return int(cov + D * K + K - 1)


class ModelSelection:
    """Outcome of :func:`select_model`.

    Attributes
    ----------
    results : list of dict
        One per model, in fitting order (n_components outer, covariance type inner), with
        keys n_components, covariance_type, bic, aic, log_likelihood (mean per sample,
        weighted when sample_weight was given), n_iter, converged, fit_seconds (wall time
        of that model's fit; the first covariance type of each n_components also pays for
        the shared k-means initialisation), n_effective (the effective number of
        components: those whose weight is above :data:`gmmfast.bayesian.EFFECTIVE_WEIGHT`
        = 0.01; fewer than n_components when EM emptied components) and error (None, or
        why the model could not be fitted: its bic/aic are then inf).
    best_estimator_ : GaussianMixture
        The fitted model with the lowest criterion. Its ``random_state`` is the integer
        seed every model used, so ``clone(best_estimator_).fit(X)`` refits it exactly.
    best_params_ : dict
        ``{"n_components": ..., "covariance_type": ...}`` of the best model.
    best_index_ : int
        Its position in ``results``.
    criterion : {'bic', 'aic'}
    random_state : int
        The seed used for every model's initialisation.
    n_samples, n_features : int
    """

    def __init__(self, results, best_index, best_estimator, criterion, random_state,
                 n_samples, n_features):
        self.results = results
        self.best_index_ = best_index
        self.best_estimator_ = best_estimator
        best = results[best_index]
        self.best_params_ = {
            "n_components": best["n_components"],
            "covariance_type": best["covariance_type"],
        }
        self.criterion = criterion
        self.random_state = random_state
        self.n_samples = n_samples
        self.n_features = n_features

    def __repr__(self):
        best = self.results[self.best_index_]
        return (
            f"<ModelSelection: {len(self.results)} models, best by {self.criterion.upper()}: "
            f"n_components={best['n_components']}, covariance_type={best['covariance_type']!r}, "
            f"{self.criterion}={best[self.criterion]:.6g}>"
        )

    def __str__(self):
        return self.table()

    def table(self) -> str:
        """The results as an aligned text table; the best model's row starts with '*'."""
        crit = self.criterion.upper()
        header = ["K", "covariance", "BIC", "AIC", "mean log-lik", "iters", "converged", "time (s)", "eff. K"]
        rows = []
        for r in self.results:
            if r.get("error"):
                rows.append([str(r["n_components"]), r["covariance_type"], "-", "-", "-", "-",
                             "failed", f"{r['fit_seconds']:.3f}", "-"])
                continue
            rows.append(
                [
                    str(r["n_components"]),
                    r["covariance_type"],
                    f"{r['bic']:.2f}",
                    f"{r['aic']:.2f}",
                    f"{r['log_likelihood']:.5f}",
                    str(r["n_iter"]),
                    "yes" if r["converged"] else "NO",
                    f"{r['fit_seconds']:.3f}",
                    str(r["n_effective"]),
                ]
            )
        widths = [max(len(header[j]), *(len(row[j]) for row in rows)) for j in range(len(header))]

        def fmt(mark, row):
            # the covariance type is left-aligned, numbers right-aligned
            cells = [c.ljust(w) if j == 1 else c.rjust(w)
                     for j, (c, w) in enumerate(zip(row, widths))]
            return f"{mark} " + "  ".join(cells)

        best = self.results[self.best_index_]
        lines = [
            f"Model selection by {crit}: {len(self.results)} models on {self.n_samples} samples "
            f"x {self.n_features} features (lower is better; * marks the best)",
            "",
            fmt(" ", header),
            fmt(" ", ["-" * w for w in widths]),
        ]
        lines += [fmt("*" if i == self.best_index_ else " ", row) for i, row in enumerate(rows)]
        lines += [
            "",
            f"best: n_components={best['n_components']}, covariance_type="
            f"{best['covariance_type']!r} ({crit} {best[self.criterion]:.2f})",
        ]
        for r in self.results:
            if r.get("error"):
                lines.append(
                    f"failed: n_components={r['n_components']}, covariance_type="
                    f"{r['covariance_type']!r}: {r['error']}"
                )
        return "\n".join(lines)

    def to_dataframe(self):
        """The results as a pandas DataFrame (one row per model, a boolean 'best' column).

        Raises ImportError with installation advice when pandas is not installed.
        """
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError(
                "ModelSelection.to_dataframe() needs pandas, which is not installed: "
                "pip install pandas (or use .results, a list of dicts)"
            ) from exc
        df = pd.DataFrame(self.results, columns=list(_RESULT_KEYS) + ["error"])
        df["best"] = [i == self.best_index_ for i in range(len(self.results))]
        return df


# ----------------------------------------------------------------------- shared init


class _SharedInitCache:
    """k-means labels of one n_components, shared by its covariance types.

    ``labels[i]`` belongs to the i-th initialisation (of ``n_init``). Computing it draws
    from the estimator's random stream, as the estimator's own ``ops.kmeans`` call does;
    a reuse starts from the same stream state (checked; otherwise the labels are
    computed afresh) and leaves the stream where the computation left it, so that every
    later random draw of the fit is the one an independent fit makes.
    """

    def __init__(self):
        self.labels = {}

    def get(self, i, X, n_components, random_state, sample_weight, n_threads):
        before = rng_state_bytes(random_state)
        hit = self.labels.get(i)
        if hit is not None and hit[0] == before:
            set_rng_state(random_state, hit[2])
            return hit[1]
        labels = ops.kmeans(
            X, n_components, random_state=random_state, sample_weight=sample_weight,
            n_threads=n_threads,
        ).labels
        self.labels[i] = (before, labels, copy.deepcopy(random_state))
        return labels


class _SharedInitMixture(GaussianMixture):
    """GaussianMixture whose 'kmeans' initialisation reads shared k-means labels.

    It gives its in-memory data source a k-means that reads the shared labels (the
    source computes the initial statistics from them exactly as from its own k-means
    labels); the other init_params are cheap and left alone. Only used while
    select_model fits: the fitted estimator is turned back into a plain
    GaussianMixture afterwards. The tests compare each model with an independent fit,
    bit for bit.
    """

    _shared_cache: Optional[_SharedInitCache] = None
    _init_calls = 0

    def _array_source(self, X, sample_weight):
        cache = self._shared_cache
        if cache is None:
            return super()._array_source(X, sample_weight)

        def shared_kmeans(X, n_components, random_state, sw, n_threads):
            i = self._init_calls
            self._init_calls = i + 1
            return cache.get(i, X, n_components, random_state, sw, n_threads)

        return ArraySource(X, sample_weight, kmeans=shared_kmeans)


# ---------------------------------------------------------------------------- select


def _as_data(X):
    """X as a C-contiguous float32/float64 2-D array (converted once) and its column
    names when X is a DataFrame with string column names."""
    cols = getattr(X, "columns", None)
    names = None
    if cols is not None:
        cand = list(cols)
        if cand and all(isinstance(c, str) for c in cand):
            names = np.asarray(cand, dtype=object)
    arr = np.asarray(X)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"X must be a real numeric array, got dtype {arr.dtype}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if arr.ndim != 2:
        raise ValueError(
            f"X must be a 2-D array of shape (n_samples, n_features), got {arr.ndim} "
            "dimension(s); reshape 1-D data with X.reshape(-1, 1) for a single feature"
        )
    if arr.shape[0] < 2 or arr.shape[1] < 1:
        raise ValueError(f"X must have at least 2 samples and 1 feature, got shape {arr.shape}")
    arr = np.ascontiguousarray(arr)
    row = _core.first_nonfinite_row(arr)
    if row >= 0:
        raise ValueError(f"Input X contains NaN or infinity (first at row {row}).")
    return arr, names


def _as_int_list(n_components) -> list:
    if isinstance(n_components, numbers.Integral):
        n_components = [n_components]
    values = list(n_components)
    if not values:
        raise ValueError("n_components must list at least one number of components")
    for k in values:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"n_components must be integers >= 1, got {k!r}")
    return [int(k) for k in values]


def _as_type_list(covariance_types) -> list:
    if isinstance(covariance_types, str):
        covariance_types = [covariance_types]
    values = list(covariance_types)
    if not values:
        raise ValueError("covariance_types must list at least one covariance type")
    for t in values:
        if t not in COVARIANCE_TYPES:
            raise ValueError(
                "covariance_types must be among "
                f"{', '.join(map(repr, COVARIANCE_TYPES))}, got {t!r}"
            )
    return values


def _seed(random_state) -> int:
    """The integer seed of every model: random_state itself when it is an int, else one
    draw from it (None: NumPy's global RandomState, as scikit-learn)."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    rs = check_random_state(random_state)
    if isinstance(rs, np.random.Generator):
        return int(rs.integers(0, 2**31 - 1))
    return int(rs.randint(0, 2**31 - 1))


def _is_ill_defined(exc: Exception) -> bool:
    return "ill-defined empirical covariance" in str(exc)


def select_model(
    X,
    n_components: Iterable[int] = range(1, 11),
    covariance_types: Iterable[str] = ("full", "tied", "diag", "spherical"),
    *,
    criterion: str = "bic",
    sample_weight=None,
    random_state=None,
    n_init: int = 1,
    **params,
) -> ModelSelection:
    """Fit a GaussianMixture for every (n_components, covariance_type) and pick the best.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    n_components : iterable of int (or an int), default range(1, 11)
    covariance_types : iterable of {'full', 'tied', 'diag', 'spherical'}, default all four
    criterion : {'bic', 'aic'}, default 'bic'
        The information criterion to minimise (both are computed for every model).
    sample_weight : array-like of shape (n_samples,), optional
        Passed to every fit and to the criteria (weights count as repetitions).
    random_state : int, RandomState, Generator or None
        An int seeds every model's initialisation, so each model is exactly
        ``GaussianMixture(k, covariance_type=t, random_state=seed, n_init=n_init,
        **params).fit(X)``. None or a generator: one seed is drawn from it and used for
        every model (so that all models are compared from comparable initialisations);
        it is recorded in ``ModelSelection.random_state``.
    n_init : int, default 1
        Initialisations per model (the best is kept), as in GaussianMixture.
    **params
        Other GaussianMixture parameters (tol, reg_covar, max_iter, init_params,
        recovery, n_threads...), the same for every model.

    Returns
    -------
    ModelSelection
        ``.results`` (one dict per model), ``.best_estimator_``, ``.best_params_``;
        ``print(selection)`` shows the table.

    Notes
    -----
    A model whose covariance is ill-defined (too many components for the data, for
    instance) or that has more components than samples does not stop the search: its
    row records the error and infinite criteria. Models that did not converge are
    reported together in one ConvergenceWarning.
    """
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion must be 'bic' or 'aic', got {criterion!r}")
    bad = [p for p in _REJECTED_PARAMS if p in params]
    if bad:
        raise ValueError(
            f"select_model does not accept {', '.join(bad)}: every model is initialised "
            "by k-means (pass init_params to change how)"
        )
    ks = _as_int_list(n_components)
    types = _as_type_list(covariance_types)
    Xa, names = _as_data(X)
    n_samples, n_features = Xa.shape
    seed = _seed(random_state)
    if sample_weight is not None:
        sw = np.asarray(sample_weight)
        if sw.dtype.kind not in "fiub" or sw.shape != (n_samples,):
            raise ValueError(
                f"sample_weight must be a numeric array of shape ({n_samples},), "
                f"got {sw.dtype} array of shape {sw.shape}"
            )
        n_eff = float(sw.astype(np.float64).sum())
    else:
        sw = None
        n_eff = float(n_samples)

    results = []
    estimators = []
    not_converged = []
    for k in ks:
        cache = _SharedInitCache()
        for t in types:
            est = _SharedInitMixture(
                n_components=k, covariance_type=t, random_state=seed, n_init=n_init, **params
            )
            est._shared_cache = cache
            row = dict(n_components=k, covariance_type=t, bic=math.inf, aic=math.inf,
                       log_likelihood=-math.inf, n_iter=0, converged=False, fit_seconds=0.0,
                       n_effective=0, error=None)
            start = perf_counter()
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    est.fit(Xa, sample_weight=sw)
            except ValueError as exc:
                if not (_is_ill_defined(exc) or k > n_samples):
                    raise
                row["fit_seconds"] = perf_counter() - start
                row["error"] = str(exc).split("\n")[0]
                results.append(row)
                estimators.append(None)
                continue
            row["fit_seconds"] = perf_counter() - start
            for w in caught:
                if issubclass(w.category, ConvergenceWarning):
                    continue  # summarised below
                warnings.warn_explicit(
                    f"n_components={k}, covariance_type={t!r}: {w.message}",
                    w.category, w.filename, w.lineno,
                )
            _to_plain(est)
            # one scoring pass gives both criteria (bic() and aic() would score twice)
            ll = est.score(Xa, sample_weight=sw)
            p = n_parameters(k, n_features, t)
            row.update(
                bic=-2 * ll * n_eff + p * math.log(n_eff),
                aic=-2 * ll * n_eff + 2 * p,
                log_likelihood=ll,
                n_iter=int(est.n_iter_),
                converged=bool(est.converged_),
                n_effective=effective_components(est.weights_),
            )
            if not est.converged_ and est.max_iter > 0:
                not_converged.append(f"(n_components={k}, {t!r})")
            results.append(row)
            estimators.append(est)

    ok = [i for i, r in enumerate(results) if r["error"] is None]
    if not ok:
        raise ValueError(
            "no model could be fitted: " + "; ".join(
                f"n_components={r['n_components']}, {r['covariance_type']!r}: {r['error']}"
                for r in results
            )
        )
    best = min(ok, key=lambda i: (results[i][criterion], i))
    if not_converged:
        warnings.warn(
            f"{len(not_converged)} of {len(results)} models did not converge: "
            f"{', '.join(not_converged)}. Increase max_iter or tol, or check the data.",
            ConvergenceWarning,
            stacklevel=2,
        )
    best_est = estimators[best]
    if names is not None:
        best_est.feature_names_in_ = names
    return ModelSelection(results, best, best_est, criterion, seed, n_samples, n_features)


def effective_components(weights, threshold: float = EFFECTIVE_WEIGHT) -> int:
    """The effective number of components of a mixture: those whose weight is above
    ``threshold`` (default 0.01, :data:`gmmfast.bayesian.EFFECTIVE_WEIGHT`, the same
    rule as BayesianGaussianMixture.n_effective_components_)."""
    return int(np.sum(np.asarray(weights, dtype=np.float64) > threshold))


def _to_plain(est: GaussianMixture) -> None:
    """Turn a fitted _SharedInitMixture into a plain GaussianMixture (same state)."""
    est.__dict__.pop("_shared_cache", None)
    est.__dict__.pop("_init_calls", None)
    est.__class__ = GaussianMixture
