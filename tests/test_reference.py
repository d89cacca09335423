"""The NumPy reference (gmmfast.reference) against scikit-learn.

The reference is the oracle for the native kernels, so it is itself checked here against
scikit-learn's private GaussianMixture helpers, full GaussianMixture / KMeans fits started
from the same parameters, and algebraic identities (resp/labels paths, additivity,
integer sample weights as repeated rows, invariance to the centring point).

Tolerances: scikit-learn computes several quantities in a different, less stable form
(X U - μ U instead of (X - μ) U; E[x²] - μ² for diag/spherical/tied covariances), so
agreement is to ~1e-12 relative on well-scaled data rather than bit-exact; EM fits
compound that over iterations. Each assert states its tolerance and why.
"""

import re
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn.cluster import KMeans  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.mixture import GaussianMixture  # noqa: E402
from sklearn.mixture._gaussian_mixture import (  # noqa: E402
    _compute_log_det_cholesky,
    _compute_precision_cholesky,
    _estimate_gaussian_parameters,
    _estimate_log_gaussian_prob,
)

from gmmfast._types import (  # noqa: E402
    ILL_DEFINED_COVARIANCE,
    ILL_DEFINED_COVARIANCE_FLOAT32,
    EMStats,
    MixtureParams,
)
from gmmfast.reference import (  # noqa: E402
    em,
    em_stats,
    finalize,
    kmeans_lloyd,
    kmeans_plusplus,
    log_prob,
    precision_cholesky,
)

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]


# --------------------------------------------------------------------------------------
# data and parameters


def make_blobs(rng, n_samples=300, n_features=3, n_blobs=3, spread=6.0, offset=0.0):
    """Anisotropic Gaussian blobs (shuffled), centred around ``offset``."""
    centres = rng.normal(scale=spread, size=(n_blobs, n_features)) + offset
    labels = rng.integers(n_blobs, size=n_samples)
    mixing = rng.normal(size=(n_blobs, n_features, n_features)) * 0.5 + np.eye(n_features)
    noise = rng.normal(size=(n_samples, n_features))
    return centres[labels] + np.einsum("nd,nde->ne", noise, mixing[labels])


def random_covariances(rng, covariance_type, n_components, n_features):
    if covariance_type == "full":
        A = rng.normal(size=(n_components, n_features, n_features))
        return A @ A.transpose(0, 2, 1) + 0.5 * np.eye(n_features)
    if covariance_type == "tied":
        A = rng.normal(size=(n_features, n_features))
        return A @ A.T + 0.5 * np.eye(n_features)
    if covariance_type == "diag":
        return rng.uniform(0.5, 3.0, size=(n_components, n_features))
    return rng.uniform(0.5, 3.0, size=n_components)


def random_params(rng, X, covariance_type, n_components):
    """A plausible starting mixture: means on data points, random covariances."""
    n_features = X.shape[1]
    weights = rng.uniform(0.5, 1.5, size=n_components)
    weights /= weights.sum()
    means = X[rng.choice(X.shape[0], n_components, replace=False)] + rng.normal(
        scale=0.1, size=(n_components, n_features)
    )
    cov = random_covariances(rng, covariance_type, n_components, n_features)
    prec_chol, _ = precision_cholesky(cov, covariance_type, n_features=n_features)
    return weights, means, prec_chol


def precisions_from_cholesky(prec_chol, covariance_type):
    if covariance_type == "full":
        return prec_chol @ prec_chol.transpose(0, 2, 1)
    if covariance_type == "tied":
        return prec_chol @ prec_chol.T
    return prec_chol**2


def sklearn_weighted_log_prob(X, weights, means, prec_chol, covariance_type):
    return _estimate_log_gaussian_prob(X, means, prec_chol, covariance_type) + np.log(
        weights
    )


