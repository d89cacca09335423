r"""Pure-NumPy reference implementation of gmmfast's kernels.

This module is the test oracle for the native kernels (:mod:`gmmfast.ops` has the same
signatures) and the "vs NumPy" baseline of the benchmarks. It is written to be read:
vectorised over samples, plain loops over components, float64 throughout whatever the
input dtype, and no dependency beyond NumPy.

Parameterisation (scikit-learn's)
---------------------------------
A mixture of K Gaussians in D dimensions is held as ``log_weights`` (K,), ``means``
(K, D) and the Cholesky factor of the precisions, ``precisions_cholesky``:

==========  =============  =============================================================
type        shape          meaning
==========  =============  =============================================================
full        (K, D, D)      upper-triangular U_k with precision Λ_k = U_k U_kᵀ
tied        (D, D)         one U shared by all components
diag        (K, D)         p_kd = 1/σ_kd
spherical   (K,)           p_k = 1/σ_k, the same in every dimension
==========  =============  =============================================================

With ``log_det_cholesky[k]`` = Σ_j log U_k[j, j] (diag: Σ_d log p_kd, spherical:
D log p_k), i.e. ½ log det Λ_k, the component log-density is

    log N(x | k) = -½ (D log 2π + ‖(x - μ_k)ᵀ U_k‖²) + log_det_cholesky[k].

:func:`log_prob` returns, as asked, the weighted log-densities
``w_ik = log π_k + log N(x_i | k)``, the per-sample log-likelihood
``log p(x_i) = logsumexp_k w_ik``, or the log-responsibilities
``log p(k | x_i) = w_ik - log p(x_i)``.

Sufficient statistics (:func:`em_stats`)
-----------------------------------------
With sample weights g_i (ones by default), responsibilities R_ik = p(k | x_i) (or given
``resp``, or one-hot ``labels``), r_ik = g_i R_ik and centres c_k (the current means by
default):

    nk_k = Σ_i r_ik
    s1_k = Σ_i r_ik (x_i - c_k)
    s2_k = Σ_i r_ik (x_i - c_k)(x_i - c_k)ᵀ        full (K, D, D)
           Σ_k of the above                        tied (D, D)
           Σ_i r_ik (x_i - c_k)²  (elementwise)    diag (K, D)
           Σ_i r_ik ‖x_i - c_k‖²                   spherical (K,)
    log_likelihood = Σ_i g_i log p(x_i),   weight_sum = Σ_i g_i.

They are plain sums over rows, so statistics of chunks computed with the same centres add
up. They are centred at c_k because the uncentred form Σ r x xᵀ - n μ μᵀ cancels
catastrophically once the data sit far from the origin relative to their spread.

M-step from statistics (:func:`finalize`)
-----------------------------------------
scikit-learn adds ε = 10·eps(dtype) to every component count, n_k = nk_k + ε, so that an
empty component does not divide by zero. Its means are (Σ_i r_ik x_i) / n_k; in centred
form, with δ_k = (s1_k - ε c_k) / n_k,

    μ_k = c_k + δ_k                                     (= Σ_i r_ik x_i / n_k exactly)
    π_k = n_k / Σ_j n_j

and, since Σ_i r_ik (x_i - μ_k)(x_i - μ_k)ᵀ = S2_k - s1_k δ_kᵀ - δ_k s1_kᵀ + nk_k δ_k δ_kᵀ,

    full       Σ_k = (S2_k - s1_k δ_kᵀ - δ_k s1_kᵀ + nk_k δ_k δ_kᵀ) / n_k + reg·I
    tied       Σ   = (S2 - Σ_k (s1_k δ_kᵀ + δ_k s1_kᵀ - nk_k δ_k δ_kᵀ)) / Σ_k n_k + reg·I
    diag       σ²_kd = (s2_kd - 2 s1_kd δ_kd + nk_k δ_kd²) / n_k + reg
    spherical  σ²_k  = (s2_k - 2 s1_k·δ_k + nk_k ‖δ_k‖²) / (n_k D) + reg

(nk_k without ε inside the numerators: it is the exact expansion of the centred sum).
The precision Cholesky factor is U = L⁻ᵀ with Σ = L Lᵀ (:func:`precision_cholesky`).

EM (:func:`em`) and k-means (:func:`kmeans_lloyd`, :func:`kmeans_plusplus`)
---------------------------------------------------------------------------
:func:`em` is scikit-learn's ``GaussianMixture.fit`` loop started from given parameters:
each iteration runs the E-step and the M-step in one :func:`em_stats` pass centred at
the current means, records the mean log-likelihood *before* the M-step as the lower
bound, and stops once it changes by less than ``tol``. The k-means functions follow
``sklearn.cluster._kmeans`` (Lloyd iterations with empty-cluster relocation; greedy
k-means++ seeding).
"""

