"""Numerical properties of the native kernels: float32 accuracy far from the origin
(what centring buys), additivity of statistics over chunks, determinism and
independence of the thread count."""

from __future__ import annotations

import functools
import operator

import numpy as np
import pytest

from gmmfast import ops
from gmmfast import reference as ref
from gmmfast._types import EMStats, ill_defined_covariance_message

from conftest import (
    abs_stats,
    assert_stats_close,
    assert_stats_identical,
    random_mixture,
    sample_mixture,
)


# ======================================================================================
# float32 far from the origin


def offset_problem(rng, covariance_type, offset=1e4, n_samples=3000):
    """float32 data ~1e4 from the origin with unit spread (eigenvalues of the component
    covariances in [0.5, 2]), and a float32 mixture close to it."""
    mix = random_mixture(rng, covariance_type, 3, 4, np.float64, spread=1.5, offset=offset)
    X = sample_mixture(rng, mix, n_samples).astype(np.float32)
    return X, mix.astype(np.float32)


def test_float32_statistics_far_from_the_origin(isa, covariance_type, rng):
    """Centred at the current means, float32 kernels keep ~7 digits on data at 1e4 ± 1.

    Reference: the float64 reference on the same float32 numbers. Bounds:

    - statistics: |Δ| <= 1e-5 × (the statistic with every term replaced by its absolute
      value). The centred terms (x - μ) are exact in float32 (Sterbenz: x and μ are
      within a factor 2), so only ~eps32 = 1.2e-7 per product and the responsibilities'
      error remain (observed <= 1e-7);
    - finalized covariances: rtol = 1e-5 entry-wise with atol = 1e-5·max|Σ_k| (observed
      <= 1e-7); means: atol 1e-5 on values ~1e4 (i.e. 1e-9 relative; observed 7e-8).
    """
    X, mix32 = offset_problem(rng, covariance_type)
    X64, mix64 = X.astype(np.float64), mix32.as64()

    got = ops.em_stats(X, *mix32.args())
    want = ref.em_stats(X64, *mix64.args())
    R = np.exp(ref.log_prob(X64, *mix64.args(), "log_resp"))
    scale = abs_stats(X64, R, mix64.means, covariance_type)
    assert_stats_close(got, want, 1e-5, scale=scale,
                       ll_scale=float(np.sum(np.abs(ref.log_prob(X64, *mix64.args())))))

    p_got = ops.finalize(got, 1e-6, np.float32)
    p_want = ref.finalize(want, 1e-6, np.float32)
    cov_scale = np.max(np.abs(p_want.covariances))
    np.testing.assert_allclose(p_got.covariances, p_want.covariances, rtol=1e-5,
                               atol=1e-5 * cov_scale)
    np.testing.assert_allclose(p_got.means, p_want.means, rtol=0, atol=1e-5)
    np.testing.assert_allclose(p_got.weights, p_want.weights, rtol=1e-5)


def test_float32_statistics_about_the_origin_lose_the_covariance(isa, covariance_type, rng):
    """The same float32 computation with centres at the origin (the uncentred
    Σ r x xᵀ - n μ μᵀ form): Σ r x² ~ 1e8·n is carried with float32 products, whose
    rounding (~1e8 × 6e-8 ≈ 6 per term) swamps covariances of size ~1 in the
    cancellation. The finalized covariances are badly wrong (error > 5% of their scale)
    or not even positive definite (finalize raises scikit-learn's error), while the
    float64 reference with the same zero centres is still accurate: the loss is the
    float32 arithmetic, which centring at the means avoids."""
    X, mix32 = offset_problem(rng, covariance_type)
    X64, mix64 = X.astype(np.float64), mix32.as64()
    truth = ref.finalize(ref.em_stats(X64, *mix64.args()), 1e-6, np.float32).covariances
    cov_scale = np.max(np.abs(truth))
    zeros = np.zeros_like(mix32.means)

    # float64 on the same numbers, zero centres: ~1e8 × 1e-16 cancellation, still fine
    f64 = ref.finalize(ref.em_stats(X64, *mix64.args(), centres=zeros.astype(np.float64)),
                       1e-6, np.float32).covariances
    np.testing.assert_allclose(f64, truth, rtol=0, atol=1e-5 * cov_scale)

    stats = ops.em_stats(X, *mix32.args(), centres=zeros)
    try:
        cov = ops.finalize(stats, 1e-6, np.float32).covariances
    except ValueError as exc:
        assert str(exc) == ill_defined_covariance_message(np.float32)
    else:
        assert np.max(np.abs(cov - truth)) > 0.05 * cov_scale