def assert_stats_close(a: EMStats, b: EMStats, rtol, atol=0.0):
    assert a.covariance_type == b.covariance_type
    np.testing.assert_array_equal(a.centres, b.centres)
    np.testing.assert_allclose(a.nk, b.nk, rtol=rtol, atol=atol)
    np.testing.assert_allclose(a.s1, b.s1, rtol=rtol, atol=atol)
    np.testing.assert_allclose(a.s2, b.s2, rtol=rtol, atol=atol)
    np.testing.assert_allclose(a.weight_sum, b.weight_sum, rtol=rtol)
    np.testing.assert_allclose(a.log_likelihood, b.log_likelihood, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------------------
# log_prob


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_prob_matches_sklearn(covariance_type):
    rng = np.random.default_rng(0)
    X = make_blobs(rng, n_samples=200, n_features=4)
    weights, means, prec_chol = random_params(rng, X, covariance_type, 3)
    expected = sklearn_weighted_log_prob(X, weights, means, prec_chol, covariance_type)

    weighted = log_prob(X, np.log(weights), means, prec_chol, covariance_type, "weighted")
    assert weighted.dtype == np.float64 and weighted.shape == (200, 3)
    # rtol=1e-11: both float64; sklearn expands X U - μ U (diag/spherical: Σμ²p - 2xμp
    # + x²p), which loses ~2 digits to cancellation on data of magnitude ~10.
    np.testing.assert_allclose(weighted, expected, rtol=1e-11)

    sample = log_prob(X, np.log(weights), means, prec_chol, covariance_type, "sample")
    # rtol=1e-11: logsumexp of the values above, np.logaddexp is accurate to ~1 ulp.
    np.testing.assert_allclose(sample, np.logaddexp.reduce(expected, axis=1), rtol=1e-11)

    log_resp = log_prob(X, np.log(weights), means, prec_chol, covariance_type, "log_resp")
    # atol=1e-9: log-responsibilities are differences of the values above (|w| ~ 1e2,
    # so absolute error ~1e2 * 1e-11); relative error is meaningless near log r = 0.
    np.testing.assert_allclose(log_resp, expected - sample[:, None], atol=1e-9)
    # rtol=1e-12 on Σ_k r_ik = 1: one exp/log round trip per entry.
    np.testing.assert_allclose(np.exp(log_resp).sum(axis=1), 1.0, rtol=1e-12)
    # the default output is "sample"
    np.testing.assert_array_equal(
        log_prob(X, np.log(weights), means, prec_chol, covariance_type), sample
    )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_prob_float32_input_is_evaluated_in_float64(covariance_type):
    rng = np.random.default_rng(1)
    X32 = make_blobs(rng, n_samples=150, n_features=3).astype(np.float32)
    X64 = X32.astype(np.float64)
    weights, means, prec_chol = random_params(rng, X64, covariance_type, 4)
    w32, m32, p32 = (a.astype(np.float32) for a in (weights, means, prec_chol))

    for output in ("sample", "log_resp", "weighted"):
        got = log_prob(X32, np.log(w32), m32, p32, covariance_type, output)
        assert got.dtype == np.float64
        # exact: the reference upcasts its inputs first, so the float32 call *is* the
        # float64 evaluation of the same (float32-representable) numbers.
        want = log_prob(
            X64, np.log(w32).astype(np.float64), m32.astype(np.float64),
            p32.astype(np.float64), covariance_type, output,
        )
        np.testing.assert_array_equal(got, want)

    expected = sklearn_weighted_log_prob(
        X64, w32.astype(np.float64), m32.astype(np.float64), p32.astype(np.float64),
        covariance_type,
    )
    got = log_prob(X32, np.log(w32), m32, p32, covariance_type, "weighted")
    # rtol=1e-6: np.log of the float32 weights is taken in float32 (≤ 1 ulp = 6e-8
    # relative of |log π| ~ 1, a small part of |w| ~ 10); everything else is float64 on
    # both sides and agrees to ~1e-12 as in test_log_prob_matches_sklearn.
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_log_prob_extreme_points_stay_finite():
    """Log-sum-exp: far-away points have tiny densities but finite log-likelihoods."""
    rng = np.random.default_rng(2)
    X = make_blobs(rng, n_samples=50, n_features=2)
    weights, means, prec_chol = random_params(rng, X, "full", 3)
    X_far = X + 1e4
    out = log_prob(X_far, np.log(weights), means, prec_chol, "full", "log_resp")
    assert np.all(np.isfinite(log_prob(X_far, np.log(weights), means, prec_chol, "full")))
    # rtol=1e-12: the responsibilities still sum to one after the max shift.
    np.testing.assert_allclose(np.exp(out).sum(axis=1), 1.0, rtol=1e-12)


def test_log_prob_input_validation():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(10, 2))
    weights, means, prec_chol = random_params(rng, X, "diag", 2)
    with pytest.raises(ValueError, match="covariance_type"):
        log_prob(X, np.log(weights), means, prec_chol, "diagonal")
    with pytest.raises(ValueError, match="output"):
        log_prob(X, np.log(weights), means, prec_chol, "diag", output="proba")
    with pytest.raises(ValueError, match="means"):
        log_prob(X, np.log(weights), means[:, :1], prec_chol, "diag")
    with pytest.raises(ValueError, match="log_weights"):
        log_prob(X, np.log(weights)[:1], means, prec_chol, "diag")
    with pytest.raises(ValueError, match="precisions_cholesky"):
        log_prob(X, np.log(weights), means, prec_chol[0], "diag")
    with pytest.raises(ValueError, match="X"):
        log_prob(X[0], np.log(weights), means, prec_chol, "diag")


