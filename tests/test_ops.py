"""The native kernels (gmmfast.ops / gmmfast._core) against independent references.

Oracles: :mod:`gmmfast.reference` (float64 NumPy, checked against scikit-learn in
test_reference.py) and scikit-learn's private GaussianMixture helpers. Kernel tests run
for every covariance type, dtype and SIMD variant compiled in and supported by this CPU
(the ``isa`` fixture of conftest.py).

Tolerances (C_TOL = 8; the whole matrix of cases below passes with C_TOL = 1, so the
margin is >= 8x):

- log-densities: the Mahalanobis term is a sum of D squares of entries of (x - μ)ᵀU,
  each a D-term dot product, so its rounding error is ~D·eps relative to the magnitude
  of the log-density: |Δ| <= C_TOL·(D+2)·eps·(1 + max_k |log π_k + log N(x_i|k)|) per
  row. float32 kernels are compared with the float64 reference evaluated on the same
  float32 numbers, so this is the float32 kernel's own error.
- statistics (stats_tolerance): a responsibility exp(w - lse) carries the absolute
  error of w as a relative error, and each sum over rows adds the usual random-walk
  ~sqrt(N)·eps of the sum of the absolute values of its terms:
  |Δ| <= C_TOL·eps·[(D+2)·A(|g|·(1 + max_k|w_ik|)) + sqrt(N)·A(|g|)], A(h) the
  statistic with every term replaced by its absolute value and rows weighted by h
  (conftest.abs_stats), plus 2·tiny(dtype)·A(|g|) for exp underflow. For tied S2, A
  is taken about the mean of the centres, where the kernel accumulates it (see
  abs_stats and test_numerics.py::test_tied_statistics_are_as_accurate_as_...).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gmmfast
from gmmfast import _core, ops
from gmmfast import reference as ref
from gmmfast._types import EMStats, param_shape

from conftest import (
    COVARIANCE_TYPES,
    abs_stats,
    assert_releases_gil,
    assert_stats_close,
    assert_stats_identical,
    eps,
    random_mixture,
    sample_mixture,
)

# (n_samples, n_components, n_features). The kernels work on row tiles of at most 512
# rows (a multiple of 4 SIMD vectors), so 517 and 1031 rows leave partial last tiles
# and span several tiles; 3 < 5 components is K > N; D = 17 exceeds one AVX-512
# float32 vector, D = 9 is not a multiple of the register blocking.
SHAPES = [
    (1, 1, 1),
    (3, 5, 2),
    (67, 3, 1),
    (517, 1, 4),
    (1031, 4, 3),
    (130, 3, 17),
    (67, 2, 9),
]
SHAPE_IDS = [f"N{n}-K{k}-D{d}" for n, k, d in SHAPES]

# rounding-error multiplier of the tolerances (see the module docstring)
C_TOL = 8


def threads_for(n_samples):
    """n_threads for the correctness matrix. The SHAPES with at most 512 rows fit in one
    tile (512 rows at most; >= 192 for the D = 17 shape), which one thread processes
    whatever the count, so they run single-threaded (no OpenMP start-up per call, which
    dominates on a loaded 2-core machine); the multi-tile shapes use the default thread
    count, i.e. the parallel path and its merge of per-thread partials. Independence of
    the thread count is tested in test_numerics.py."""
    return 1 if n_samples <= 512 else None


def kernel_rtol(dtype, n_features):
    """Relative rounding error of a log-density, in units of 1 + max_k |w_ik|."""
    return C_TOL * (n_features + 2) * eps(dtype)


def row_scale(X64, mix64):
    """1 + max_k |w_ik|: the magnitude a row's log-density rounding error scales with."""
    w = ref.log_prob(X64, *mix64.args(), "weighted")
    return 1.0 + np.max(np.abs(np.where(np.isfinite(w), w, 0.0)), axis=1)