from __future__ import annotations

import math

import numpy as np

from ._types import (
    COVARIANCE_TYPES,
    EMResult,
    EMStats,
    MixtureParams,
    ill_defined_covariance_message,
    param_shape,
)
from ._validation import check_random_state

__all__ = [
    "log_prob",
    "em_stats",
    "finalize",
    "precision_cholesky",
    "log_det_cholesky",
    "em",
    "kmeans_lloyd",
    "kmeans_plusplus",
]

_LOG_2PI = math.log(2.0 * math.pi)
_LOG_PROB_OUTPUTS = ("sample", "log_resp", "weighted")


# --------------------------------------------------------------------------------------
# input checks (light: this is the oracle, not the hardened entry point)


def _check_covariance_type(covariance_type):
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}"
        )


def _as_float64(a, name, ndim=None, shape=None):
    a = np.asarray(a, dtype=np.float64)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d array, got shape {a.shape}")
    if shape is not None and a.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    return a


def _check_mixture(X, log_weights, means, precisions_cholesky, covariance_type):
    """The mixture arguments as float64 arrays, after checking their shapes."""
    _check_covariance_type(covariance_type)
    X = _as_float64(X, "X", ndim=2)
    means = _as_float64(means, "means", ndim=2)
    n_components, n_features = means.shape
    if n_features != X.shape[1]:
        raise ValueError(
            f"means must have {X.shape[1]} columns (the features of X), "
            f"got shape {means.shape}"
        )
    log_weights = _as_float64(log_weights, "log_weights", shape=(n_components,))
    precisions_cholesky = _as_float64(
        precisions_cholesky,
        "precisions_cholesky",
        shape=param_shape(covariance_type, n_components, n_features),
    )
    return X, log_weights, means, precisions_cholesky


def _check_sample_weight(sample_weight, n_samples):
    if sample_weight is None:
        return np.ones(n_samples)
    return _as_float64(sample_weight, "sample_weight", shape=(n_samples,))


def _check_positive_total_weight(w):
    # k-means divides by cluster weights and samples with probability ∝ w
    if np.any(w < 0) or not w.sum() > 0:
        raise ValueError("sample_weight must be non-negative with a positive sum")
    return w


def _float_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


# --------------------------------------------------------------------------------------
# densities


def log_det_cholesky(precisions_cholesky, covariance_type, n_features):
    """Σ_j log U_k[j, j]: half the log-determinant of each precision.

    Shape (K,) for full, diag and spherical; a 0-d array for tied (one shared factor).
    """
    _check_covariance_type(covariance_type)
    prec_chol = np.asarray(precisions_cholesky, dtype=np.float64)
    if covariance_type == "full":
        return np.sum(np.log(np.diagonal(prec_chol, axis1=1, axis2=2)), axis=1)
    if covariance_type == "tied":
        return np.asarray(np.sum(np.log(np.diagonal(prec_chol))))
    if covariance_type == "diag":
        return np.sum(np.log(prec_chol), axis=1)
    return n_features * np.log(prec_chol)