def test_float32_log_prob_far_from_the_origin(isa, covariance_type, rng):
    """log_prob centres x - μ before multiplying by U, so float32 keeps its accuracy at
    1e4 ± 1: |Δ| <= 16·(D+2)·eps32·(1 + max_k|w_ik|) as in test_ops (the x - μ are
    exact, the rest is the usual D-term rounding)."""
    X, mix32 = offset_problem(rng, covariance_type, n_samples=500)
    X64, mix64 = X.astype(np.float64), mix32.as64()
    w = ref.log_prob(X64, *mix64.args(), "weighted")
    tol = 16 * 6 * np.finfo(np.float32).eps * (1 + np.max(np.abs(w), axis=1))
    for output in ("sample", "log_resp", "weighted"):
        err = np.abs(ops.log_prob(X, *mix32.args(), output)
                     - ref.log_prob(X64, *mix64.args(), output))
        assert np.all(err <= (tol if output == "sample" else tol[:, None])), output


# ======================================================================================
# additivity


def random_chunks(rng, n_samples):
    """3-5 distinct random split points: 4-6 chunks, some possibly of a single row."""
    n_splits = rng.integers(3, 6)
    cuts = np.sort(rng.choice(np.arange(1, n_samples), size=n_splits, replace=False))
    return np.split(np.arange(n_samples), cuts)


@pytest.mark.parametrize("source", ["estep", "resp", "labels"])
@pytest.mark.parametrize("trial", range(3))
def test_statistics_of_chunks_add_up(covariance_type, source, trial, rng):
    N, K, D = 1500, 3, 4
    mix = random_mixture(rng, covariance_type, K, D)
    X = sample_mixture(rng, mix, N)
    g = rng.normal(size=N)  # any weights, negative ones included
    centres = mix.means + rng.normal(size=mix.means.shape)
    R = rng.uniform(size=(N, K))
    labels = rng.integers(K, size=N)

    def stats(idx):
        kw = {"resp": R[idx]} if source == "resp" else (
            {"labels": labels[idx]} if source == "labels" else {})
        return ops.em_stats(X[idx], *mix.args(), centres=centres, sample_weight=g[idx], **kw)

    chunks = random_chunks(rng, N)
    assert 4 <= len(chunks) <= 6
    total = functools.reduce(operator.add, [stats(idx) for idx in chunks])
    whole = stats(np.arange(N))
    # rtol=1e-12 of the absolute sums: float64 accumulation in another grouping of the
    # same terms (the chunks' own tiles); the E-step of a row does not depend on the
    # other rows of its tile.
    Rw = np.exp(ref.log_prob(X, *mix.args(), "log_resp")) if source == "estep" else (
        R if source == "resp" else np.eye(K)[labels])
    scale = abs_stats(X, Rw, centres, covariance_type, g)
    assert_stats_close(total, whole, 1e-12, scale=scale,
                       ll_scale=float(np.sum(np.abs(g * ref.log_prob(X, *mix.args())))))
    np.testing.assert_array_equal(total.centres, whole.centres)


def test_emstats_add_rejects_mismatched_statistics():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 2))
    a = ops.em_stats(X, np.zeros(2), np.zeros((2, 2)), np.ones((2, 2)), "diag")
    b = ops.em_stats(X, np.zeros(2), np.ones((2, 2)), np.ones((2, 2)), "diag")
    with pytest.raises(ValueError, match="different centres"):
        a + b
    c = ops.em_stats(X, np.zeros(2), np.zeros((2, 2)), np.ones(2), "spherical")
    with pytest.raises(ValueError, match="covariance types 'diag' and 'spherical'"):
        a + c
    d = ops.em_stats(X, np.zeros(3), np.zeros((3, 2)), np.ones((3, 2)), "diag")
    with pytest.raises(ValueError, match="different centres"):
        a + d
    with pytest.raises(TypeError):
        a + 1.0
    # same centres and type: allowed, and adds up
    s = a + a
    assert isinstance(s, EMStats)
    np.testing.assert_array_equal(s.nk, 2 * a.nk)


# ======================================================================================
# determinism and threads


def threads_problem(rng, covariance_type, dtype, n_samples=5000):
    # 5000 rows are ~10 tiles of <= 512 rows: both threads get several tiles
    mix = random_mixture(rng, covariance_type, 4, 3, dtype)
    return sample_mixture(rng, mix, n_samples, outliers=50), mix


def test_repeated_calls_are_bit_identical(isa, covariance_type, dtype, rng):
    X, mix = threads_problem(rng, covariance_type, dtype)
    g = rng.normal(size=X.shape[0])
    first = ops.em_stats(X, *mix.args(), sample_weight=g, n_threads=2)
    lp = ops.log_prob(X, *mix.args(), "log_resp", n_threads=2)
    for _ in range(3):
        assert_stats_identical(ops.em_stats(X, *mix.args(), sample_weight=g, n_threads=2),
                               first)
        assert ops.log_prob(X, *mix.args(), "log_resp", n_threads=2).tobytes() == lp.tobytes()