def make_problem(rng, covariance_type, shape, dtype, outliers=True):
    N, K, D = shape
    mix = random_mixture(rng, covariance_type, K, D, dtype)
    X = sample_mixture(rng, mix, N, outliers=N // 10 if outliers else 0)
    return X, mix


# ======================================================================================
# log_prob


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_log_prob_matches_reference(isa, covariance_type, dtype, shape, rng):
    X, mix = make_problem(rng, covariance_type, shape, dtype)
    N, K, D = shape
    X64, mix64 = X.astype(np.float64), mix.as64()
    scale = row_scale(X64, mix64)
    tol = kernel_rtol(dtype, D) * scale  # see the module docstring
    for output, out_shape in (("sample", (N,)), ("log_resp", (N, K)), ("weighted", (N, K))):
        got = ops.log_prob(X, *mix.args(), output, n_threads=threads_for(N))
        assert got.dtype == dtype and got.shape == out_shape
        want = ref.log_prob(X64, *mix64.args(), output)
        err = np.abs(got - want)
        bound = tol if output == "sample" else tol[:, None]
        assert np.all(err <= bound), (output, np.max(err / bound))
    # the default output is 'sample'
    np.testing.assert_array_equal(
        ops.log_prob(X, *mix.args()), ops.log_prob(X, *mix.args(), "sample")
    )


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_prob_zero_weight_component(isa, covariance_type, dtype, rng):
    """log π_k = -inf is allowed: that column is -inf, the others are unaffected."""
    X, mix = make_problem(rng, covariance_type, (140, 3, 3), dtype)
    mix.log_weights[1] = -np.inf
    X64, mix64 = X.astype(np.float64), mix.as64()
    tol = kernel_rtol(dtype, 3) * row_scale(X64, mix64)
    for output in ("sample", "log_resp", "weighted"):
        got = ops.log_prob(X, *mix.args(), output)
        want = ref.log_prob(X64, *mix64.args(), output)
        np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
        assert not np.any(np.isnan(got))
        fin = np.isfinite(want)
        t = tol if output == "sample" else np.broadcast_to(tol[:, None], want.shape)
        assert np.all(np.abs(got[fin] - want[fin]) <= t[fin])


# ======================================================================================
# em_stats


def sample_weights(rng, kind, n):
    """None, or "mixed": positive, zero and negative weights (the autograd backward
    passes upstream gradients as sample weights)."""
    if kind is None:
        return None
    g = rng.normal(size=n)
    g[1::3] = 0.0
    return g


def stats_tolerance(X64, centres64, covariance_type, sample_weight, dtype, mix64=None,
                    resp=None):
    """Keyword arguments (rtol, scale, ll_scale, floor, ws_scale) for
    assert_stats_close, see the module docstring:

    |Δ| <= C_TOL·eps·[(D+2)·A(|g|·(1 + max_k|w_ik|)) + sqrt(N)·A(|g|)] + floor,

    A(h) the statistics with every term replaced by its absolute value and rows weighted
    by h (conftest.abs_stats). The first term is the E-step (a responsibility carries
    the absolute error of its log-density as relative error; absent when ``resp`` is
    given), the second the sums over rows (float64 partials over tiles; float32 partial
    sums of <= 64 rows in the float32 kernels; the reference sums in yet another order:
    the usual random-walk ~sqrt(N)·eps of the absolute sum).
    """
    N, D = X64.shape
    g = np.ones(N) if sample_weight is None else np.abs(sample_weight)
    if resp is None:
        R = np.exp(ref.log_prob(X64, *mix64.args(), "log_resp"))
        h = g * row_scale(X64, mix64)
        estep = abs_stats(X64, R, centres64, covariance_type, h)
        ll_scale = (D + 2) * float(np.sum(h)) + np.sqrt(N) * float(
            np.sum(g * np.abs(ref.log_prob(X64, *mix64.args()))))
    else:
        R = resp
        estep = (0.0, 0.0, 0.0)
        ll_scale = 0.0
    summed = abs_stats(X64, R, centres64, covariance_type, g)
    scale = tuple((D + 2) * e + np.sqrt(N) * a for e, a in zip(estep, summed))
    # A responsibility below the smallest normal number of the dtype (1.2e-38 in
    # float32) may come out as zero (exp underflow): at most 2·tiny per term, i.e.
    # 2·tiny times the statistics with every responsibility set to one.
    tiny = float(np.finfo(dtype).tiny)
    ones = np.ones((N, centres64.shape[0]))
    floor = tuple(2 * tiny * a for a in abs_stats(X64, ones, centres64, covariance_type, g))
    return dict(rtol=C_TOL * eps(dtype), scale=scale, ll_scale=ll_scale, floor=floor,
                ws_scale=np.sqrt(N) * float(np.sum(g)))


@pytest.mark.parametrize("weights", [None, "mixed"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_em_stats_matches_reference(isa, covariance_type, dtype, shape, weights, rng):
    X, mix = make_problem(rng, covariance_type, shape, dtype)
    N, K, D = shape
    g = sample_weights(rng, weights, N)
    g = None if g is None else g.astype(dtype)
    # centres different from the means: the general case of the statistics
    centres = (mix.means + rng.normal(size=mix.means.shape)).astype(dtype)

    got = ops.em_stats(X, *mix.args(), centres=centres, sample_weight=g,
                       n_threads=threads_for(N))
    X64, mix64, c64 = X.astype(np.float64), mix.as64(), centres.astype(np.float64)
    g64 = None if g is None else g.astype(np.float64)
    want = ref.em_stats(X64, *mix64.args(), centres=c64, sample_weight=g64)

    assert isinstance(got, EMStats)
    assert got.s2.shape == param_shape(covariance_type, K, D)
    assert_stats_close(got, want, **stats_tolerance(X64, c64, covariance_type, g64, dtype, mix64))
    assert got.weight_sum == pytest.approx(N if g is None else float(np.sum(g64)), abs=1e-9)


def test_em_stats_default_centres_are_the_means(isa, covariance_type, dtype, rng):
    X, mix = make_problem(rng, covariance_type, (600, 3, 4), dtype)
    got = ops.em_stats(X, *mix.args())
    # exact: centres=None means centres=means, one code path
    assert_stats_identical(got, ops.em_stats(X, *mix.args(), centres=mix.means))
    X64, mix64 = X.astype(np.float64), mix.as64()
    want = ref.em_stats(X64, *mix64.args())
    assert_stats_close(got, want, **stats_tolerance(X64, mix64.means, covariance_type, None,
                                                    dtype, mix64))


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_em_stats_given_resp_and_labels(isa, covariance_type, dtype, shape, weighted, rng):
    """resp= and labels= replace the E-step; labels equal one-hot resp."""
    X, mix = make_problem(rng, covariance_type, shape, dtype)
    N, K, D = shape
    g = sample_weights(rng, "mixed" if weighted else None, N)
    g = None if g is None else g.astype(dtype)
    g64 = None if g is None else g.astype(np.float64)
    centres = (mix.means + rng.normal(size=mix.means.shape)).astype(dtype)
    X64, c64 = X.astype(np.float64), centres.astype(np.float64)

    R = rng.uniform(size=(N, K))  # rows need not sum to one
    R[rng.uniform(size=(N, K)) < 0.2] = 0.0
    R = R.astype(dtype)
    got = ops.em_stats(X, *mix.args(), centres=centres, sample_weight=g, resp=R,
                       n_threads=threads_for(N))
    want = ref.em_stats(X64, *mix.as64().args(), centres=c64, sample_weight=g64,
                        resp=R.astype(np.float64))
    assert got.log_likelihood == 0.0
    assert got.weight_sum == pytest.approx(N if g is None else float(np.sum(g64)), abs=1e-9)
    # no E-step: only the products and the sums over rows (stats_tolerance)
    tol = stats_tolerance(X64, c64, covariance_type, g64, dtype, resp=R.astype(np.float64))
    assert_stats_close(got, want, **tol)

    labels = rng.integers(K, size=N)
    onehot = np.zeros((N, K), dtype=dtype)
    onehot[np.arange(N), labels] = 1
    tol = stats_tolerance(X64, c64, covariance_type, g64, dtype,
                          resp=onehot.astype(np.float64))
    got_l = ops.em_stats(X, *mix.args(), centres=centres, sample_weight=g, labels=labels,
                         n_threads=threads_for(N))
    want_l = ref.em_stats(X64, *mix.as64().args(), centres=c64, sample_weight=g64,
                          labels=labels)
    assert_stats_close(got_l, want_l, **tol)
    got_1h = ops.em_stats(X, *mix.args(), centres=centres, sample_weight=g, resp=onehot,
                          n_threads=threads_for(N))
    assert_stats_close(got_l, got_1h, **tol)
    # the mixture is not read with resp/labels: garbage parameters of the right K work
    garbage = ops.em_stats(
        X, np.full(K, np.nan), np.full((K, D), np.nan),
        np.full(param_shape(covariance_type, K, D), -1.0), covariance_type,
        centres=centres, sample_weight=g, labels=labels, n_threads=threads_for(N),
    )
    assert_stats_identical(garbage, got_l)


@pytest.mark.parametrize("source", ["resp", "labels"])
def test_em_stats_given_resp_rejects_nonfinite_X(source):
    """A NaN in X with resp=/labels= must raise like the E-step path does, not return
    NaN statistics (a silent NaN is a bug)."""
    X = np.random.default_rng(0).normal(size=(20, 3))
    X[5, 1] = np.nan
    kw = {"resp": np.full((20, 2), 0.5)} if source == "resp" else {"labels": np.zeros(20, int)}
    with pytest.raises(ValueError, match=r"NaN.*row 5"):
        ops.em_stats(X, np.zeros(2), np.zeros((2, 3)), np.ones((2, 3)), "diag",
                     centres=np.zeros((2, 3)), **kw)


# ======================================================================================
# finalize


@pytest.mark.parametrize("reg_covar", [1e-6, 1e-3])
def test_finalize_matches_reference(covariance_type, dtype, reg_covar, rng):
    """Native finalize (float64 C++) vs the reference M-step, from the same statistics,
    with an empty component (nk = 0: scikit-learn's 10·eps floor) and centres away
    from the means."""
    X, mix = make_problem(rng, covariance_type, (400, 4, 3), np.float64)
    R = np.exp(ref.log_prob(X, *mix.args(), "log_resp"))
    R[:, 2] = 0.0
    centres = mix.means + rng.normal(size=mix.means.shape)
    stats = ref.em_stats(X, *mix.args(), centres=centres, resp=R)
    got = ops.finalize(stats, reg_covar, dtype)
    want = ref.finalize(stats, reg_covar, dtype)
    # rtol=1e-12: the same float64 formulas from the same statistics; only the order of
    # operations (and LAPACK vs hand-written Cholesky) differs, on covariances with
    # condition number <= 4.
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == np.float64 and a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(
        np.broadcast_to(got.log_det_cholesky, (4,)),
        np.broadcast_to(want.log_det_cholesky, (4,)), rtol=1e-12, atol=1e-12,
    )
    assert got.weights.sum() == pytest.approx(1.0, rel=1e-15)


def test_precision_cholesky_matches_reference(covariance_type, rng):
    cov = random_mixture(rng, covariance_type, 3, 4).covariances
    got_p, got_ld = ops.precision_cholesky(cov, covariance_type, n_features=4)
    want_p, want_ld = ref.precision_cholesky(cov, covariance_type, n_features=4)
    # rtol=1e-12: float64 Cholesky + triangular inverse of condition-number-4 matrices
    np.testing.assert_allclose(got_p, want_p, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(got_ld, want_ld, rtol=1e-12, atol=1e-13)
    assert np.shape(got_ld) == np.shape(want_ld)


# ======================================================================================
# against scikit-learn's private helpers directly


def test_log_prob_weighted_matches_sklearn(isa, covariance_type, rng):
    pytest.importorskip("sklearn")
    from sklearn.mixture._gaussian_mixture import _estimate_log_gaussian_prob

    X, mix = make_problem(rng, covariance_type, (300, 4, 5), np.float64)
    got = ops.log_prob(X, *mix.args(), "weighted")
    want = _estimate_log_gaussian_prob(
        X, mix.means, mix.precisions_cholesky, covariance_type
    ) + mix.log_weights
    # 1e-11·(1 + max|w|) per row: scikit-learn expands X U - μ U (diag/spherical:
    # x²p - 2xμp + μ²p), losing ~3 digits to cancellation on data of magnitude ~10,
    # with outliers ~20 from the means.
    tol = 1e-11 * row_scale(X, mix)
    assert np.all(np.abs(got - want) <= tol[:, None])


@pytest.mark.parametrize("empty_component", [False, True])
def test_finalize_matches_sklearn_m_step(covariance_type, empty_component, rng):
    pytest.importorskip("sklearn")
    from sklearn.mixture._gaussian_mixture import (
        _compute_log_det_cholesky,
        _compute_precision_cholesky,
        _estimate_gaussian_parameters,
    )

    X, mix = make_problem(rng, covariance_type, (500, 3, 4), np.float64)
    R = np.exp(ref.log_prob(X, *mix.args(), "log_resp"))
    if empty_component:
        # rows must still sum to one: sklearn's tied covariance uses XᵀX - Σ n_k μ_k μ_kᵀ
        R[:, 1] = 0.0
        R[:, [0, 2]] += 1e-3
        R /= R.sum(axis=1, keepdims=True)
    reg = 1e-4
    centres = mix.means + rng.normal(size=mix.means.shape)
    got = ops.finalize(ops.em_stats(X, *mix.args(), resp=R, centres=centres), reg)

    nk, means, covariances = _estimate_gaussian_parameters(X, R, reg, covariance_type)
    weights = nk / nk.sum()  # sklearn's _m_step (nk already includes 10·eps)
    prec_chol = _compute_precision_cholesky(covariances, covariance_type)
    log_det = _compute_log_det_cholesky(prec_chol, covariance_type, 4)
    # rtol=1e-10: sklearn forms tied/diag/spherical covariances as E[x²] - μ² (loses
    # ~(|μ|/σ)² ≈ 2 digits here) and inverts with a general solve; the statistics here
    # are centred at points ~1 away from the means (the cancellation finalize undoes is
    # of that size, ~1 digit).
    np.testing.assert_allclose(got.weights, weights, rtol=1e-12)
    np.testing.assert_allclose(got.means, means, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.covariances, covariances, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.precisions_cholesky, prec_chol, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        np.broadcast_to(got.log_det_cholesky, np.shape(log_det) or (3,)),
        np.broadcast_to(log_det, np.shape(log_det) or (3,)), rtol=1e-10, atol=1e-12,
    )


# ======================================================================================
# EM driver


def well_separated(rng, n_samples, n_features, n_blobs, spread=3.0, offset=0.0):
    centres = rng.normal(scale=spread, size=(n_blobs, n_features)) + offset
    labels = rng.integers(n_blobs, size=n_samples)
    A = rng.normal(size=(n_blobs, n_features, n_features)) * 0.4 + np.eye(n_features)
    return centres[labels] + np.einsum("nd,nde->ne", rng.normal(size=(n_samples, n_features)),
                                       A[labels])


def test_em_matches_reference_float64(covariance_type, rng):
    X = well_separated(rng, 600, 3, 3, spread=2.0)
    init = ops.initial_params(X, 3, covariance_type, random_state=0)
    got = ops.em(X, init, tol=1e-6, max_iter=200)
    want = ref.em(X, init, tol=1e-6, max_iter=200)
    assert got.converged and want.converged
    # exact: the same stopping decisions (lower bounds agree to ~1e-14, far below the
    # distance of any |change| from tol on this data)
    assert got.n_iter == want.n_iter
    # rtol=1e-10: per-iteration differences ~1e-15 (summation order), contracted by EM
    # (observed <= 5e-15 after ~15 iterations)
    np.testing.assert_allclose(got.lower_bounds, want.lower_bounds, rtol=1e-10)
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        np.testing.assert_allclose(getattr(got.params, name), getattr(want.params, name),
                                   rtol=1e-10, atol=1e-12, err_msg=name)


def test_em_matches_reference_float32(covariance_type, rng):
    X = well_separated(rng, 600, 3, 3, spread=2.0).astype(np.float32)
    init = ops.initial_params(X, 3, covariance_type, random_state=0)
    # The n_iter check needs a tol that no |change| of the lower bound comes within 1e-5
    # of (50x the float32 error of a lower bound, observed <= 2e-7): pick the first such
    # tol from a fixed list, using the reference's changes (float64 on the same X).
    changes = np.abs(np.diff(np.r_[-np.inf, ref.em(X, init, tol=0.0, max_iter=60).lower_bounds]))
    tol = next((t for t in (1e-3, 3e-4, 1e-4, 3e-3, 3e-5) if np.all(np.abs(changes - t) > 1e-5)
                and np.any(changes < t)), None)
    assert tol is not None, changes
    got = ops.em(X, init, tol=tol, max_iter=200)
    want = ref.em(X, init, tol=tol, max_iter=200)  # float64 arithmetic on the same X
    assert got.n_iter == want.n_iter and got.converged and want.converged
    assert got.params.means.dtype == np.float64
    # atol=rtol=2e-5: each E-step is accurate to ~(D+2)·eps32·(1 + |w|) ≈ 1e-5 relative
    # in the worst case (observed ~2e-7 absolute on parameters of size ~1-5); EM
    # contracts these errors at every iteration rather than accumulating them.
    np.testing.assert_allclose(got.lower_bounds, want.lower_bounds, rtol=2e-5)
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        np.testing.assert_allclose(getattr(got.params, name), getattr(want.params, name),
                                   rtol=2e-5, atol=2e-5, err_msg=name)


@pytest.mark.parametrize("tol, max_iter", [(1e-6, 300), (0.0, 8)])
def test_em_matches_sklearn_gaussian_mixture(covariance_type, tol, max_iter, rng):
    pytest.importorskip("sklearn")
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    # overlapping blobs: soft responsibilities and more than a handful of iterations
    X = well_separated(rng, 400, 3, 3, spread=1.5)
    init = ops.initial_params(X, 3, covariance_type, random_state=1)
    U = init.precisions_cholesky
    precisions = {
        "full": lambda: U @ U.transpose(0, 2, 1),
        "tied": lambda: U @ U.T,
    }.get(covariance_type, lambda: U**2)()
    reg = 1e-5
    gm = GaussianMixture(
        n_components=3, covariance_type=covariance_type, weights_init=init.weights,
        means_init=init.means, precisions_init=precisions, tol=tol, max_iter=max_iter,
        reg_covar=reg,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X)
    got = ops.em(X, init, tol=tol, max_iter=max_iter, reg_covar=reg)

    # exact: the same stopping decision (lower bounds agree to ~1e-14)
    assert got.n_iter == gm.n_iter_
    assert got.converged == gm.converged_ == (tol > 0)
    # rtol=1e-12: the mean log-likelihood; sklearn rebuilds U from precisions_init by a
    # flipped Cholesky (equal to ours to ~1e-15) and sums in another order.
    np.testing.assert_allclose(got.lower_bound, gm.lower_bound_, rtol=1e-12)
    # rtol=1e-10: parameters after up to ~50 M-steps; sklearn's uncentred
    # tied/diag/spherical covariances lose ~2 digits per M-step (observed <= 1e-13).
    p = got.params
    np.testing.assert_allclose(p.weights, gm.weights_, rtol=1e-10)
    np.testing.assert_allclose(p.means, gm.means_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(p.covariances, gm.covariances_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(p.precisions_cholesky, gm.precisions_cholesky_,
                               rtol=1e-10, atol=1e-12)


def test_em_callback_and_max_iter_zero(rng):
    X = well_separated(rng, 200, 2, 2)
    init = ops.initial_params(X, 2, "diag", random_state=0)
    seen = []
    res = ops.em(X, init, max_iter=5, tol=0.0, callback=lambda *a: seen.append(a))
    assert [s[0] for s in seen] == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal([s[1] for s in seen], res.lower_bounds)
    zero = ops.em(X, init, max_iter=0)
    assert zero.n_iter == 0 and not zero.converged and zero.lower_bound == -np.inf
    np.testing.assert_array_equal(zero.params.means, init.means)


# ======================================================================================
# layouts and dtypes


def test_non_contiguous_input_equals_contiguous_copy(isa, covariance_type, rng):
    X, mix = make_problem(rng, covariance_type, (400, 3, 5), np.float64)
    views = {
        "fortran": np.asfortranarray(X),
        "strided": np.repeat(X, 2, axis=0)[::2],
        "column-slice": np.hstack([X, X])[:, :5],
    }
    want_lp = ops.log_prob(X, *mix.args(), "log_resp")
    g = np.linspace(0, 2, 400)
    want_st = ops.em_stats(X, *mix.args(), sample_weight=g)
    for name, V in views.items():
        assert not V.flags.c_contiguous, name
        np.testing.assert_array_equal(V, X)
        # exact: a non-contiguous input is copied to C order once, then the same kernel
        np.testing.assert_array_equal(ops.log_prob(V, *mix.args(), "log_resp"), want_lp)
        assert_stats_identical(
            ops.em_stats(V, *mix.args(), sample_weight=np.repeat(g, 2)[::2]), want_st
        )
    # non-contiguous parameters too
    lw, mu, pc, ct = mix.args()
    pc_f = np.asfortranarray(pc) if pc.ndim > 1 else pc
    np.testing.assert_array_equal(
        ops.log_prob(X, lw[::-1][::-1], np.asfortranarray(mu), pc_f, ct, "log_resp"), want_lp
    )


@pytest.mark.parametrize("int_dtype", [np.int32, np.int64, np.uint8, np.bool_])
def test_integer_input_is_converted_to_float64(int_dtype, rng):
    mix = random_mixture(rng, "full", 3, 4, spread=2.0, offset=1.0)
    Xi = rng.integers(0, 4, size=(300, 4)).astype(int_dtype)
    Xf = Xi.astype(np.float64)
    got = ops.log_prob(Xi, *mix.args(), "weighted")
    assert got.dtype == np.float64
    # exact: the integers are converted to float64 (exactly) before the same kernel
    np.testing.assert_array_equal(got, ops.log_prob(Xf, *mix.args(), "weighted"))
    assert_stats_identical(ops.em_stats(Xi, *mix.args()), ops.em_stats(Xf, *mix.args()))
    # float32 parameters with integer data: evaluated in float64 (the data's dtype)
    assert ops.log_prob(Xi, *mix.astype(np.float32).args()).dtype == np.float64


def test_float16_input_runs_in_float64(rng):
    mix = random_mixture(rng, "diag", 2, 3)
    X = sample_mixture(rng, mix, 50).astype(np.float16)
    got = ops.log_prob(X, *mix.args())
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, ops.log_prob(X.astype(np.float64), *mix.args()))


# ======================================================================================
# the GIL


def test_em_stats_releases_the_gil():
    """A long em_stats in a worker thread leaves the main thread running Python
    (conftest.assert_releases_gil says how that is told apart from a held GIL)."""
    rng = np.random.default_rng(0)
    mix = random_mixture(rng, "full", 64, 32)
    X = rng.normal(scale=4.0, size=(60_000, 32))  # ~0.2-0.3 s on one core
    assert_releases_gil("em_stats", lambda: ops.em_stats(X, *mix.args(), n_threads=1),
                        min_duration=0.05, min_iterations=1000)


# ======================================================================================
# build_info


def test_build_info():
    info = gmmfast.build_info()
    expected = {"version", "compiler", "openmp", "max_threads", "isa", "compiled_isas",
                "build_type", "cuda_compiled", "cuda_available"}
    assert expected <= set(info)
    assert info["version"] == gmmfast.__version__ == _core.__version__
    assert isinstance(info["compiler"], str) and info["compiler"].strip()
    assert info["openmp"] is None or (isinstance(info["openmp"], int)
                                      and 199810 <= info["openmp"] <= 210000)
    assert isinstance(info["max_threads"], int) and info["max_threads"] >= 1
    assert "baseline" in info["compiled_isas"]
    assert info["compiled_isas"] == _core.compiled_isas()
    assert info["isa"] == _core.active_isa() and info["isa"] in info["compiled_isas"]
    assert info["build_type"] in ("release", "debug")
    assert isinstance(info["cuda_compiled"], bool)
    assert info["cuda_available"] is gmmfast.cuda_available()
    assert not info["cuda_available"] or info["cuda_compiled"]
    if info["openmp"] is None:
        assert info["max_threads"] == 1


def test_set_isa_rejects_unknown_variant():
    before = _core.active_isa()
    assert _core.set_isa("no-such-isa") is False
    assert _core.active_isa() == before


# ======================================================================================
# bad input: a ValueError naming the argument, never a crash


def _bad_input_cases():
    """(kernel, spoil, match) for every kind of bad input: ``spoil(X, mix)`` gets valid
    data X (10 x 3) and a valid 2-component full mixture, and returns the arguments of
    log_prob / em_stats to replace; ``match`` is a fragment of the expected message,
    naming the argument."""
    cases = []

    def add(name, match, fn, kernels=("log_prob", "em_stats")):
        for kernel in kernels:
            cases.append(pytest.param(kernel, fn, match, id=f"{kernel}-{name}"))

    add("X-nan", r"X contains NaN \(first at row 5\)",
        lambda X, m: {"X": _spoil(X, (5, 1), np.nan)})
    add("X-nan-and-inf", r"X contains NaN \(first at row 2\)",
        lambda X, m: {"X": _spoil(_spoil(X, (2, 0), np.inf), (2, 2), np.nan)})
    add("X-inf", r"X contains infinity or a value too large .*\(first at row 7\)",
        lambda X, m: {"X": _spoil(X, (7, 0), np.inf)})
    add("X-neginf", r"X contains infinity or a value too large .*\(first at row 7\)",
        lambda X, m: {"X": _spoil(X, (7, 2), -np.inf)})
    add("X-1d", r"X must be a 2-D array", lambda X, m: {"X": X[:, 0]})
    add("X-3d", r"X must be a 2-D array", lambda X, m: {"X": X[None]})
    add("X-0d", r"X must be a 2-D array", lambda X, m: {"X": np.float64(1.0)})
    add("X-no-rows", r"X must be non-empty, got shape \(0, 3\)", lambda X, m: {"X": X[:0]})
    add("X-no-columns", r"X must be non-empty, got shape \(10, 0\)",
        lambda X, m: {"X": X[:, :0], "means": m.means[:, :0],
                      "precisions_cholesky": m.precisions_cholesky[:, :0, :0]})
    add("X-complex", r"X must be a real numeric array, got dtype complex",
        lambda X, m: {"X": X + 0j})
    add("X-object", r"X must be a real numeric array, got dtype object",
        lambda X, m: {"X": X.astype(object)})
    add("X-string", r"X must be a real numeric array, got dtype <U",
        lambda X, m: {"X": X.astype(str)})
    add("X-list-of-strings", r"X must be a real numeric array",
        lambda X, m: {"X": [["a", "b", "c"]] * 10})
    add("means-wrong-D",
        r"means must have shape \(n_components, n_features\) = \(2, 3\), got \(2, 2\)",
        lambda X, m: {"means": m.means[:, :2]})
    add("means-1d", r"means must have shape", lambda X, m: {"means": m.means[0]})
    # K is read from log_weights: the means are then reported with the wrong shape
    add("log_weights-fewer-than-means",
        r"means must have shape \(n_components, n_features\) = \(1, 3\), got \(2, 3\)",
        lambda X, m: {"log_weights": m.log_weights[:1]})
    add("log_weights-more-than-means",
        r"means must have shape \(n_components, n_features\) = \(3, 3\), got \(2, 3\)",
        lambda X, m: {"log_weights": np.r_[m.log_weights, 0.0]})
    add("log_weights-2d", r"log_weights must be a non-empty 1-D array",
        lambda X, m: {"log_weights": m.log_weights[None]})
    add("log_weights-empty", r"log_weights must be a non-empty 1-D array",
        lambda X, m: {"log_weights": m.log_weights[:0], "means": m.means[:0],
                       "precisions_cholesky": m.precisions_cholesky[:0]})
    add("precisions_cholesky-shape",
        r"precisions_cholesky must have shape \(n_components, n_features, n_features\) "
        r"= \(2, 3, 3\), got \(3, 3\)",
        lambda X, m: {"precisions_cholesky": m.precisions_cholesky[0]})
    add("precisions_cholesky-nonpositive-diagonal",
        r"precisions_cholesky\[1\] must have a positive diagonal .*entry \[2, 2\]",
        lambda X, m: {"precisions_cholesky": _spoil(m.precisions_cholesky, (1, 2, 2), 0)})
    add("precisions_cholesky-negative-diagonal",
        r"precisions_cholesky\[0\] must have a positive diagonal",
        lambda X, m: {"precisions_cholesky": _spoil(m.precisions_cholesky, (0, 0, 0), -1)})
    add("precisions_cholesky-lower-triangle",
        r"precisions_cholesky\[1\] must be upper triangular .*entry \[2, 0\] is non-zero",
        lambda X, m: {"precisions_cholesky": _spoil(m.precisions_cholesky, (1, 2, 0), 0.1)})
    add("precisions_cholesky-transposed", r"must be upper triangular",
        lambda X, m: {"precisions_cholesky": m.precisions_cholesky.transpose(0, 2, 1)})
    add("precisions_cholesky-nan", r"precisions_cholesky\[0\] contains NaN or infinity",
        lambda X, m: {"precisions_cholesky": _spoil(m.precisions_cholesky, (0, 0, 1), np.nan)})
    add("precisions_cholesky-string", r"precisions_cholesky must be a real numeric array",
        lambda X, m: {"precisions_cholesky": m.precisions_cholesky.astype(str)})
    add("means-nan", r"means\[1\] contains NaN or infinity",
        lambda X, m: {"means": _spoil(m.means, (1, 2), np.nan)})
    add("means-inf", r"means\[0\] contains NaN or infinity",
        lambda X, m: {"means": _spoil(m.means, (0, 0), -np.inf)})
    add("means-complex", r"means must be a real numeric array, got dtype complex",
        lambda X, m: {"means": m.means + 1j})
    add("means-object", r"means must be a real numeric array, got dtype object",
        lambda X, m: {"means": m.means.astype(object)})
    add("log_weights-nan", r"log_weights\[1\] is NaN",
        lambda X, m: {"log_weights": _spoil(m.log_weights, (1,), np.nan)})
    add("log_weights-plus-inf", r"log_weights\[0\] is \+inf",
        lambda X, m: {"log_weights": _spoil(m.log_weights, (0,), np.inf)})
    add("log_weights-all-minus-inf", r"all log_weights are -inf",
        lambda X, m: {"log_weights": np.full(2, -np.inf)})
    add("log_weights-string", r"log_weights must be a real numeric array",
        lambda X, m: {"log_weights": np.array(["a", "b"])})
    add("covariance_type",
        r"covariance_type must be one of 'full', 'tied', 'diag', 'spherical', got 'Full'",
        lambda X, m: {"covariance_type": "Full"})
    add("covariance_type-none", r"covariance_type must be one of",
        lambda X, m: {"covariance_type": None})
    add("output", r"output must be one of 'sample', 'log_resp', 'weighted', got 'proba'",
        lambda X, m: {"output": "proba"}, kernels=("log_prob",))
    add("n_threads-negative", r"n_threads must be None or an integer >= 0, got -1",
        lambda X, m: {"n_threads": -1})
    add("n_threads-float", r"n_threads must be None or an integer >= 0, got 1.5",
        lambda X, m: {"n_threads": 1.5})
    # em_stats only
    es = ("em_stats",)
    add("labels-too-large", r"labels must lie in \[0, n_components\) = \[0, 2\), but entry 3 is 2",
        lambda X, m: {"labels": _spoil(np.zeros(10, int), (3,), 2)}, es)
    add("labels-negative", r"labels must lie in \[0, n_components\).*entry 0 is -1",
        lambda X, m: {"labels": _spoil(np.zeros(10, int), (0,), -1)}, es)
    add("labels-float", r"labels must be an integer array",
        lambda X, m: {"labels": np.zeros(10)}, es)
    add("labels-shape", r"labels must have shape \(n_samples,\) = \(10,\)",
        lambda X, m: {"labels": np.zeros(9, int)}, es)
    add("resp-negative", r"resp must be finite and non-negative, but entry \[4, 1\]",
        lambda X, m: {"resp": _spoil(np.ones((10, 2)), (4, 1), -0.5)}, es)
    add("resp-nan", r"resp must be finite and non-negative, but entry \[2, 0\]",
        lambda X, m: {"resp": _spoil(np.ones((10, 2)), (2, 0), np.nan)}, es)
    add("resp-shape", r"resp must have shape \(n_samples, n_components\) = \(10, 2\)",
        lambda X, m: {"resp": np.ones((10, 3))}, es)
    add("resp-and-labels", r"at most one of resp and labels",
        lambda X, m: {"resp": np.ones((10, 2)), "labels": np.zeros(10, int)}, es)
    add("sample_weight-nan", r"sample_weight must be finite, but entry 3 is nan",
        lambda X, m: {"sample_weight": _spoil(np.ones(10), (3,), np.nan)}, es)
    add("sample_weight-inf", r"sample_weight must be finite, but entry 0 is inf",
        lambda X, m: {"sample_weight": _spoil(np.ones(10), (0,), np.inf)}, es)
    add("sample_weight-shape", r"sample_weight must have shape \(n_samples,\) = \(10,\)",
        lambda X, m: {"sample_weight": np.ones(11)}, es)
    add("sample_weight-complex", r"sample_weight must be a real numeric array",
        lambda X, m: {"sample_weight": np.ones(10) + 0j}, es)
    add("centres-shape", r"centres must have shape \(n_components, n_features\) = \(2, 3\)",
        lambda X, m: {"centres": m.means[:, :2]}, es)
    add("centres-nan", r"centres must be finite",
        lambda X, m: {"centres": _spoil(m.means, (1, 1), np.nan)}, es)
    return cases


def _spoil(a, index, value):
    """A copy of ``a`` (same dtype; integers become float64 for a non-integer value)
    with ``a[index] = value``."""
    a = np.array(a)
    if a.dtype.kind in "iub" and not float(value).is_integer():
        a = a.astype(np.float64)
    a[index] = value
    return a


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kernel, spoil, match", _bad_input_cases())
def test_bad_input_raises_value_error(kernel, spoil, match, dtype):
    rng = np.random.default_rng(0)
    mix = random_mixture(rng, "full", 2, 3, dtype)
    X = sample_mixture(rng, mix, 10)
    args = dict(zip(("X", "log_weights", "means", "precisions_cholesky", "covariance_type"),
                    (X, *mix.args())))
    args.update(spoil(X, mix))
    fn = ops.log_prob if kernel == "log_prob" else ops.em_stats
    with pytest.raises(ValueError, match=match):
        fn(**args)


@pytest.mark.parametrize("covariance_type, index, value, match", [
    ("tied", (1, 0), 0.1, r"precisions_cholesky must be upper triangular .*entry \[1, 0\]"),
    ("tied", (1, 0), np.nan, r"precisions_cholesky contains NaN or infinity"),
    ("tied", (2, 2), 0.0, r"precisions_cholesky must have a positive diagonal .*\[2, 2\]"),
    ("tied", (2, 2), -1.0, r"precisions_cholesky must have a positive diagonal .*\[2, 2\]"),
    ("tied", (0, 0), np.inf, r"precisions_cholesky contains NaN or infinity"),
    ("diag", (1, 2), 0.0, r"precisions_cholesky must be finite and positive, but entry 5"),
    ("diag", (1, 2), -1.0, r"precisions_cholesky must be finite and positive, but entry 5"),
    ("diag", (0, 1), np.nan, r"precisions_cholesky must be finite and positive, but entry 1"),
    ("spherical", (1,), 0.0, r"precisions_cholesky must be finite and positive, but entry 1"),
    ("spherical", (1,), -2.0, r"precisions_cholesky must be finite and positive, but entry 1"),
    ("spherical", (0,), np.inf, r"precisions_cholesky must be finite and positive, but entry 0"),
    ("diag", None, None, r"precisions_cholesky must have shape \(n_components, n_features\)"),
    ("spherical", None, None, r"precisions_cholesky must have shape \(n_components,\)"),
    ("tied", None, None, r"precisions_cholesky must have shape \(n_features, n_features\)"),
])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bad_precisions_cholesky_other_types(covariance_type, index, value, match, dtype):
    rng = np.random.default_rng(1)
    mix = random_mixture(rng, covariance_type, 2, 3, dtype)
    X = sample_mixture(rng, mix, 10)
    lw, mu, pc, ct = mix.args()
    bad = pc[..., :2] if index is None else _spoil(pc, index, value)
    if index is None and covariance_type == "spherical":
        bad = pc[:1]
    for fn in (ops.log_prob, ops.em_stats):
        with pytest.raises(ValueError, match=match):
            fn(X, lw, mu, bad, ct)


@pytest.mark.parametrize("call, match", [
    pytest.param(lambda X: ops.kmeans(X, 11), r"n_samples=10 should be >= n_clusters=11",
                 id="kmeans-too-many-clusters"),
    pytest.param(lambda X: ops.kmeans(X, 0), r"n_clusters must be >= 1", id="kmeans-zero"),
    pytest.param(lambda X: ops.kmeans_plusplus(X, 11),
                 r"n_clusters must be in \[1, n_samples\] = \[1, 10\], got 11",
                 id="kmeanspp-too-many"),
    pytest.param(lambda X: ops.kmeans_lloyd(X, np.zeros((11, 3))),
                 r"n_samples=10 should be >= n_clusters=11", id="lloyd-too-many"),
    pytest.param(lambda X: ops.kmeans_lloyd(X, np.zeros((2, 2))),
                 r"centres must have shape \(n_clusters, n_features\)", id="lloyd-centres-D"),
    pytest.param(lambda X: ops.kmeans_lloyd(X, np.full((2, 3), np.nan)),
                 r"centres must be finite", id="lloyd-centres-nan"),
    pytest.param(lambda X: ops.kmeans_lloyd(X, X[:2], max_iter=0), r"max_iter must be >= 1",
                 id="lloyd-max_iter"),
    pytest.param(lambda X: ops.kmeans(X, 2, sample_weight=-np.ones(10)),
                 r"sample_weight must be non-negative", id="kmeans-negative-weight"),
    pytest.param(lambda X: ops.kmeans_plusplus(X, 2, sample_weight=np.zeros(10)),
                 r"sample_weight must not sum to zero", id="kmeanspp-zero-weight"),
    pytest.param(lambda X: ops.kmeans_plusplus(X, 2,
                                               sample_weight=_spoil(np.ones(10), (4,), np.nan)),
                 r"sample_weight must be finite, but entry 4", id="kmeanspp-nan-weight"),
    pytest.param(lambda X: ops.kmeans_plusplus(X, 2, sample_weight=np.ones(9)),
                 r"sample_weight must have shape \(n_samples,\) = \(10,\), got \(9,\)",
                 id="kmeanspp-weight-shape"),
    pytest.param(lambda X: ops.kmeans(X, 2, init="random", sample_weight=_spoil(np.ones(10), (2,), np.inf)),
                 r"sample_weight must be finite, but entry 2", id="kmeans-random-inf-weight"),
    # the native seeding takes its random numbers from the caller: checked there too
    pytest.param(lambda X: _core.kmeans_plusplus(X, 2, None, 10, np.zeros(2), 2, 0),
                 r"first must be a row index in \[0, 10\), got 10", id="kmeanspp-core-first"),
    pytest.param(lambda X: _core.kmeans_plusplus(X, 2, None, 0, np.zeros(3), 2, 0),
                 r"uniforms must have shape \(\(n_clusters - 1\) \* n_local_trials,\) = \(2,\), got \(3,\)",
                 id="kmeanspp-core-uniforms-shape"),
    pytest.param(lambda X: _core.kmeans_plusplus(X, 2, None, 0, np.array([np.nan, 0.5]), 2, 0),
                 r"uniforms must lie in \[0, 1\]", id="kmeanspp-core-uniforms-nan"),
    pytest.param(lambda X: _core.kmeans_plusplus(X, 2, None, 0, np.array(["a", "b"]), 2, 0),
                 r"uniforms must be a real numeric array", id="kmeanspp-core-uniforms-dtype"),
    pytest.param(lambda X: ops.kmeans(_spoil(X, (6, 2), np.nan), 2),
                 r"X contains NaN \(first at row 6\)", id="kmeans-X-nan"),
    pytest.param(lambda X: ops.kmeans_plusplus(_spoil(X, (3, 0), np.inf), 2),
                 r"X contains infinity .*\(first at row 3\)", id="kmeanspp-X-inf"),
    pytest.param(lambda X: ops.kmeans_lloyd(_spoil(X, (9, 1), np.nan), X[:2]),
                 r"X contains NaN \(first at row 9\)", id="lloyd-X-nan"),
    pytest.param(lambda X: ops.kmeans(X + 0j, 2), r"X must be a real numeric array",
                 id="kmeans-X-complex"),
    pytest.param(lambda X: ops.kmeans(X, 2, n_threads=-2), r"n_threads must be",
                 id="kmeans-n_threads"),
    pytest.param(lambda X: ops.initial_params(X, 11), r"n_components must be in \[1, n_samples\]",
                 id="initial_params-too-many"),
    pytest.param(lambda X: ops.initial_params(X, 2, init_params="kmeans++"),
                 r"init_params must be one of", id="initial_params-bad-init"),
    pytest.param(lambda X: ops.initial_params(X, 2, "ful"), r"covariance_type must be one of",
                 id="initial_params-bad-type"),
    pytest.param(lambda X: ops.em(X, "init"), r"init must be a MixtureParams", id="em-init"),
    pytest.param(lambda X: ops.em(X, ops.initial_params(X, 2, "diag", random_state=0),
                                  max_iter=-1), r"max_iter must be >= 0", id="em-max_iter"),
    pytest.param(lambda X: ops.finalize("stats"), r"stats must be an EMStats", id="finalize-type"),
    pytest.param(lambda X: ops.finalize(ops.em_stats(X, np.zeros(1), X[:1], np.ones(1),
                                                     "spherical"), reg_covar=-1.0),
                 r"reg_covar must be a finite number >= 0", id="finalize-reg_covar"),
    pytest.param(lambda X: ops.finalize(EMStats("diag", np.zeros((1, 3)), 0.0, 1.0,
                                                np.ones(1), np.full((1, 3), np.nan),
                                                np.ones((1, 3)))),
                 r"statistics must be finite", id="finalize-nan-stats"),
    pytest.param(lambda X: ops.precision_cholesky(np.ones(2), "spherical"),
                 r"n_features is required", id="precision_cholesky-spherical"),
    # fitting divides by the total weight: zero or negative totals are user errors (not
    # a ZeroDivisionError, nor a NaN tolerance reported as "tol must be >= 0")
    pytest.param(lambda X: ops.em(X, ops.initial_params(X, 2, "diag", random_state=0),
                                  sample_weight=np.zeros(10)),
                 r"sample_weight must have a positive sum", id="em-zero-weights"),
    pytest.param(lambda X: ops.em(X, ops.initial_params(X, 2, "diag", random_state=0),
                                  sample_weight=-np.ones(10)),
                 r"sample_weight must have a positive sum", id="em-negative-total"),
    pytest.param(lambda X: ops.kmeans(X, 2, init=X[:2], sample_weight=-np.ones(10)),
                 r"sample_weight must be non-negative, but entry 0", id="kmeans-init-negative"),
    pytest.param(lambda X: ops.kmeans_lloyd(X, X[:2], sample_weight=np.zeros(10)),
                 r"sample_weight must have a positive sum", id="lloyd-zero-weights"),
    pytest.param(lambda X: ops.kmeans(X, 2, init=X[:2], sample_weight=np.zeros(10)),
                 r"sample_weight must have a positive sum", id="kmeans-zero-weights"),
    pytest.param(lambda X: ops.initial_params(X, 2, sample_weight=np.zeros(10)),
                 r"sample_weight must (have a positive sum|not sum to zero)",
                 id="initial_params-zero-weights"),
])
def test_bad_input_other_functions(call, match):
    X = np.random.default_rng(2).normal(size=(10, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error must come first, not a RuntimeWarning
        with pytest.raises(ValueError, match=match):
            call(X)


def _sklearn_ill_defined_message(dtype):
    """scikit-learn's own text, obtained by making it fail on the same kind of input."""
    from sklearn.mixture._gaussian_mixture import _compute_precision_cholesky

    with pytest.raises(ValueError) as exc:
        _compute_precision_cholesky(np.array([-1.0], dtype=dtype), "spherical")
    return str(exc.value)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ill_defined_covariance_has_sklearns_exact_message(covariance_type, dtype):
    pytest.importorskip("sklearn")
    message = _sklearn_ill_defined_message(dtype)
    assert "ill-defined empirical covariance" in message
    assert message.endswith("instead of float32.") == (dtype == np.float32)
    # statistics of one point (zero scatter) with reg_covar = 0: Σ = 0, not definite
    X = np.array([[1.0, 2.0, 3.0]], dtype=dtype)
    K, D = 2, 3
    stats = ops.em_stats(X, np.zeros(K), np.zeros((K, D)),
                         np.ones(param_shape(covariance_type, K, D)), covariance_type,
                         centres=np.zeros((K, D)), labels=np.array([1]))
    with pytest.raises(ValueError) as exc:
        ops.finalize(stats, reg_covar=0.0, dtype=dtype)
    assert str(exc.value) == message
    # a covariance that is not positive definite, through precision_cholesky (float64)
    bad = {"full": -np.eye(D)[None], "tied": np.diag([1.0, -1.0, 1.0]),
           "diag": np.array([[1.0, 0.0, 1.0]]), "spherical": np.array([-2.0])}[covariance_type]
    with pytest.raises(ValueError) as exc:
        ops.precision_cholesky(bad, covariance_type, n_features=D)
    assert str(exc.value) == _sklearn_ill_defined_message(np.float64)
    # the EM driver on collapsed data: two distinct points, one component on each
    Xc = np.repeat(np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0]], dtype=dtype), 5, axis=0)
    init = ops.initial_params(Xc, 2, covariance_type, init_params="k-means++",
                              reg_covar=1e-3, random_state=0)
    with pytest.raises(ValueError) as exc:
        ops.em(Xc, init, reg_covar=0.0)
    assert str(exc.value) == message


@pytest.mark.parametrize("variant", ["unpickled", "memmap", "big-endian"])
def test_equal_dtypes_from_other_sources_are_accepted(variant, tmp_path):
    """Dtypes are compared by value: an unpickled or memory-mapped float64 array has an
    equal but distinct dtype object, and a big-endian array must be converted, not
    reinterpreted. Each must give exactly the result of the plain array."""
    import pickle

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3))
    args = (np.log(np.full(2, 0.5)), rng.normal(size=(2, 3)), np.ones((2, 3)), "diag")
    if variant == "unpickled":
        Y = pickle.loads(pickle.dumps(X))
    elif variant == "memmap":
        np.save(tmp_path / "x.npy", X)
        Y = np.load(tmp_path / "x.npy", mmap_mode="r")
    else:
        Y = X.astype(">f8")
    np.testing.assert_array_equal(ops.log_prob(Y, *args), ops.log_prob(X, *args))
    np.testing.assert_array_equal(ops.em_stats(Y, *args).s2, ops.em_stats(X, *args).s2)