def _mahalanobis_sq(X, mean, prec_chol_k, covariance_type):
    """‖(x_i - μ)ᵀ U‖² for every row of X, for one component (centred, not expanded)."""
    diff = X - mean
    if covariance_type in ("full", "tied"):
        y = diff @ prec_chol_k
        return np.einsum("ij,ij->i", y, y)
    if covariance_type == "diag":
        y = diff * prec_chol_k
        return np.einsum("ij,ij->i", y, y)
    return np.einsum("ij,ij->i", diff, diff) * prec_chol_k**2


def _weighted_log_prob(X, log_weights, means, precisions_cholesky, covariance_type):
    """w_ik = log π_k + log N(x_i | k), shape (N, K). Arguments already checked."""
    n_samples, n_features = X.shape
    n_components = means.shape[0]
    log_det = log_det_cholesky(precisions_cholesky, covariance_type, n_features)
    log_det = np.broadcast_to(log_det, (n_components,))
    out = np.empty((n_samples, n_components))
    for k in range(n_components):
        prec_chol_k = (
            precisions_cholesky if covariance_type == "tied" else precisions_cholesky[k]
        )
        maha = _mahalanobis_sq(X, means[k], prec_chol_k, covariance_type)
        out[:, k] = log_weights[k] - 0.5 * (n_features * _LOG_2PI + maha) + log_det[k]
    return out


def _logsumexp_rows(a):
    """log Σ_k exp(a_ik) per row, shifted by the row maximum.

    A row that is -inf everywhere gives -inf (not NaN): the shift is taken as 0 there.
    """
    row_max = np.max(a, axis=1)
    shift = np.where(np.isfinite(row_max), row_max, 0.0)
    with np.errstate(divide="ignore"):  # log(0) = -inf is the right answer
        return np.log(np.sum(np.exp(a - shift[:, None]), axis=1)) + shift


def log_prob(
    X, log_weights, means, precisions_cholesky, covariance_type="full", output="sample"
):
    """Log-likelihoods of the rows of X under a Gaussian mixture, in float64.

    Parameters
    ----------
    X : array (N, D)
    log_weights : array (K,)
        log π_k.
    means : array (K, D)
    precisions_cholesky : array, shape given by :func:`gmmfast._types.param_shape`
    covariance_type : {"full", "tied", "diag", "spherical"}
    output : {"sample", "log_resp", "weighted"}
        "sample": (N,) log p(x_i); "log_resp": (N, K) log p(k | x_i);
        "weighted": (N, K) log π_k + log N(x_i | k).
    """
    if output not in _LOG_PROB_OUTPUTS:
        raise ValueError(f"output must be one of {_LOG_PROB_OUTPUTS}, got {output!r}")
    X, log_weights, means, prec_chol = _check_mixture(
        X, log_weights, means, precisions_cholesky, covariance_type
    )
    weighted = _weighted_log_prob(X, log_weights, means, prec_chol, covariance_type)
    if output == "weighted":
        return weighted
    log_norm = _logsumexp_rows(weighted)
    if output == "sample":
        return log_norm
    return weighted - log_norm[:, None]


# --------------------------------------------------------------------------------------
# EM statistics and the M-step