# --------------------------------------------------------------------------------------
# precision_cholesky


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_precision_cholesky_matches_sklearn(covariance_type):
    rng = np.random.default_rng(4)
    n_features = 5
    cov = random_covariances(rng, covariance_type, 3, n_features)
    prec_chol, log_det = precision_cholesky(cov, covariance_type, n_features=n_features)
    expected = _compute_precision_cholesky(cov, covariance_type)
    # rtol/atol 1e-12: both float64 Cholesky; sklearn inverts with solve_triangular,
    # the reference with an LU solve (well-conditioned matrices, cond < 1e3).
    np.testing.assert_allclose(prec_chol, expected, rtol=1e-12, atol=1e-12)
    if covariance_type in ("full", "tied"):
        # exactly upper triangular, as the parameterisation requires
        assert np.array_equal(prec_chol, np.triu(prec_chol))
    expected_log_det = _compute_log_det_cholesky(expected, covariance_type, n_features)
    # rtol=1e-12: sums of logs of the diagonals compared just above.
    np.testing.assert_allclose(log_det, expected_log_det, rtol=1e-12)
    assert log_det.shape == (() if covariance_type == "tied" else (3,))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_precision_cholesky_rejects_ill_defined_covariance(covariance_type):
    cov = random_covariances(np.random.default_rng(5), covariance_type, 2, 3)
    if covariance_type == "full":
        cov[1] = np.ones((3, 3))  # rank one
    elif covariance_type == "tied":
        cov = np.ones((3, 3))
    else:
        cov[..., 0] = 0.0
    # the message is scikit-learn's word for word (users search for it)
    with pytest.raises(ValueError, match=re.escape(ILL_DEFINED_COVARIANCE)):
        precision_cholesky(cov, covariance_type, n_features=3)
    with pytest.raises(ValueError, match=re.escape(ILL_DEFINED_COVARIANCE)):
        precision_cholesky(np.full_like(cov, np.nan), covariance_type, n_features=3)


def test_finalize_error_message_depends_on_dtype():
    # a component with one point and no regularisation has a singular covariance
    X = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5], [10.0, 10.0]])
    labels = np.array([0, 0, 0, 1])
    means = np.array([[1.0, 0.5], [10.0, 10.0]])
    stats = em_stats(X, np.log([0.5, 0.5]), means, np.ones((2, 2, 2)) * np.eye(2),
                     "full", labels=labels)
    with pytest.raises(ValueError, match=re.escape(ILL_DEFINED_COVARIANCE)) as info:
        finalize(stats, reg_covar=0.0, dtype=np.float64)
    assert ILL_DEFINED_COVARIANCE_FLOAT32 not in str(info.value)
    with pytest.raises(ValueError, match=re.escape(ILL_DEFINED_COVARIANCE_FLOAT32)):
        finalize(stats, reg_covar=0.0, dtype=np.float32)


