"""The native kernels (gmmfast.ops / gmmfast._core) against independent references.

Oracles: :mod:`gmmfast.reference` (float64 NumPy, checked against scikit-learn in
test_reference.py) and scikit-learn's private GaussianMixture helpers. Kernel tests run
for every covariance type, dtype and SIMD variant compiled in and supported by this CPU
(the ``isa`` fixture of conftest.py).

Tolerances (derived in conftest.py / below, and measured with >= 6x margin):

- log-densities: the Mahalanobis term is a sum of D squares of entries of (x - μ)ᵀU,
  each a D-term dot product, so its rounding error is ~D·eps relative to the magnitude
  of the log-density; we allow 16·(D+2)·eps·(1 + max_k |log π_k + log N(x_i|k)|) per
  row (observed <= 2.4·D·eps·(...)). float32 kernels are compared with the float64
  reference evaluated on the same float32 numbers.
- statistics: a responsibility exp(w - lse) inherits the absolute error of w as a
  relative error, and each sum adds a few ulp per term: we allow 16·(D+2)·eps times
  the statistic recomputed with every term replaced by its absolute value and each row
  weighted by (1 + max_k |w_ik|) (observed <= 1.1·(D+2)·eps·(...)).
"""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest

import gmmfast
from gmmfast import _core, ops
from gmmfast import reference as ref
from gmmfast._types import EMStats, MixtureParams, param_shape