def em_stats(
    X,
    log_weights,
    means,
    precisions_cholesky,
    covariance_type="full",
    *,
    centres=None,
    sample_weight=None,
    resp=None,
    labels=None,
):
    """Sufficient statistics of one EM pass over X, centred at ``centres``.

    The E-step responsibilities p(k | x_i) are computed from the mixture unless ``resp``
    (N, K) or integer ``labels`` (N,) (one-hot responsibilities) are given; then
    ``log_likelihood`` is 0.0 (nothing was evaluated), while ``weight_sum`` is still
    Σ g_i. See the module docstring for the formulas. Returns an :class:`EMStats` that
    records the data's dtype (float32 data keep float32's epsilon in :func:`finalize`).
    """
    data_dtype = np.asarray(X).dtype
    data_dtype = "float32" if data_dtype == np.float32 else "float64"
    X, log_weights, means, prec_chol = _check_mixture(
        X, log_weights, means, precisions_cholesky, covariance_type
    )
    n_samples, n_features = X.shape
    n_components = means.shape[0]
    if centres is None:
        centres = means.copy()
    else:
        centres = _as_float64(centres, "centres", shape=means.shape).copy()
    g = _check_sample_weight(sample_weight, n_samples)
    if resp is not None and labels is not None:
        raise ValueError("pass at most one of resp and labels")

    if resp is not None:
        R = _as_float64(resp, "resp", shape=(n_samples, n_components))
        log_likelihood = 0.0
    elif labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (n_samples,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be an integer array of shape ({n_samples},), "
                f"got {labels.dtype} {labels.shape}"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= n_components):
            raise ValueError(
                f"labels must lie in [0, {n_components}), got out-of-range values"
            )
        R = np.zeros((n_samples, n_components))
        R[np.arange(n_samples), labels] = 1.0
        log_likelihood = 0.0
    else:
        weighted = _weighted_log_prob(X, log_weights, means, prec_chol, covariance_type)
        log_norm = _logsumexp_rows(weighted)
        R = np.exp(weighted - log_norm[:, None])
        log_likelihood = float(g @ log_norm)

    r = R * g[:, None]
    nk = r.sum(axis=0)
    s1 = np.empty((n_components, n_features))
    if covariance_type == "tied":
        s2 = np.zeros((n_features, n_features))
    else:
        s2 = np.empty(param_shape(covariance_type, n_components, n_features))
    for k in range(n_components):
        diff = X - centres[k]  # centred: see the module docstring
        r_k = r[:, k]
        s1[k] = r_k @ diff
        if covariance_type == "full":
            s2[k] = (diff * r_k[:, None]).T @ diff
        elif covariance_type == "tied":
            s2 += (diff * r_k[:, None]).T @ diff
        elif covariance_type == "diag":
            s2[k] = r_k @ diff**2
        else:
            s2[k] = r_k @ np.einsum("ij,ij->i", diff, diff)

    return EMStats(
        covariance_type=covariance_type,
        centres=centres,
        log_likelihood=log_likelihood,
        weight_sum=float(g.sum()),
        nk=nk,
        s1=s1,
        s2=s2,
        dtype=data_dtype,
    )


def precision_cholesky(covariances, covariance_type, *, n_features=None):
    """Precision Cholesky factors and their log-determinants from covariances.

    full / tied: Σ = L Lᵀ (L lower), U = L⁻ᵀ, upper triangular with U Uᵀ = Σ⁻¹.
    diag / spherical: U = 1/√σ².
    Returns ``(precisions_cholesky, log_det_cholesky)``; log_det_cholesky has shape
    (K,), or () for tied. A spherical log-det is D·log U_k, and spherical covariances
    (K,) do not carry D: pass ``n_features`` for that type (it is checked against the
    covariances' shape for the others). A covariance that is not positive definite (or
    not finite) raises ValueError with scikit-learn's message.
    """
    _check_covariance_type(covariance_type)
    cov = np.asarray(covariances, dtype=np.float64)
    expected_ndim = {"full": 3, "tied": 2, "diag": 2, "spherical": 1}[covariance_type]
    if cov.ndim != expected_ndim or (
        covariance_type in ("full", "tied") and cov.shape[-1] != cov.shape[-2]
    ):
        raise ValueError(
            f"covariances of a {covariance_type!r} mixture must have "
            f"{expected_ndim} dimensions (square matrices for full/tied), got {cov.shape}"
        )
    message = ill_defined_covariance_message(np.float64)
    # NaN passes both the Cholesky and the "<= 0" test silently: reject it here.
    if not np.all(np.isfinite(cov)):
        raise ValueError(message)

    def chol_inverse_t(matrix):
        try:
            L = np.linalg.cholesky(matrix)
        except np.linalg.LinAlgError:
            raise ValueError(message) from None
        # np.linalg.solve is LU with partial pivoting, not a triangular solve: the
        # entries of L⁻¹ above its diagonal come out ~1e-16 instead of exactly 0, so
        # keep only U's upper triangle (scikit-learn uses solve_triangular here).
        return np.triu(np.linalg.solve(L, np.eye(matrix.shape[0])).T)

    if covariance_type == "spherical":
        if n_features is None:
            raise ValueError("n_features is required for covariance_type='spherical'")
    else:
        shape_features = cov.shape[0] if covariance_type == "tied" else cov.shape[1]
        if n_features is not None and n_features != shape_features:
            raise ValueError(
                f"n_features={n_features} does not match covariances of shape {cov.shape}"
            )
        n_features = shape_features

    if covariance_type == "full":
        prec_chol = np.empty_like(cov)
        for k in range(cov.shape[0]):
            prec_chol[k] = chol_inverse_t(cov[k])
    elif covariance_type == "tied":
        prec_chol = chol_inverse_t(cov)
    else:
        if np.any(cov <= 0.0):
            raise ValueError(message)
        prec_chol = 1.0 / np.sqrt(cov)
    return prec_chol, log_det_cholesky(prec_chol, covariance_type, n_features)