# --------------------------------------------------------------------------------------
# em_stats


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_em_stats_with_estep_resp_equals_estep(covariance_type):
    rng = np.random.default_rng(6)
    X = make_blobs(rng, n_samples=200, n_features=3)
    weights, means, prec_chol = random_params(rng, X, covariance_type, 3)
    g = rng.uniform(0.0, 2.0, size=200)
    args = (X, np.log(weights), means, prec_chol, covariance_type)

    estep = em_stats(*args, sample_weight=g)
    resp = np.exp(log_prob(*args, output="log_resp"))
    given = em_stats(*args, sample_weight=g, resp=resp)
    assert given.log_likelihood == 0.0  # nothing evaluated when resp is given
    assert given.weight_sum == estep.weight_sum
    given.log_likelihood = estep.log_likelihood
    # rtol=1e-13: the same responsibilities up to the exp/log round trip of log_resp.
    assert_stats_close(given, estep, rtol=1e-13, atol=1e-12)
    # log_likelihood = Σ g log p(x); rtol=1e-12: a dot product vs the same dot product.
    np.testing.assert_allclose(
        estep.log_likelihood, g @ log_prob(*args, output="sample"), rtol=1e-12
    )
    np.testing.assert_allclose(estep.weight_sum, g.sum(), rtol=1e-15)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_em_stats_labels_equal_one_hot_resp(covariance_type):
    rng = np.random.default_rng(7)
    X = make_blobs(rng, n_samples=120, n_features=3)
    weights, means, prec_chol = random_params(rng, X, covariance_type, 4)
    labels = rng.integers(4, size=120)
    labels[:4] = np.arange(4)
    one_hot = np.eye(4)[labels]
    g = rng.uniform(0.5, 2.0, size=120)
    centres = rng.normal(size=(4, 3))
    args = (X, np.log(weights), means, prec_chol, covariance_type)
    a = em_stats(*args, labels=labels, sample_weight=g, centres=centres)
    b = em_stats(*args, resp=one_hot, sample_weight=g, centres=centres)
    # rtol=1e-14: multiplying by exact 0/1 weights; only the summation order may differ.
    assert_stats_close(a, b, rtol=1e-14, atol=1e-13)
    np.testing.assert_array_equal(a.centres, centres)
    with pytest.raises(ValueError, match="labels"):
        em_stats(*args, labels=np.full(120, 4))
    with pytest.raises(ValueError, match="resp"):
        em_stats(*args, labels=labels, resp=one_hot)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_em_stats_add_up_over_a_split(covariance_type):
    rng = np.random.default_rng(8)
    X = make_blobs(rng, n_samples=300, n_features=4)
    weights, means, prec_chol = random_params(rng, X, covariance_type, 3)
    g = rng.uniform(0.0, 3.0, size=300)
    centres = means + rng.normal(size=means.shape)  # not the means: stats take any centres
    common = (np.log(weights), means, prec_chol, covariance_type)

    whole = em_stats(X, *common, centres=centres, sample_weight=g)
    part = rng.random(300) < 0.3
    summed = em_stats(X[part], *common, centres=centres, sample_weight=g[part]) + em_stats(
        X[~part], *common, centres=centres, sample_weight=g[~part]
    )
    # rtol=1e-12 (atol for the s1 entries that sum to ~0): the same terms summed in a
    # different order, float64.
    assert_stats_close(summed, whole, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_integer_sample_weight_equals_repeated_rows(covariance_type):
    rng = np.random.default_rng(9)
    X = make_blobs(rng, n_samples=150, n_features=3)
    weights, means, prec_chol = random_params(rng, X, covariance_type, 3)
    counts = rng.integers(0, 4, size=150)
    common = (np.log(weights), means, prec_chol, covariance_type)

    weighted = em_stats(X, *common, sample_weight=counts)
    repeated = em_stats(np.repeat(X, counts, axis=0), *common)
    # rtol=1e-12: g·r summed once vs r summed g times; float64, different order.
    assert_stats_close(weighted, repeated, rtol=1e-12, atol=1e-10)

    init = MixtureParams(covariance_type, weights, means, np.empty(0), prec_chol)
    fit_w = em(X, init, tol=1e-8, max_iter=20, sample_weight=counts)
    fit_r = em(np.repeat(X, counts, axis=0), init, tol=1e-8, max_iter=20)
    assert fit_w.n_iter == fit_r.n_iter
    # rtol=1e-11: up to 20 EM iterations on the ~1e-15 differences above (observed
    # ~1e-15; EM contracts them).
    np.testing.assert_allclose(fit_w.lower_bounds, fit_r.lower_bounds, rtol=1e-11)
    np.testing.assert_allclose(fit_w.params.means, fit_r.params.means, rtol=1e-11)
    np.testing.assert_allclose(
        fit_w.params.covariances, fit_r.params.covariances, rtol=1e-11, atol=1e-13
    )


# --------------------------------------------------------------------------------------
# finalize


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("empty_component", [False, True])
def test_finalize_matches_sklearn_m_step(covariance_type, empty_component):
    rng = np.random.default_rng(10)
    n_components = 4
    X = make_blobs(rng, n_samples=250, n_features=3, offset=3.0)
    resp = rng.dirichlet(np.ones(n_components), size=250)
    if empty_component:
        # a component with no mass at all: sklearn's 10·eps floor decides its fate
        resp[:, 2] = 0.0
        resp /= resp.sum(axis=1, keepdims=True)
    reg_covar = 1e-4
    _, means0, prec0 = random_params(rng, X, covariance_type, n_components)
    # centre at arbitrary points, not the new means, to exercise the centred algebra
    centres = rng.normal(scale=5.0, size=(n_components, 3))
    stats = em_stats(X, np.zeros(n_components), means0, prec0, covariance_type,
                     resp=resp, centres=centres)
    params = finalize(stats, reg_covar)

    nk, means, covariances = _estimate_gaussian_parameters(
        X, resp, reg_covar, covariance_type
    )
    prec_chol = _compute_precision_cholesky(covariances, covariance_type)
    # rtol=1e-12: weights are normalised counts (sums of the same resp).
    np.testing.assert_allclose(params.weights, nk / nk.sum(), rtol=1e-12)
    # rtol=1e-11 (atol for the exact-zero mean of an empty component): Σ r x / n_k vs
    # c + (s1 - ε c)/n_k — the same number, rounded differently.
    np.testing.assert_allclose(params.means, means, rtol=1e-11, atol=1e-12)
    # rtol=1e-10: sklearn's tied/diag/spherical use E[x²] - μ² (uncentred), which loses
    # ~log10(|x|²/σ²) ≈ 2 digits on this data; full is centred on both sides.
    np.testing.assert_allclose(params.covariances, covariances, rtol=1e-10, atol=1e-12)
    # rtol=1e-10: the factor of the covariances above (condition numbers < 1e2).
    np.testing.assert_allclose(
        params.precisions_cholesky, prec_chol, rtol=1e-10, atol=1e-12
    )
    np.testing.assert_allclose(
        params.log_det_cholesky,
        _compute_log_det_cholesky(prec_chol, covariance_type, 3),
        rtol=1e-10,
    )
    if empty_component:
        # sklearn: mean Σ r x / (0 + ε) = 0, weight ε / Σ n. atol=1e-14: the centred
        # form c + (0 - ε c)/ε gives 0 only up to the rounding of ε c / ε (|c| ~ 5).
        np.testing.assert_allclose(params.means[2], 0.0, atol=1e-14)
        assert params.weights[2] == pytest.approx(10 * np.finfo(np.float64).eps / 250)


def test_finalize_count_floor_follows_dtype():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(40, 2))
    resp = rng.dirichlet(np.ones(3), size=40)
    resp[:, 0] = 0.0
    resp /= resp.sum(axis=1, keepdims=True)
    stats = em_stats(X, np.zeros(3), np.zeros((3, 2)), np.ones((3, 2)), "diag", resp=resp)
    for dtype in (np.float32, np.float64):
        eps10 = 10 * np.finfo(dtype).eps
        params = finalize(stats, dtype=dtype)
        assert params.weights.dtype == np.float64  # float64 whatever the data dtype
        # rtol=1e-15: the formula itself, n_k = nk + 10·eps(dtype), weights = n / Σ n.
        np.testing.assert_allclose(
            params.weights, (stats.nk + eps10) / (stats.nk + eps10).sum(), rtol=1e-15
        )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_finalize_does_not_depend_on_the_centres(covariance_type):
    """Data far from the origin: centring anywhere near the data gives the same M-step."""
    rng = np.random.default_rng(12)
    X = make_blobs(rng, n_samples=200, n_features=3, offset=1e4)
    weights, means, prec_chol = random_params(rng, X, covariance_type, 3)
    common = (X, np.log(weights), means, prec_chol, covariance_type)
    at_means = finalize(em_stats(*common))
    nearby = means + rng.normal(scale=3.0, size=means.shape)
    shifted = finalize(em_stats(*common, centres=nearby))
    # rtol=1e-12: means are c + δ, |x| = 1e4, float64 (observed ~1e-16).
    np.testing.assert_allclose(shifted.means, at_means.means, rtol=1e-12)
    # rtol=1e-10: centres a few σ away cost ~1 digit (observed ~1e-13) ...
    np.testing.assert_allclose(shifted.covariances, at_means.covariances, rtol=1e-10)
    # ... while the uncentred form (centres at the origin, |x|²/σ² ~ 1e8) loses ~8 of
    # the 16 digits (observed 1e-8 to 1e-6) and fails the same tolerance.
    at_origin = finalize(em_stats(*common, centres=np.zeros_like(means)))
    assert not np.allclose(at_origin.covariances, at_means.covariances, rtol=1e-10, atol=0)