from conftest import (
    COVARIANCE_TYPES,
    DTYPES,
    abs_stats,
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
C_TOL = 16


def kernel_rtol(dtype, n_features):
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
        got = ops.log_prob(X, *mix.args(), output)
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
    if kind is None:
        return None
    if kind == "positive":
        return rng.uniform(0.2, 3.0, size=n)
    # zero and negative weights (the autograd backward passes upstream gradients here)
    g = rng.normal(size=n)
    g[1::3] = 0.0
    return g


def estep_tolerance_scale(X64, mix64, centres64, sample_weight):
    """abs_stats with rows weighted by |g_i|·(1 + max_k|w_ik|): see the module docstring."""
    R = np.exp(ref.log_prob(X64, *mix64.args(), "log_resp"))
    s = row_scale(X64, mix64)
    g = s if sample_weight is None else np.abs(sample_weight) * s
    return abs_stats(X64, R, centres64, mix64.covariance_type, g), float(np.sum(g))


def underflow_floor(X64, centres64, covariance_type, sample_weight, dtype):
    """Absolute error floor of E-step statistics: a responsibility below the smallest
    normal number of the kernel's dtype (1.2e-38 in float32) may come out as zero (exp
    underflow), an error of at most 2·tiny per term, i.e. 2·tiny times the statistics
    with every responsibility set to one."""
    ones = np.ones((X64.shape[0], centres64.shape[0]))
    tiny = float(np.finfo(dtype).tiny)
    return tuple(2 * tiny * a for a in abs_stats(X64, ones, centres64, covariance_type,
                                                 sample_weight))


@pytest.mark.parametrize("weights", [None, "positive", "mixed"])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_em_stats_matches_reference(isa, covariance_type, dtype, shape, weights, rng):
    X, mix = make_problem(rng, covariance_type, shape, dtype)
    N, K, D = shape
    g = sample_weights(rng, weights, N)
    g = None if g is None else g.astype(dtype)
    # centres different from the means: the general case of the statistics
    centres = (mix.means + rng.normal(size=mix.means.shape)).astype(dtype)

    got = ops.em_stats(X, *mix.args(), centres=centres, sample_weight=g)
    X64, mix64, c64 = X.astype(np.float64), mix.as64(), centres.astype(np.float64)
    g64 = None if g is None else g.astype(np.float64)
    want = ref.em_stats(X64, *mix64.args(), centres=c64, sample_weight=g64)

    assert isinstance(got, EMStats)
    assert got.s2.shape == param_shape(covariance_type, K, D)
    scale, ll_scale = estep_tolerance_scale(X64, mix64, c64, g64)
    floor = underflow_floor(X64, c64, covariance_type, g64, dtype)
    assert_stats_close(got, want, kernel_rtol(dtype, D), scale=scale, ll_scale=ll_scale,
                       floor=floor)
    assert got.weight_sum == pytest.approx(N if g is None else float(np.sum(g64)), abs=1e-9)


def test_em_stats_default_centres_are_the_means(isa, covariance_type, dtype, rng):
    X, mix = make_problem(rng, covariance_type, (600, 3, 4), dtype)
    got = ops.em_stats(X, *mix.args())
    # exact: centres=None means centres=means, one code path
    assert_stats_identical(got, ops.em_stats(X, *mix.args(), centres=mix.means))
    X64, mix64 = X.astype(np.float64), mix.as64()
    want = ref.em_stats(X64, *mix64.args())
    scale, ll_scale = estep_tolerance_scale(X64, mix64, mix64.means, None)
    floor = underflow_floor(X64, mix64.means, covariance_type, None, dtype)
    assert_stats_close(got, want, kernel_rtol(dtype, 4), scale=scale, ll_scale=ll_scale,
                       floor=floor)


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
    # only summation error here (no E-step): C_TOL·(D+2)·eps of the absolute sums
    rtol = kernel_rtol(dtype, D)

    R = rng.uniform(size=(N, K))  # rows need not sum to one
    R[rng.uniform(size=(N, K)) < 0.2] = 0.0
    R = R.astype(dtype)
    got = ops.em_stats(X, *mix.args(), centres=centres, sample_weight=g, resp=R)
    want = ref.em_stats(X64, *mix.as64().args(), centres=c64, sample_weight=g64,
                        resp=R.astype(np.float64))
    assert got.log_likelihood == 0.0
    assert_stats_close(got, want, rtol, scale=abs_stats(X64, R, c64, covariance_type, g64),
                       ll_scale=0.0)

    labels = rng.integers(K, size=N)
    onehot = np.zeros((N, K), dtype=dtype)
    onehot[np.arange(N), labels] = 1
    scale = abs_stats(X64, onehot, c64, covariance_type, g64)
    got_l = ops.em_stats(X, *mix.args(), centres=centres, sample_weight=g, labels=labels)
    want_l = ref.em_stats(X64, *mix.as64().args(), centres=c64, sample_weight=g64,
                          labels=labels)
    assert_stats_close(got_l, want_l, rtol, scale=scale, ll_scale=0.0)
    got_1h = ops.em_stats(X, *mix.args(), centres=centres, sample_weight=g, resp=onehot)
    assert_stats_close(got_l, got_1h, rtol, scale=scale, ll_scale=0.0)
    # the mixture is not read with resp/labels: garbage parameters of the right K work
    garbage = ops.em_stats(
        X, np.full(K, np.nan), np.full((K, D), np.nan),
        np.full(param_shape(covariance_type, K, D), -1.0), covariance_type,
        centres=centres, sample_weight=g, labels=labels,
    )
    assert_stats_identical(garbage, got_l)


@pytest.mark.parametrize("source", ["resp", "labels"])
def test_em_stats_given_resp_rejects_nonfinite_X(source):
    """A NaN in X with resp=/labels= must raise like the E-step path does, not return
    NaN statistics (ARCHITECTURE.md: 'a silent NaN is a bug')."""
    X = np.random.default_rng(0).normal(size=(20, 3))
    X[5, 1] = np.nan
    kw = {"resp": np.full((20, 2), 0.5)} if source == "resp" else {"labels": np.zeros(20, int)}
    with pytest.raises(ValueError, match=r"NaN.*row 5"):
        ops.em_stats(X, np.zeros(2), np.zeros((2, 3)), np.ones((2, 3)), "diag",
                     centres=np.zeros((2, 3)), **kw)


# ======================================================================================
# finalize


@pytest.mark.parametrize("reg_covar", [0.0, 1e-3])
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
        R[:, 1] = 0.0
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
    tol = 1e-4
    got = ops.em(X, init, tol=tol, max_iter=200)
    want = ref.em(X, init, tol=tol, max_iter=200)  # float64 arithmetic on the same X
    # precondition of the n_iter check: no |change| of the reference lies within 1e-5 of
    # tol, 50x the float32 error of a lower bound (observed <= 2e-7)
    changes = np.abs(np.diff(np.r_[-np.inf, want.lower_bounds]))
    assert np.all(np.abs(changes - tol) > 1e-5)
    assert got.n_iter == want.n_iter and got.converged == want.converged
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
    want_st = ops.em_stats(X, *mix.args(), sample_weight=np.linspace(0, 2, 400))
    for name, V in views.items():
        assert not V.flags.c_contiguous, name
        np.testing.assert_array_equal(V, X)
        # exact: a non-contiguous input is copied to C order once, then the same kernel
        np.testing.assert_array_equal(ops.log_prob(V, *mix.args(), "log_resp"), want_lp)
        assert_stats_identical(
            ops.em_stats(V, *mix.args(), sample_weight=np.linspace(0, 2, 800)[::2]), want_st
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
    """While a worker thread runs a long em_stats (single-threaded, so one core stays
    free on a 2-core machine), the main thread keeps executing Python. Held GIL would
    show as one gap of the whole call's length between main-thread iterations."""
    rng = np.random.default_rng(0)
    mix = random_mixture(rng, "full", 64, 32)
    X = rng.normal(scale=4.0, size=(60_000, 32))
    window = {}

    def work():
        window["start"] = time.perf_counter()
        ops.em_stats(X, *mix.args(), n_threads=1)
        window["end"] = time.perf_counter()

    worker = threading.Thread(target=work)
    stamps = []
    worker.start()
    while worker.is_alive():
        stamps.append(time.perf_counter())
    worker.join()
    duration = window["end"] - window["start"]
    assert duration > 0.05, "the call is too short to tell (make X larger)"
    inside = np.array([t for t in stamps if window["start"] <= t <= window["end"]])
    edges = np.r_[window["start"], inside, window["end"]]
    largest_gap = np.max(np.diff(edges))
    # progress: many iterations, and no pause longer than a third of the call (a held
    # GIL gives a single gap ≈ duration; Python's switch interval is 5 ms)
    assert inside.size > 1000, (inside.size, duration)
    assert largest_gap < duration / 3, (largest_gap, duration)


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