def finalize(stats: EMStats, reg_covar=1e-6, dtype=None) -> MixtureParams:
    """scikit-learn's M-step from summed statistics; float64 parameters.

    ``dtype`` is the dtype of the data the statistics came from (default: the one the
    statistics record): it sets scikit-learn's count floor 10·eps(dtype) and the wording
    of the ill-defined-covariance error. See the module docstring for the formulas.
    """
    dtype = _float_dtype(stats.dtype if dtype is None else dtype)
    covariance_type = stats.covariance_type
    _check_covariance_type(covariance_type)
    centres = np.asarray(stats.centres, dtype=np.float64)
    n_components, n_features = centres.shape
    nk = np.asarray(stats.nk, dtype=np.float64)
    s1 = np.asarray(stats.s1, dtype=np.float64)
    s2 = np.asarray(stats.s2, dtype=np.float64)

    nk_eps = 10.0 * np.finfo(dtype).eps
    n = nk + nk_eps
    weights = n / n.sum()
    delta = (s1 - nk_eps * centres) / n[:, None]
    means = centres + delta

    def centred_scatter(s2_k, s1_k, delta_k, nk_k):
        # Σ r (x - μ)(x - μ)ᵀ = S2 - s1 δᵀ - δ s1ᵀ + nk δ δᵀ, with μ = c + δ
        return (
            s2_k
            - np.outer(s1_k, delta_k)
            - np.outer(delta_k, s1_k)
            + nk_k * np.outer(delta_k, delta_k)
        )

    if covariance_type == "full":
        covariances = np.empty((n_components, n_features, n_features))
        for k in range(n_components):
            covariances[k] = centred_scatter(s2[k], s1[k], delta[k], nk[k]) / n[k]
            covariances[k] += reg_covar * np.eye(n_features)
    elif covariance_type == "tied":
        # S2 is already summed over components; subtract each component's correction
        scatter = s2.copy()
        for k in range(n_components):
            scatter += centred_scatter(0.0, s1[k], delta[k], nk[k])
        covariances = scatter / n.sum() + reg_covar * np.eye(n_features)
    elif covariance_type == "diag":
        covariances = (s2 - 2.0 * s1 * delta + nk[:, None] * delta**2) / n[:, None]
        covariances = covariances + reg_covar
    else:
        scatter = s2 - 2.0 * np.sum(s1 * delta, axis=1) + nk * np.sum(delta**2, axis=1)
        covariances = scatter / (n * n_features) + reg_covar

    try:
        prec_chol, log_det = precision_cholesky(
            covariances, covariance_type, n_features=n_features
        )
    except ValueError:
        raise ValueError(ill_defined_covariance_message(dtype)) from None
    return MixtureParams(
        covariance_type=covariance_type,
        weights=weights,
        means=means,
        covariances=covariances,
        precisions_cholesky=prec_chol,
        log_det_cholesky=log_det,
    )