# --------------------------------------------------------------------------------------
# em end to end vs GaussianMixture


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("tol, max_iter", [(1e-6, 300), (0.0, 10)])
def test_em_matches_sklearn_gaussian_mixture(covariance_type, tol, max_iter):
    rng = np.random.default_rng(13)
    # overlapping blobs: soft responsibilities, 6 (full) to ~40 (spherical) iterations
    X = make_blobs(rng, n_samples=400, n_features=3, n_blobs=3, spread=1.5)
    weights, means, prec_chol = random_params(rng, X, covariance_type, 3)
    reg_covar = 1e-5

    gm = GaussianMixture(
        n_components=3,
        covariance_type=covariance_type,
        weights_init=weights,
        means_init=means,
        precisions_init=precisions_from_cholesky(prec_chol, covariance_type),
        tol=tol,
        max_iter=max_iter,
        reg_covar=reg_covar,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X)

    init = MixtureParams(covariance_type, weights, means, np.empty(0), prec_chol)
    result = em(X, init, tol=tol, max_iter=max_iter, reg_covar=reg_covar)

    # exact: the same stopping decisions (on this data the closest |change| comes to
    # tol is ~1e-2·tol, far above the ~1e-15 differences in the lower bounds).
    assert result.n_iter == gm.n_iter_
    assert result.converged == gm.converged_
    assert result.converged == (tol > 0)
    assert len(result.lower_bounds) == result.n_iter
    # rtol=1e-12: per-iteration mean log-likelihoods (observed ~1e-15); sklearn recovers
    # U from precisions_init by a flipped Cholesky and sums in its own order, and EM
    # contracts rather than amplifies such differences.
    np.testing.assert_allclose(result.lower_bound, gm.lower_bound_, rtol=1e-12)
    np.testing.assert_allclose(result.lower_bounds, gm.lower_bounds_, rtol=1e-12)
    # rtol=1e-10: fitted parameters after up to ~50 iterations (observed ≤ 1e-13); the
    # uncentred tied/diag/spherical covariance in sklearn loses ~2 digits per M-step.
    p = result.params
    np.testing.assert_allclose(p.weights, gm.weights_, rtol=1e-10)
    np.testing.assert_allclose(p.means, gm.means_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(p.covariances, gm.covariances_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        p.precisions_cholesky, gm.precisions_cholesky_, rtol=1e-10, atol=1e-12
    )


def test_em_float32_data_uses_float32_count_floor():
    rng = np.random.default_rng(14)
    X = make_blobs(rng, n_samples=100, n_features=2).astype(np.float32)
    weights, means, prec_chol = random_params(rng, X.astype(np.float64), "diag", 2)
    init = MixtureParams("diag", weights, means, np.empty(0), prec_chol)
    result = em(X, init, max_iter=1)
    stats = em_stats(X, np.log(weights), means, prec_chol, "diag")
    # exact: em's first step is finalize(em_stats(...), dtype=float32) on the same input
    expected = finalize(stats, dtype=np.float32)
    np.testing.assert_array_equal(result.params.weights, expected.weights)
    np.testing.assert_array_equal(result.params.covariances, expected.covariances)
    assert result.params.means.dtype == np.float64


def test_em_max_iter_zero_returns_init():
    rng = np.random.default_rng(15)
    X = make_blobs(rng, n_samples=50, n_features=2)
    weights, means, prec_chol = random_params(rng, X, "spherical", 2)
    init = MixtureParams("spherical", weights, means, 1 / prec_chol**2, prec_chol)
    result = em(X, init, max_iter=0)
    assert result.n_iter == 0 and not result.converged and result.lower_bounds == []
    assert result.lower_bound == -np.inf
    np.testing.assert_array_equal(result.params.means, means)


# --------------------------------------------------------------------------------------
# k-means


def _sklearn_kmeans(X, centres, max_iter, tol=0.0, sample_weight=None):
    km = KMeans(
        n_clusters=centres.shape[0], init=centres, n_init=1, algorithm="lloyd",
        tol=tol, max_iter=max_iter,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        km.fit(X, sample_weight=sample_weight)
    return km


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("max_iter", [300, 2])
def test_kmeans_lloyd_matches_sklearn(weighted, max_iter):
    rng = np.random.default_rng(16)
    X = make_blobs(rng, n_samples=500, n_features=3, n_blobs=5, spread=4.0)
    init = X[rng.choice(500, 5, replace=False)]
    g = rng.uniform(0.1, 3.0, size=500) if weighted else None

    centres, labels, inertia, n_iter, converged = kmeans_lloyd(
        X, init, max_iter=max_iter, sample_weight=g
    )
    km = _sklearn_kmeans(X, init, max_iter, sample_weight=g)
    # exact: the same assignments (no point is within rounding of a tie on this data)
    np.testing.assert_array_equal(labels, km.labels_)
    assert n_iter == km.n_iter_
    assert converged == (max_iter == 300)
    # rtol=1e-10: sklearn centres X at its mean and sums per thread; float64 means.
    np.testing.assert_allclose(centres, km.cluster_centers_, rtol=1e-10, atol=1e-12)
    # rtol=1e-10: same labels and centres, sklearn expands ‖x‖² - 2x·c + ‖c‖².
    np.testing.assert_allclose(inertia, km.inertia_, rtol=1e-10)


def test_kmeans_lloyd_relative_tol_as_sklearn_scales_it():
    rng = np.random.default_rng(17)
    X = make_blobs(rng, n_samples=400, n_features=2, n_blobs=6, spread=3.0)
    init = X[:6]
    rel_tol = 1e-2
    centres, labels, inertia, n_iter, converged = kmeans_lloyd(
        X, init, tol=np.mean(np.var(X, axis=0)) * rel_tol  # sklearn's _tolerance
    )
    km = _sklearn_kmeans(X, init, 300, tol=rel_tol)
    assert converged
    assert n_iter == km.n_iter_  # exact: the same stopping decision
    np.testing.assert_array_equal(labels, km.labels_)  # exact, as above
    # rtol=1e-10: as in test_kmeans_lloyd_matches_sklearn.
    np.testing.assert_allclose(centres, km.cluster_centers_, rtol=1e-10, atol=1e-12)


def test_kmeans_lloyd_relocates_an_empty_cluster_like_sklearn():
    rng = np.random.default_rng(18)
    X = make_blobs(rng, n_samples=300, n_features=2, n_blobs=3)
    init = np.vstack([X[:3], [[1e3, 1e3]]])  # the last centre attracts no point
    centres, labels, inertia, n_iter, _ = kmeans_lloyd(X, init)
    km = _sklearn_kmeans(X, init, 300)
    np.testing.assert_array_equal(labels, km.labels_)  # exact, as above
    assert n_iter == km.n_iter_
    assert np.unique(labels).size == 4
    # rtol=1e-10: as in test_kmeans_lloyd_matches_sklearn.
    np.testing.assert_allclose(centres, km.cluster_centers_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(inertia, km.inertia_, rtol=1e-10)

    # one iteration: the centres right after the relocation (the relocated point's
    # weight moved out of its old cluster), before later iterations wash it out
    centres1, labels1, *_ = kmeans_lloyd(X, init, max_iter=1)
    km1 = _sklearn_kmeans(X, init, 1)
    np.testing.assert_array_equal(labels1, km1.labels_)  # exact, as above
    # rtol=1e-10: as in test_kmeans_lloyd_matches_sklearn.
    np.testing.assert_allclose(centres1, km1.cluster_centers_, rtol=1e-10, atol=1e-12)


def test_kmeans_plusplus_picks_distinct_data_points():
    rng = np.random.default_rng(19)
    X = make_blobs(rng, n_samples=400, n_features=3, n_blobs=6, spread=50.0)
    centres, indices = kmeans_plusplus(X, 6, random_state=0)
    assert indices.shape == (6,) and np.unique(indices).size == 6
    np.testing.assert_array_equal(centres, X[indices])  # exact copies of data rows
    # deterministic for a given seed
    centres2, indices2 = kmeans_plusplus(X, 6, random_state=0)
    np.testing.assert_array_equal(indices, indices2)
    # well-separated blobs: greedy k-means++ seeds one centre per blob
    labels = KMeans(6, n_init=10, random_state=0).fit(X).labels_
    assert np.unique(labels[indices]).size == 6

    # zero-weight rows carry no probability mass and are never chosen
    g = np.ones(400)
    g[::2] = 0.0
    for seed in range(5):
        _, idx = kmeans_plusplus(X, 6, random_state=seed, sample_weight=g, n_local_trials=1)
        assert np.all(idx % 2 == 1)
    # float32 data: the centres are the float32 rows, returned in float64
    c32, i32 = kmeans_plusplus(X.astype(np.float32), 3, random_state=1)
    np.testing.assert_array_equal(c32, X.astype(np.float32)[i32].astype(np.float64))


def test_kmeans_plusplus_greedy_trials_lower_the_potential():
    """The greedy variant keeps the best of several candidates: on average over seeds
    its potential Σ min_k ‖x - c_k‖² is below vanilla k-means++ (one candidate)."""
    X = np.random.default_rng(20).uniform(size=(300, 2))

    def potential(n_local_trials, seed):
        centres, _ = kmeans_plusplus(X, 8, random_state=seed, n_local_trials=n_local_trials)
        diff = X[:, None, :] - centres[None]
        return np.min(np.sum(diff**2, axis=2), axis=1).sum()

    greedy = np.mean([potential(None, seed) for seed in range(20)])
    vanilla = np.mean([potential(1, seed) for seed in range(20)])
    assert greedy < 0.9 * vanilla
