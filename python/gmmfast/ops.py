"""Native Gaussian-mixture primitives for NumPy arrays.

Every EM computation in gmmfast is built from three kernels (see docs/architecture.md):

- :func:`log_prob` — log-densities of samples: per-sample log-likelihood,
  log-responsibilities, or per-component weighted log-densities;
- :func:`em_stats` — the fused E-step and sufficient statistics, in one pass over X,
  centred at per-component centres (normally the current means);
- :func:`finalize` — statistics to parameters (scikit-learn's M-step, in float64).

plus :func:`em` (EM from given initial parameters) and k-means for initialisation
(:func:`kmeans`, :func:`kmeans_plusplus`, :func:`kmeans_lloyd`).

Parameters use scikit-learn's precision-Cholesky parameterisation; the shapes are listed
in :mod:`gmmfast.reference`, which implements the same functions in readable NumPy.
float32 data run float32 kernels (statistics are accumulated in float64); any other real
dtype is converted to float64. The GIL is released while the kernels run, and Ctrl-C
interrupts them between row blocks.

Example
-------
>>> import numpy as np, gmmfast.ops as ops
>>> X = np.random.default_rng(0).normal(size=(1000, 2))
>>> init = ops.initial_params(X, 3, "full", random_state=0)
>>> result = ops.em(X, init)
>>> result.params.weights.shape, result.converged
((3,), True)
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import _core
from ._types import EMResult, EMStats, MixtureParams, param_shape
from ._validation import (
    as_data,
    as_param,
    check_covariance_type,
    check_random_state,
    n_threads_arg,
    seed_from,
)

__all__ = [
    "log_prob",
    "em_stats",
    "finalize",
    "precision_cholesky",
    "em",
    "initial_params",
    "kmeans",
    "kmeans_plusplus",
    "kmeans_lloyd",
    "KMeansResult",
    "check_fit_memory",
    "fit_memory_parts",
]


def _float_dtype(dtype) -> np.dtype:
    dtype = np.dtype(dtype)
    return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)


def _check_weight_sum(sample_weight, non_negative: bool = False) -> None:
    """Fitting divides by Σ g_i: a zero or negative total (and, for k-means, a negative
    weight) is a user error, raised here before it becomes a ZeroDivisionError or a
    negative/NaN tolerance. Shape and finiteness are checked by the native layer."""
    if sample_weight is None:
        return
    g = as_param(sample_weight, "sample_weight", np.float64)
    if non_negative and np.any(g < 0):
        i = int(np.argmax(g < 0))
        raise ValueError(f"sample_weight must be non-negative, but entry {i} is {g.flat[i]}")
    total = float(np.sum(g))
    if total <= 0:  # NaN passes on to the native check ("must be finite")
        raise ValueError(f"sample_weight must have a positive sum, got {total}")


def log_prob(
    X,
    log_weights,
    means,
    precisions_cholesky,
    covariance_type: str = "full",
    output: str = "sample",
    *,
    n_threads: Optional[int] = None,
) -> np.ndarray:
    """Log-densities of the rows of X under a Gaussian mixture.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
    log_weights : array of shape (n_components,)
        log π_k; -inf marks a component of weight zero.
    means : array of shape (n_components, n_features)
    precisions_cholesky : array
        full (K, D, D) upper triangular, tied (D, D), diag (K, D), spherical (K,).
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    output : {'sample', 'log_resp', 'weighted'}
        'sample': (n_samples,) log p(x_i); 'log_resp': (n_samples, n_components)
        log p(k | x_i); 'weighted': (n_samples, n_components) log π_k + log N(x_i | k).
    n_threads : int, optional
        OpenMP threads (default: OMP_NUM_THREADS or all cores).

    Returns
    -------
    ndarray in X's floating dtype.

    Raises
    ------
    ValueError
        for shapes that do not match, invalid parameters (non-finite, a precision
        Cholesky factor that is not upper triangular with a positive diagonal), or a
        row of X whose log-likelihood is not finite (NaN/inf in X, overflow).
    """
    check_covariance_type(covariance_type)
    X = as_data(X)
    dt = X.dtype
    return _core.log_prob(
        X,
        as_param(log_weights, "log_weights", dt),
        as_param(means, "means", dt),
        as_param(precisions_cholesky, "precisions_cholesky", dt),
        covariance_type,
        output,
        n_threads_arg(n_threads),
    )


def em_stats(
    X,
    log_weights,
    means,
    precisions_cholesky,
    covariance_type: str = "full",
    *,
    centres=None,
    sample_weight=None,
    resp=None,
    labels=None,
    n_threads: Optional[int] = None,
) -> EMStats:
    """E-step and sufficient statistics in one pass over X (see :class:`EMStats`).

    Parameters
    ----------
    X, log_weights, means, precisions_cholesky, covariance_type
        as in :func:`log_prob`. When ``resp`` or ``labels`` is given, only the number of
        components (from ``means``) is read from the mixture.
    centres : array of shape (n_components, n_features), optional
        Centres of the statistics, default ``means``. Centring at the current means
        keeps float32 accurate on data far from the origin.
    sample_weight : array of shape (n_samples,), optional
        Per-sample weights g_i (may be negative: the autograd backward uses this).
    resp : array of shape (n_samples, n_components), optional
        Responsibilities to use instead of the E-step (rows need not sum to one).
    labels : int array of shape (n_samples,), optional
        Hard assignments to use instead of the E-step.

    Returns
    -------
    EMStats
        float64 statistics; ``log_likelihood`` is 0.0 when ``resp``/``labels`` is given.
        Nothing of size n_samples × n_components is allocated.
    """
    check_covariance_type(covariance_type)
    X = as_data(X)
    dt = X.dtype
    means_a = as_param(means, "means", dt)
    if means_a.ndim != 2:
        raise ValueError(f"means must have shape (n_components, n_features), got {means_a.shape}")
    K = means_a.shape[0]
    estep = resp is None and labels is None
    if centres is None:
        centres_a = means_a
    else:
        centres_a = as_param(centres, "centres", dt)
    ll, wsum, nk, s1, s2 = _core.em_stats(
        X,
        as_param(log_weights, "log_weights", dt) if estep else None,
        means_a if estep else None,
        as_param(precisions_cholesky, "precisions_cholesky", dt) if estep else None,
        covariance_type,
        centres_a,
        None if sample_weight is None else as_param(sample_weight, "sample_weight", dt),
        None if resp is None else as_param(resp, "resp", dt),
        None if labels is None else np.asarray(labels),
        K,
        n_threads_arg(n_threads),
    )
    return EMStats(covariance_type, centres_a.astype(np.float64), ll, wsum, nk, s1, s2, str(X.dtype))


def finalize(stats: EMStats, reg_covar: float = 1e-6, dtype=None) -> MixtureParams:
    """Statistics to parameters: scikit-learn's M-step, computed in float64.

    ``n_k = nk + 10·eps(dtype)`` (scikit-learn's guard against empty components),
    weights ``n_k / Σ n_k``, means ``(Σ r x) / n_k``, covariances about the new means
    plus ``reg_covar`` on the diagonal, and the precision Cholesky factors.

    Parameters
    ----------
    stats : EMStats
    reg_covar : float, default 1e-6
    dtype : float32 or float64, optional
        The data's dtype, which sets the epsilon and the error message as in
        scikit-learn; default: the dtype recorded in ``stats``.

    Raises
    ------
    ValueError
        with scikit-learn's message when a covariance is not positive definite; for
        float32 data, also when the parameters are beyond float32's range (a model of
        float32 data is kept in float32, where they would become inf).
    """
    if not isinstance(stats, EMStats):
        raise ValueError(f"stats must be an EMStats, got {type(stats).__name__}")
    dtype = _float_dtype(stats.dtype if dtype is None else dtype)
    nk_eps = 10.0 * float(np.finfo(dtype).eps)
    weights, means, covariances, prec_chol, log_det = _core.finalize(
        stats.covariance_type,
        stats.nk,
        stats.s1,
        stats.s2,
        stats.centres,
        float(reg_covar),
        nk_eps,
        dtype == np.float32,
    )
    if dtype == np.float32:
        _check_float32_range(means, covariances, prec_chol)
    return MixtureParams(stats.covariance_type, weights, means, covariances, prec_chol, log_det)


def _check_float32_range(means, covariances, prec_chol) -> None:
    """float32 data get float32 parameters (scikit-learn's convention): refuse values that
    would become inf there (data beyond ~1e19 have covariances beyond 3.4e38; the
    precisions U Uᵀ of tiny covariances overflow likewise) instead of returning them."""
    big = float(np.finfo(np.float32).max)
    D = means.shape[1]
    if (np.max(np.abs(means)) > big or np.max(np.abs(covariances)) > big
            or D * float(np.max(np.abs(prec_chol))) ** 2 > big):
        raise ValueError(
            "The fitted parameters of this float32 data exceed float32's range (covariances or "
            "precisions beyond 3.4e38): float32 arithmetic overflowed. Scale the data, or pass "
            "float64 data."
        )


def precision_cholesky(covariances, covariance_type: str, *, n_features: Optional[int] = None):
    """Precision Cholesky factors and their log-determinants from covariances.

    Returns ``(precisions_cholesky, log_det_cholesky)`` in float64. For tied covariance
    the log-determinant is a 0-d array; spherical needs ``n_features``.
    """
    check_covariance_type(covariance_type)
    cov = np.asarray(covariances, dtype=np.float64)
    if covariance_type == "spherical":
        if n_features is None:
            raise ValueError("n_features is required for spherical covariances")
    prec, log_det = _core.precision_cholesky(cov, covariance_type, False)
    if covariance_type == "spherical":
        log_det = log_det * n_features
    if covariance_type == "tied":
        log_det = np.asarray(log_det[0])
    return prec, log_det


def em(
    X,
    init: MixtureParams,
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    reg_covar: float = 1e-6,
    sample_weight=None,
    n_threads: Optional[int] = None,
    callback: Optional[Callable[[int, float, float], None]] = None,
) -> EMResult:
    """EM from given parameters, with scikit-learn's loop and convergence rule.

    Each iteration is one :func:`em_stats` pass centred at the current means followed by
    :func:`finalize`. The lower bound of an iteration is the (weighted) mean
    log-likelihood *before* its M-step, as in scikit-learn; EM stops when it changes by
    less than ``tol``. ``callback(n_iter, lower_bound, change)`` runs after each
    iteration (for progress reporting).

    float32 data run float32 kernels; the returned parameters are float64.
    """
    X = as_data(X)
    dtype = X.dtype
    if not isinstance(init, MixtureParams):
        raise ValueError(f"init must be a MixtureParams, got {type(init).__name__}")
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    _check_weight_sum(sample_weight)
    params = init
    lower_bound = -np.inf
    lower_bounds = []
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        prev = lower_bound
        with np.errstate(divide="ignore"):
            log_weights = np.log(params.weights)
        stats = em_stats(
            X,
            log_weights,
            params.means,
            params.precisions_cholesky,
            params.covariance_type,
            sample_weight=sample_weight,
            n_threads=n_threads,
        )
        lower_bound = stats.mean_log_likelihood
        params = finalize(stats, reg_covar, dtype)
        lower_bounds.append(lower_bound)
        change = lower_bound - prev
        if callback is not None:
            callback(n_iter, lower_bound, change)
        if abs(change) < tol:
            converged = True
            break
    return EMResult(params, float(lower_bound), lower_bounds, n_iter, converged)


# ------------------------------------------------------------- resource limits (issue 8)


_INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")


def check_fit_memory(
    n_samples: int,
    n_features: int,
    n_components: int,
    covariance_type: str = "full",
    *,
    dtype=np.float64,
    n_threads: Optional[int] = None,
    init_params: str = "kmeans",
    init_rows: Optional[int] = None,
    initialise: bool = True,
    n_copies: int = 2,
    held_rows: int = 0,
    op: str = "GaussianMixture.fit",
) -> None:
    """Raises MemoryError, with the size and what to do, when fitting a mixture of this
    shape by EM would need more memory than is available (``/proc/meminfo``
    MemAvailable and the cgroup limit on Linux, or ``GMMFAST_MEMORY_LIMIT``); returns
    None otherwise.

    Counts what a fit allocates besides the data (:func:`fit_memory_parts`): the
    per-thread statistics accumulators of :func:`em_stats` (``n_threads·K·D²`` float64
    for full covariances, ``n_samples`` being the rows of one pass), the merged
    statistics, the parameters (weights, means, covariances, precisions and their
    Cholesky factors in float64, ``n_copies`` times: the EM driver keeps 3, the
    current, the best run's and the initial or next one), the parameters in kernel
    layout and the fitted attributes in ``dtype``, and, with ``initialise``, the state
    of ``init_params`` on the ``init_rows`` rows it sees (default ``n_samples``):
    k-means' centres, labels, distance bounds and per-thread sums, k-means++'s distances,
    or blocks of random responsibilities; and ``held_rows`` rows held besides the data
    (the initialisation sample of data in parts). Cheap: the EM driver calls it before
    initialising every fit, so that an impossible one fails at once. The native kernels
    check their own buffers too.
    """
    parts, advice = fit_memory_parts(
        n_samples, n_features, n_components, covariance_type, dtype=dtype, n_threads=n_threads,
        init_params=init_params, init_rows=init_rows, initialise=initialise, n_copies=n_copies,
        held_rows=held_rows,
    )
    _core.check_memory(op, parts, advice)


def fit_memory_parts(
    n_samples, n_features, n_components, covariance_type="full", *, dtype=np.float64, n_threads=None,
    init_params="kmeans", init_rows=None, initialise=True, n_copies=2, held_rows=0,
) -> tuple:
    """``([(what, bytes), ...], advice)``: the estimate of :func:`check_fit_memory`
    (also checked against GPU memory for a fit on a CUDA tensor)."""
    check_covariance_type(covariance_type)
    init_rows = n_samples if init_rows is None else init_rows
    for name, value in (("n_samples", n_samples), ("n_features", n_features), ("n_components", n_components),
                        ("init_rows", init_rows), ("n_copies", n_copies)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if init_params not in _INIT_PARAMS:
        raise ValueError(f"init_params must be one of {_INIT_PARAMS}, got {init_params!r}")
    n_threads = n_threads_arg(n_threads)
    N, D, K, R = int(n_samples), int(n_features), int(n_components), int(init_rows)
    item = np.dtype(_float_dtype(dtype)).itemsize
    max_threads = _core.build_info()["max_threads"] if not n_threads else n_threads
    threads = max(1, min(max_threads, -(-N // 8)))
    P = float(np.prod(param_shape(covariance_type, K, D), dtype=np.float64))
    acc = {"full": K * float(D + 16) ** 2, "tied": float(D + 8) ** 2 + float(K) ** 2}.get(
        covariance_type, float(K) * D
    ) * 8.0 + (float(K) * D + K) * 8.0
    copies = int(n_copies)
    parts = [
        (f"statistics accumulators ({threads} threads + merged)", (threads + 1) * acc),
        (f"parameters: weights, means, covariances, precisions and their Cholesky factors "
         f"(float64, x{copies}: current, best run, initial)",
         copies * (3.0 * P + 2.0 * K + float(K) * D) * 8.0),
        ("E-step parameters in kernel layout and fitted attributes", 4.0 * P * item),
    ]
    if initialise and init_params == "kmeans":
        kt = max(1, min(max_threads, -(-R // 8)))
        parts.append((f"k-means on {R} rows: labels, distance bounds, centres, per-thread sums",
                      float(R) * (4 * 8 + item) + float(K) * D * (16 + 3 * item) + kt * float(K) * (D + 1) * 8.0))
    elif initialise and init_params == "k-means++":
        trials = 2 + int(math.log(K))
        parts.append((f"k-means++ on {R} rows: distances, candidate distances, centres",
                      float(R) * 8.0 + min(float(R) * trials * item, 512.0 * (1 << 20)) + float(K) * (D * item + 8)))
    elif initialise and init_params == "random":
        parts.append(("random responsibilities (blocks of rows)", min(float(R) * K, 4.0 * (1 << 20)) * 2 * item))
    if held_rows:
        parts.append((f"initialisation sample ({int(held_rows)} rows)", float(held_rows) * (D * item + 16)))
    what = "a fit of " + f"{K} components x {D} features, covariance_type={covariance_type!r}"
    advice = (
        f"({what}.) Use fewer components (n_components) or features, a cheaper covariance_type "
        "('diag' or 'spherical' instead of 'full'), or fewer threads (n_threads); "
        "GMMFAST_MEMORY_LIMIT=<bytes> sets the memory the check assumes (0: no check)."
    )
    return parts, advice


def _check_resp_memory(n_samples: int, n_components: int, dtype, op: str) -> None:
    """An n_samples × n_components array is about to be allocated in NumPy."""
    _core.check_memory(
        op,
        [("responsibilities (n_samples, n_components)", float(n_samples) * n_components * np.dtype(dtype).itemsize)],
        "Use init_params='kmeans' (no n_samples × n_components array), fewer samples, or "
        "GaussianMixture, which computes initial responsibilities in blocks of rows.",
    )


@dataclass
class KMeansResult:
    """Outcome of :func:`kmeans`."""

    centres: np.ndarray
    labels: np.ndarray
    inertia: float
    n_iter: int
    converged: bool


def kmeans_plusplus(
    X,
    n_clusters: int,
    *,
    random_state=None,
    sample_weight=None,
    n_local_trials: Optional[int] = None,
    n_threads: Optional[int] = None,
):
    """Greedy k-means++ seeding: scikit-learn's algorithm and scikit-learn's random draws.

    The random numbers come from ``random_state`` (None, an int, a ``RandomState`` or a
    ``Generator``) in the order ``sklearn.cluster.kmeans_plusplus`` draws them: one
    ``choice`` for the first centre, then ``n_local_trials`` uniforms per further centre.
    The native kernel does the rest, so for float64 data the seeds are those of
    scikit-learn for the same ``random_state`` (up to floating-point ties). For float32
    data scikit-learn accumulates its sampling sums in float32 and gmmfast in float64, so
    the picks can differ. ``n_local_trials`` defaults to 2 + int(log(n_clusters)).

    Returns ``(centres, indices)``: ``centres == X[indices]``. Deterministic for a given
    ``random_state`` whatever the thread count.
    """
    X = as_data(X)
    N = X.shape[0]
    K = int(n_clusters)
    if not 1 <= K <= N:
        raise ValueError(f"n_clusters must be in [1, n_samples] = [1, {N}], got {n_clusters}")
    if n_local_trials is None:
        n_local_trials = 2 + int(np.log(K))
    if int(n_local_trials) < 1:
        raise ValueError(f"n_local_trials must be >= 1, got {n_local_trials}")
    w = None if sample_weight is None else _seeding_weights(sample_weight, N, X.dtype)
    first, uniforms = _kmeans_plusplus_draws(
        check_random_state(random_state), N, K, int(n_local_trials), w, X.dtype
    )
    return _core.kmeans_plusplus(X, K, w, first, uniforms, int(n_local_trials), n_threads_arg(n_threads))


def _seeding_weights(sample_weight, n_samples: int, dtype) -> np.ndarray:
    """sample_weight for seeding, checked before any random draw is made from it."""
    w = as_param(sample_weight, "sample_weight", dtype)
    if w.shape != (n_samples,):
        raise ValueError(f"sample_weight must have shape (n_samples,) = ({n_samples},), got {w.shape}")
    bad = ~np.isfinite(w)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"sample_weight must be finite, but entry {i} is {w[i]}")
    if np.any(w < 0):
        i = int(np.argmax(w < 0))
        raise ValueError(f"sample_weight must be non-negative, but entry {i} is {w[i]}")
    if not float(np.sum(w, dtype=np.float64)) > 0:
        raise ValueError("sample_weight must not sum to zero")
    return w


def _kmeans_plusplus_draws(rs, n_samples: int, n_clusters: int, n_local_trials: int, w, dtype):
    """The random numbers of one k-means++ seeding, drawn as scikit-learn draws them:
    ``rs.choice(n, p=w / w.sum())`` (weights in the data's dtype, ones when None) and
    then ``rs.uniform(size=n_local_trials)`` per further centre, which is the same stream
    as one ``uniform`` call of all of them."""
    if w is None and (np.dtype(dtype) == np.float64 or n_samples <= 2**24):
        first = _uniform_choice(rs, n_samples, dtype)
    else:
        if w is None:
            w = np.ones(n_samples, dtype=dtype)
        first = int(rs.choice(n_samples, p=w / w.sum()))
    uniforms = rs.uniform(size=(n_clusters - 1) * n_local_trials)
    return first, np.ascontiguousarray(uniforms, dtype=np.float64)


def _uniform_choice(rs, n: int, dtype, block: int = 1 << 16) -> int:
    """``rs.choice(n, p=np.ones(n, dtype) / n)``, the same index and the same draw,
    without its n-element arrays (three of them: a memory-mapped fit must not allocate
    per row). NumPy converts p to float64, takes the sequential cumulative sum, divides
    it by its last entry and returns the first index whose value exceeds one uniform
    draw; the sum of the ones is n exactly (float32: n <= 2^24, which the caller checks).
    """
    q = float((np.ones(1, dtype=dtype) / np.asarray(n, dtype=dtype))[0])

    def blocks():
        carry = 0.0
        for start in range(0, n, block):
            run = np.full(min(block, n - start) + 1, q)
            run[0] = carry
            c = np.cumsum(run)[1:]  # sequential sums continuing from carry
            carry = c[-1]
            yield start, c

    total = 0.0
    for _, c in blocks():
        total = c[-1]
    u = rs.random() if isinstance(rs, np.random.Generator) else rs.random_sample()
    for start, c in blocks():
        c /= total
        if c[-1] > u or start + c.size == n:
            return start + min(int(np.searchsorted(c, u, side="right")), c.size - 1)
    raise AssertionError("unreachable")


def kmeans_lloyd(
    X, centres, *, max_iter: int = 300, tol: float = 0.0, sample_weight=None, n_threads=None
):
    """Lloyd iterations from given centres (``tol`` is absolute: Σ‖Δc‖² <= tol stops).

    Returns ``(centres, labels, inertia, n_iter, converged)`` like
    :func:`gmmfast.reference.kmeans_lloyd`.
    """
    X = as_data(X)
    _check_weight_sum(sample_weight, non_negative=True)
    return _core.kmeans_lloyd(
        X,
        as_param(centres, "centres", X.dtype),
        None if sample_weight is None else as_param(sample_weight, "sample_weight", X.dtype),
        int(max_iter),
        float(tol),
        n_threads_arg(n_threads),
    )


def _column_variance_mean(X, sample_weight, n_threads) -> float:
    """mean over features of the variance of X's columns, without an N×D temporary:
    a one-component diagonal mixture has responsibilities exactly 1, so its em_stats
    are the column sums about the given centre."""
    D = X.shape[1]
    centre = np.mean(X, axis=0, dtype=np.float64)[None, :].astype(X.dtype)
    st = em_stats(
        X,
        np.zeros(1),
        centre,
        np.ones((1, D)),
        "diag",
        sample_weight=sample_weight,
        n_threads=n_threads,
    )
    n = st.weight_sum
    var = st.s2[0] / n - (st.s1[0] / n) ** 2
    # >= 0: float32 squares of tiny deviations (|x - c| < 1e-23) underflow to 0 while
    # their sum s1 does not, and a negative tolerance is an error (issue 8)
    return float(np.mean(np.maximum(var, 0.0)))


def kmeans(
    X,
    n_clusters: int,
    *,
    init="k-means++",
    max_iter: int = 300,
    tol: float = 1e-4,
    random_state=None,
    sample_weight=None,
    n_threads: Optional[int] = None,
) -> KMeansResult:
    """k-means (one run, like scikit-learn's ``KMeans(n_init=1)``, and with its random
    draws: for float64 data the same ``random_state`` gives scikit-learn's labels).

    Parameters
    ----------
    init : 'k-means++', 'random' or array of shape (n_clusters, n_features)
    tol : float
        Relative tolerance: Lloyd stops once Σ‖Δc‖² <= tol · mean column variance
        (scikit-learn's scaling), or when no label changes.
    """
    X = as_data(X)
    if not (1 <= int(n_clusters) <= X.shape[0]):
        raise ValueError(
            f"n_samples={X.shape[0]} should be >= n_clusters={n_clusters}."
            if n_clusters > X.shape[0]
            else f"n_clusters must be >= 1, got {n_clusters}"
        )
    _check_weight_sum(sample_weight, non_negative=True)
    if isinstance(init, str) and init == "k-means++":
        centres, _ = kmeans_plusplus(
            X, n_clusters, random_state=random_state, sample_weight=sample_weight, n_threads=n_threads
        )
    elif isinstance(init, str) and init == "random":
        # scikit-learn's KMeans(init='random') draw: rows ∝ sample_weight, no repeats
        w = (np.ones(X.shape[0], dtype=X.dtype) if sample_weight is None
             else _seeding_weights(sample_weight, X.shape[0], X.dtype))
        seeds = check_random_state(random_state).choice(
            X.shape[0], size=n_clusters, replace=False, p=w / w.sum()
        )
        centres = np.ascontiguousarray(X[seeds])
    elif isinstance(init, str):
        raise ValueError(f"init must be 'k-means++', 'random' or an array, got {init!r}")
    else:
        centres = as_param(init, "init", X.dtype)
        if centres.shape != (n_clusters, X.shape[1]):
            raise ValueError(
                f"init must have shape (n_clusters, n_features) = {(n_clusters, X.shape[1])}, "
                f"got {centres.shape}"
            )
    scaled_tol = float(tol) * _column_variance_mean(X, sample_weight, n_threads) if tol else 0.0
    c, labels, inertia, n_iter, converged = kmeans_lloyd(
        X, centres, max_iter=max_iter, tol=scaled_tol, sample_weight=sample_weight, n_threads=n_threads
    )
    return KMeansResult(c, labels, inertia, n_iter, converged)


def initial_params(
    X,
    n_components: int,
    covariance_type: str = "full",
    *,
    init_params: str = "kmeans",
    reg_covar: float = 1e-6,
    random_state=None,
    sample_weight=None,
    n_threads: Optional[int] = None,
) -> MixtureParams:
    """Initial mixture parameters as scikit-learn's GaussianMixture computes them.

    ``init_params``: 'kmeans' (labels of one k-means run), 'k-means++' (one-hot at the
    k-means++ seeds), 'random' (random responsibilities) or 'random_from_data' (one-hot
    at random rows). The parameters are the M-step of those responsibilities, computed
    by :func:`em_stats` in two passes (means first, then statistics centred at them), so
    that no n_samples × n_components array is needed except for 'random'. 'kmeans' and
    'k-means++' draw scikit-learn's random numbers (float64: scikit-learn's start for the
    same ``random_state``); 'random' and 'random_from_data' use gmmfast's own generator,
    which the chunked, Dask and torch.distributed fits can jump through in parallel.
    """
    check_covariance_type(covariance_type)
    X = as_data(X)
    N, D = X.shape
    K = int(n_components)
    if not (1 <= K <= N):
        raise ValueError(
            f"n_components must be in [1, n_samples] = [1, {N}], got {n_components}"
        )
    resp = labels = None
    if init_params == "kmeans":
        labels = kmeans(
            X, K, random_state=random_state, sample_weight=sample_weight, n_threads=n_threads
        ).labels
    elif init_params == "k-means++":
        _, idx = kmeans_plusplus(
            X, K, random_state=random_state, sample_weight=sample_weight, n_threads=n_threads
        )
        _check_resp_memory(N, K, X.dtype, "initial_params")
        resp = np.zeros((N, K), dtype=X.dtype)
        resp[idx, np.arange(K)] = 1
    elif init_params == "random":
        # gmmfast's own stream (see GaussianMixture._initial_stats)
        rs = np.random.default_rng(seed_from(random_state))
        _check_resp_memory(N, K, np.float64, "initial_params")
        resp = rs.uniform(size=(N, K)).astype(X.dtype)
        resp /= resp.sum(axis=1, keepdims=True)
    elif init_params == "random_from_data":
        idx = np.random.default_rng(seed_from(random_state)).choice(N, size=K, replace=False)
        _check_resp_memory(N, K, X.dtype, "initial_params")
        resp = np.zeros((N, K), dtype=X.dtype)
        resp[idx, np.arange(K)] = 1
    else:
        raise ValueError(
            "init_params must be one of 'kmeans', 'k-means++', 'random', 'random_from_data', "
            f"got {init_params!r}"
        )
    # given labels/resp, em_stats reads only K from the mixture: no K·D² placeholder
    shape_only = dict(
        log_weights=None,
        means=np.zeros((K, D)),
        precisions_cholesky=None,
        covariance_type=covariance_type,
        sample_weight=sample_weight,
        resp=resp,
        labels=labels,
        n_threads=n_threads,
    )
    # Pass 1 centres at the data mean; pass 2 at the means it gives, for accuracy.
    centre = np.mean(X, axis=0, dtype=np.float64)
    first = em_stats(X, centres=np.tile(centre, (K, 1)), **shape_only)
    params = finalize(first, reg_covar, X.dtype)
    second = em_stats(X, centres=params.means, **shape_only)
    return finalize(second, reg_covar, X.dtype)