def em(
    X,
    init: MixtureParams,
    *,
    tol=1e-3,
    max_iter=100,
    reg_covar=1e-6,
    sample_weight=None,
) -> EMResult:
    """EM from the parameters ``init``, as scikit-learn's ``GaussianMixture.fit``.

    ``lower_bound`` is Σ g_i log p(x_i) / Σ g_i of the last E-step (the parameters
    *before* the last M-step, as scikit-learn reports it); the returned parameters are
    those after the last M-step. With ``max_iter=0`` the initial parameters come back
    with ``lower_bound = -inf`` and ``n_iter = 0``.
    """
    X = np.asarray(X)
    dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.dtype(np.float64)
    X = _as_float64(X, "X", ndim=2)
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    covariance_type = init.covariance_type
    _check_covariance_type(covariance_type)
    params = init.astype(np.float64)
    if params.log_det_cholesky is None:
        params.log_det_cholesky = log_det_cholesky(
            params.precisions_cholesky, covariance_type, params.n_features
        )

    lower_bound = -np.inf
    lower_bounds = []
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        previous = lower_bound
        with np.errstate(divide="ignore"):  # a zero weight is a -inf log-weight
            log_weights = np.log(params.weights)
        stats = em_stats(
            X,
            log_weights,
            params.means,
            params.precisions_cholesky,
            covariance_type,
            centres=params.means,
            sample_weight=sample_weight,
        )
        lower_bound = stats.log_likelihood / stats.weight_sum
        params = finalize(stats, reg_covar, dtype=dtype)
        lower_bounds.append(lower_bound)
        if abs(lower_bound - previous) < tol:
            converged = True
            break
    return EMResult(
        params=params,
        lower_bound=lower_bound,
        lower_bounds=lower_bounds,
        n_iter=n_iter,
        converged=converged,
    )


# --------------------------------------------------------------------------------------
# k-means


def _squared_distances(X, centres):
    """‖x_i - c_k‖², shape (N, K), computed from the differences (no expansion)."""
    out = np.empty((X.shape[0], centres.shape[0]))
    for k in range(centres.shape[0]):
        diff = X - centres[k]
        out[:, k] = np.einsum("ij,ij->i", diff, diff)
    return out


def _nearest_centre(X, centres):
    # argmin returns the first minimum: ties go to the lowest index, as in scikit-learn
    return np.argmin(_squared_distances(X, centres), axis=1)


def _lloyd_update(X, w, centres_old, labels):
    """New centres from ``labels``: weighted means, empty clusters relocated.

    Follows scikit-learn's ``_relocate_empty_clusters_dense`` and ``_average_centers``:
    a cluster with zero total weight takes the point farthest from its assigned (old)
    centre, the largest distance first, moving that point's weight out of its old
    cluster (its label is not changed). If every point sits exactly on its centre,
    nothing is relocated, and a cluster still empty is put on the heaviest cluster.
    """
    n_clusters, n_features = centres_old.shape
    sums = np.zeros((n_clusters, n_features))
    weight = np.zeros(n_clusters)
    for k in range(n_clusters):
        w_k = np.where(labels == k, w, 0.0)
        sums[k] = w_k @ X
        weight[k] = w_k.sum()

    empty = np.flatnonzero(weight == 0.0)
    if empty.size:
        diff = X - centres_old[labels]
        distances = np.einsum("ij,ij->i", diff, diff)
        if distances.max() > 0.0:
            # largest distance first, ties to the lowest row index
            farthest = np.argsort(-distances, kind="stable")[: empty.size]
            for new_cluster, i in zip(empty, farthest):
                old_cluster = labels[i]
                sums[old_cluster] -= w[i] * X[i]
                sums[new_cluster] = w[i] * X[i]
                weight[old_cluster] -= w[i]
                weight[new_cluster] = w[i]

    centres = sums.copy()
    nonempty = weight > 0.0
    centres[nonempty] = sums[nonempty] / weight[nonempty, None]
    centres[~nonempty] = centres[np.argmax(weight)]
    return centres