def test_thread_count_changes_only_float64_rounding(isa, covariance_type, dtype, rng):
    X, mix = threads_problem(rng, covariance_type, dtype)
    g = rng.normal(size=X.shape[0])
    one = ops.em_stats(X, *mix.args(), sample_weight=g, n_threads=1)
    two = ops.em_stats(X, *mix.args(), sample_weight=g, n_threads=2)
    # rtol=1e-12 of the absolute sums, even for float32 data: tiles do not depend on the
    # thread count and per-thread partials are float64, so only the float64 merge order
    # differs (~1e-16 per term).
    X64, mix64 = X.astype(np.float64), mix.as64()
    R = np.exp(ref.log_prob(X64, *mix64.args(), "log_resp"))
    scale = abs_stats(X64, R, mix64.means, covariance_type, g)
    assert_stats_close(two, one, 1e-12, scale=scale,
                       ll_scale=float(np.sum(np.abs(g * ref.log_prob(X64, *mix64.args())))))
    # log_prob is row-wise: a row's value cannot depend on which thread computed it
    for output in ("sample", "log_resp", "weighted"):
        np.testing.assert_array_equal(
            ops.log_prob(X, *mix.args(), output, n_threads=1),
            ops.log_prob(X, *mix.args(), output, n_threads=2),
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kmeans_does_not_depend_on_the_thread_count(isa, dtype, rng):
    X = rng.normal(size=(4000, 3)).astype(dtype)
    g = rng.uniform(0.5, 2.0, size=4000)
    c1, i1 = ops.kmeans_plusplus(X, 8, random_state=5, sample_weight=g, n_threads=1)
    c2, i2 = ops.kmeans_plusplus(X, 8, random_state=5, sample_weight=g, n_threads=2)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(c1, c2)

    one = ops.kmeans_lloyd(X, c1, max_iter=20, sample_weight=g, n_threads=1)
    two = ops.kmeans_lloyd(X, c1, max_iter=20, sample_weight=g, n_threads=2)
    np.testing.assert_array_equal(one[1], two[1])  # labels
    assert one[3] == two[3] and one[4] == two[4]  # n_iter, converged
    # centres: float64 sums merged in another order (1e-12), then rounded to the data's
    # dtype (at most 1 ulp apart in float32)
    rtol = 1e-12 if dtype == np.float64 else np.finfo(np.float32).eps
    np.testing.assert_allclose(one[0], two[0], rtol=rtol, atol=rtol)
    np.testing.assert_allclose(one[2], two[2], rtol=1e-12 if dtype == np.float64 else 1e-6)


def test_same_seed_same_result(rng):
    X = rng.normal(size=(800, 2))
    a = ops.kmeans(X, 5, random_state=3)
    b = ops.kmeans(X, 5, random_state=3)
    np.testing.assert_array_equal(a.centres, b.centres)
    np.testing.assert_array_equal(a.labels, b.labels)
    p = ops.initial_params(X, 4, "full", random_state=7)
    q = ops.initial_params(X, 4, "full", random_state=7)
    np.testing.assert_array_equal(p.means, q.means)
    np.testing.assert_array_equal(p.covariances, q.covariances)
    # a seed changes the draw: over 5 seeds, k-means++ picks at least 2 distinct sets
    picks = {tuple(ops.kmeans_plusplus(X, 5, random_state=s)[1]) for s in range(5)}
    assert len(picks) >= 2


# ======================================================================================
# tied statistics and the distance between components


def test_tied_statistics_are_as_accurate_as_per_component_centring():
    """docs/architecture.md: 'Centre per component at the current means'. With that rule the
    tied scatter of two components 1e4 apart with unit spread is accurate to ~1e-15 of
    Σ|terms| in float64 (as the full covariance type's is); the bound here, 1e-12 of
    the per-component absolute sums, leaves a 1000x margin."""
    rng = np.random.default_rng(0)
    means = np.array([[0.0, 0.0], [1e4, -1e4]])
    X = np.vstack([rng.normal(size=(500, 2)) + means[0], rng.normal(size=(500, 2)) + means[1]])
    labels = np.repeat([0, 1], 500)
    got = ops.em_stats(X, np.zeros(2), means, np.eye(2), "tied", labels=labels)
    want = ref.em_stats(X, np.zeros(2), means, np.eye(2), "tied", labels=labels)
    per_component = abs_stats(X, np.eye(2)[labels], means, "full")[2].sum(axis=0)
    assert np.all(np.abs(got.s2 - want.s2) <= 1e-12 * per_component)