def kmeans_lloyd(X, centres, *, max_iter=300, tol=0.0, sample_weight=None):
    """Lloyd's k-means from ``centres``, with scikit-learn's stopping rules.

    Stops when the labels equal the previous iteration's (strict convergence) or when
    Σ_k ‖c_new - c_old‖² <= tol (``tol`` is absolute here: scikit-learn multiplies the
    user's tol by the mean per-feature variance of X before this point). If not
    strictly converged, the labels are recomputed from the final centres.

    Returns ``(centres, labels, inertia, n_iter, converged)``, with
    inertia = Σ_i g_i ‖x_i - c_{label_i}‖² and converged true when either rule fired.
    """
    X = _as_float64(X, "X", ndim=2)
    n_samples, n_features = X.shape
    centres = _as_float64(centres, "centres", ndim=2).copy()
    if centres.shape[1] != n_features:
        raise ValueError(
            f"centres must have {n_features} columns (the features of X), "
            f"got shape {centres.shape}"
        )
    if centres.shape[0] > n_samples:
        raise ValueError(
            f"centres has {centres.shape[0]} rows, more than X's {n_samples} samples"
        )
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    w = _check_positive_total_weight(_check_sample_weight(sample_weight, n_samples))

    labels_old = np.full(n_samples, -1)
    strict_convergence = False
    converged = False
    for n_iter in range(1, max_iter + 1):
        labels = _nearest_centre(X, centres)
        centres_new = _lloyd_update(X, w, centres, labels)
        shift = np.sum((centres_new - centres) ** 2)
        centres = centres_new
        if np.array_equal(labels, labels_old):
            strict_convergence = converged = True
            break
        if shift <= tol:
            converged = True
            break
        labels_old = labels

    if not strict_convergence:
        # the labels above belong to the previous centres; match them to the final ones
        labels = _nearest_centre(X, centres)
    diff = X - centres[labels]
    inertia = float(w @ np.einsum("ij,ij->i", diff, diff))
    return centres, labels, inertia, n_iter, converged


def kmeans_plusplus(
    X, n_clusters, *, random_state=None, sample_weight=None, n_local_trials=None
):
    """Greedy k-means++ seeding, scikit-learn's algorithm and random draws.

    The first centre is drawn with probability ∝ g_i; each next one is the best (lowest
    resulting potential Σ g_i min_k ‖x_i - c_k‖²) of ``n_local_trials`` candidates drawn
    with probability ∝ g_i D(x_i)², D the distance to the closest chosen centre.
    ``n_local_trials`` defaults to 2 + int(log(n_clusters)). ``random_state`` follows
    scikit-learn's convention (an int seeds a ``RandomState``; a ``Generator`` is also
    accepted) and is drawn from in scikit-learn's order: ``choice`` for the first
    centre, then ``uniform(size=n_local_trials)`` per further centre.

    Returns ``(centres, indices)`` with ``centres == X[indices]`` (float64).
    """
    X = _as_float64(X, "X", ndim=2)
    n_samples = X.shape[0]
    if not 1 <= n_clusters <= n_samples:
        raise ValueError(
            f"n_clusters must be in [1, n_samples={n_samples}], got {n_clusters}"
        )
    w = _check_positive_total_weight(_check_sample_weight(sample_weight, n_samples))
    if n_local_trials is None:
        n_local_trials = 2 + int(np.log(n_clusters))
    rng = check_random_state(random_state)

    indices = np.empty(n_clusters, dtype=np.intp)
    indices[0] = rng.choice(n_samples, p=w / w.sum())
    closest_sq = _squared_distances(X, X[indices[:1]])[:, 0]
    potential = closest_sq @ w

    for c in range(1, n_clusters):
        targets = rng.uniform(size=n_local_trials) * potential
        candidates = np.searchsorted(np.cumsum(w * closest_sq), targets)
        # rounding in the cumulative sum can push a target past the last entry
        candidates = np.minimum(candidates, n_samples - 1)
        # (n_local_trials, N): the closest distances if each candidate were added
        trial_sq = np.minimum(closest_sq, _squared_distances(X, X[candidates]).T)
        trial_potential = trial_sq @ w
        best = np.argmin(trial_potential)
        potential = trial_potential[best]
        closest_sq = trial_sq[best]
        indices[c] = candidates[best]

    return X[indices].copy(), indices
