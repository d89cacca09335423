"""Native k-means (gmmfast.ops.kmeans*, used to initialise EM) against the NumPy
reference (itself checked against scikit-learn's KMeans in test_reference.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gmmfast import ops
from gmmfast import reference as ref


def blobs(rng, n_samples, n_features, n_blobs, spread=8.0, scale=1.0):
    centres = rng.normal(scale=spread, size=(n_blobs, n_features))
    labels = rng.integers(n_blobs, size=n_samples)
    return centres[labels] + scale * rng.normal(size=(n_samples, n_features)), labels


def assert_kmeans_equal(got, want, rtol):
    c, labels, inertia, n_iter, converged = got
    c_ref, labels_ref, inertia_ref, n_iter_ref, converged_ref = want
    # exact: the same assignments (no point is within rounding of a tie on this data),
    # hence the same stopping decisions
    np.testing.assert_array_equal(labels, labels_ref)
    assert labels.dtype == np.int64
    assert n_iter == n_iter_ref and converged == converged_ref
    np.testing.assert_allclose(c, c_ref, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(inertia, inertia_ref, rtol=rtol)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("max_iter", [300, 2])
def test_kmeans_lloyd_matches_reference(isa, weighted, max_iter, rng):
    X, _ = blobs(rng, 1500, 3, 5, spread=4.0)
    init = X[rng.choice(1500, 5, replace=False)]
    g = rng.uniform(0.1, 3.0, size=1500) if weighted else None
    got = ops.kmeans_lloyd(X, init, max_iter=max_iter, sample_weight=g)
    want = ref.kmeans_lloyd(X, init, max_iter=max_iter, sample_weight=g)
    assert got[0].dtype == np.float64
    # rtol=1e-10: float64 sums of the same ~300 terms per cluster in another order
    # (the kernel centres nothing: ‖x - c‖² from differences, like the reference)
    assert_kmeans_equal(got, want, 1e-10)
    assert got[4] == (max_iter == 300)


def test_kmeans_lloyd_float32_matches_reference(isa, rng):
    X, _ = blobs(rng, 1200, 4, 4)
    X = X.astype(np.float32)
    init = X[rng.choice(1200, 4, replace=False)]
    c, labels, inertia, n_iter, converged = ops.kmeans_lloyd(X, init)
    c_ref, labels_ref, inertia_ref, n_iter_ref, _ = ref.kmeans_lloyd(
        X.astype(np.float64), init.astype(np.float64))
    assert c.dtype == np.float32 and converged
    np.testing.assert_array_equal(labels, labels_ref)  # well-separated: no near-ties
    assert n_iter == n_iter_ref
    # rtol=1e-6: float32 centres are float64 means rounded to float32 (0.5 ulp = 6e-8),
    # on values ~10 (atol for coordinates near zero)
    np.testing.assert_allclose(c, c_ref, rtol=1e-6, atol=1e-5)
    # rtol=1e-5: float32 differences/squares, D=4 terms per point, summed in float64
    np.testing.assert_allclose(inertia, inertia_ref, rtol=1e-5)


def test_kmeans_lloyd_relocates_an_empty_cluster(isa, rng):
    X, _ = blobs(rng, 600, 2, 3)
    init = np.vstack([X[:3], [[1e3, 1e3]]])  # the last centre attracts no point
    got = ops.kmeans_lloyd(X, init)
    want = ref.kmeans_lloyd(X, init)
    assert_kmeans_equal(got, want, 1e-10)  # rtol as in test_kmeans_lloyd_matches_reference
    assert np.unique(got[1]).size == 4
    assert np.all(np.abs(got[0]) < 100)  # the far centre was moved onto the data
    # one iteration: the centres right after the relocation
    assert_kmeans_equal(ops.kmeans_lloyd(X, init, max_iter=1),
                        ref.kmeans_lloyd(X, init, max_iter=1), 1e-10)


def test_kmeans_plusplus_seeds(isa, rng):
    K = 6
    # tight, well-separated clusters: spread 100, unit noise
    X, truth = blobs(rng, 1200, 3, K, spread=100.0)
    centres, indices = ops.kmeans_plusplus(X, K, random_state=0)
    assert indices.shape == (K,) and indices.dtype == np.int64
    assert np.unique(indices).size == K
    np.testing.assert_array_equal(centres, X[indices])  # exact copies of rows
    # greedy k-means++ picks one seed per cluster: once a cluster has a seed, its points
    # carry D² ~ 1 against ~1e4 for the uncovered clusters, so a second seed in it has
    # probability ~1e-4 per draw (seed fixed: the outcome is deterministic)
    assert np.unique(truth[indices]).size == K
    # deterministic under random_state
    c2, i2 = ops.kmeans_plusplus(X, K, random_state=0)
    np.testing.assert_array_equal(i2, indices)
    np.testing.assert_array_equal(c2, centres)
    # the Generator / RandomState conventions: the same state gives the same draw
    i3 = ops.kmeans_plusplus(X, K, random_state=np.random.RandomState(4))[1]
    i4 = ops.kmeans_plusplus(X, K, random_state=np.random.RandomState(4))[1]
    np.testing.assert_array_equal(i3, i4)


def test_kmeans_plusplus_respects_sample_weight(rng):
    X, _ = blobs(rng, 400, 2, 4)
    g = np.ones(400)
    g[::2] = 0.0  # zero-weight rows carry no probability mass
    for seed in range(5):
        _, idx = ops.kmeans_plusplus(X, 4, random_state=seed, sample_weight=g,
                                     n_local_trials=1)
        assert np.all(idx % 2 == 1)
    # float32: the centres are the float32 rows
    X32 = X.astype(np.float32)
    c32, i32 = ops.kmeans_plusplus(X32, 3, random_state=1)
    assert c32.dtype == np.float32
    np.testing.assert_array_equal(c32, X32[i32])


def test_kmeans_plusplus_k_equals_n(rng):
    X = rng.normal(size=(7, 2))
    _, idx = ops.kmeans_plusplus(X, 7, random_state=0)
    np.testing.assert_array_equal(np.sort(idx), np.arange(7))


@pytest.mark.parametrize("tol", [0.0, 1e-4, 1e-1])
def test_kmeans_tol_is_relative_to_the_mean_variance(tol, rng):
    """ops.kmeans scales tol by the mean per-feature variance of X (scikit-learn's
    _tolerance), then runs Lloyd with that absolute tol."""
    X, _ = blobs(rng, 800, 2, 6, spread=3.0)
    X = 10 * X  # variance >> 1, so relative and absolute tol differ
    init = X[:6].copy()
    res = ops.kmeans(X, 6, init=init, tol=tol)
    abs_tol = tol * np.mean(np.var(X, axis=0))
    want = ref.kmeans_lloyd(X, init, tol=abs_tol)
    # rtol=1e-10 as in test_kmeans_lloyd_matches_reference; same n_iter: same stopping
    assert_kmeans_equal((res.centres, res.labels, res.inertia, res.n_iter, res.converged),
                        want, 1e-10)
    if tol > 0:
        # teeth: on this data, tol used as an absolute tolerance stops at another
        # iteration, so equal n_iter above shows the scaling
        assert ref.kmeans_lloyd(X, init, tol=tol)[3] != want[3]
    sk = pytest.importorskip("sklearn.cluster")
    from sklearn.exceptions import ConvergenceWarning

    km = sk.KMeans(6, init=init, n_init=1, tol=tol, algorithm="lloyd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        km.fit(X)
    assert res.n_iter == km.n_iter_
    np.testing.assert_array_equal(res.labels, km.labels_)


def test_kmeans_float32_and_init_options(rng):
    X, truth = blobs(rng, 900, 3, 3, spread=20.0)
    X32 = X.astype(np.float32)
    res = ops.kmeans(X32, 3, random_state=0)
    assert res.centres.dtype == np.float32 and res.converged
    # k-means on well-separated blobs recovers them: the partition equals the truth's
    # up to a permutation (each found cluster is exactly one true blob)
    pairs = set(zip(res.labels.tolist(), truth.tolist()))
    assert len(pairs) == 3
    want = ref.kmeans_lloyd(X32.astype(np.float64), res.centres.astype(np.float64))
    np.testing.assert_array_equal(res.labels, want[1])
    # rtol=1e-6: float32 rounding of float64 means (0.5 ulp = 6e-8)
    np.testing.assert_allclose(res.centres, want[0], rtol=1e-6, atol=1e-5)
    r = ops.kmeans(X32, 3, init="random", random_state=1)
    # whatever local optimum 'random' reaches, labels are the nearest final centres
    d = ((X32[:, None, :].astype(np.float64) - r.centres[None].astype(np.float64)) ** 2).sum(2)
    np.testing.assert_array_equal(r.labels, np.argmin(d, axis=1))
    with pytest.raises(ValueError, match="init must be"):
        ops.kmeans(X32, 3, init="kmeans")
    with pytest.raises(ValueError, match=r"init must have shape"):
        ops.kmeans(X32, 3, init=np.zeros((2, 3)))


# ------------------------------------------------- scikit-learn's random draws (issue 3)


def _overlapping(rng, n=4000, d=6, k=10):
    """Overlapping blobs: k-means needs many iterations and k-means++ many draws."""
    X, _ = blobs(rng, n, d, k, spread=2.0)
    return X


@pytest.mark.parametrize("weighted", [False, True])
def test_kmeans_plusplus_draws_scikit_learns_seeds(weighted, rng):
    """float64: the same seeds as sklearn.cluster.kmeans_plusplus for the same
    random_state (an int, a RandomState or a Generator), and the stream is left where
    scikit-learn leaves it. The NumPy reference follows the same draws."""
    sk = pytest.importorskip("sklearn.cluster")
    X = _overlapping(rng)
    w = rng.uniform(0.5, 2.0, size=X.shape[0]) if weighted else None
    for seed in range(6):
        want = sk.kmeans_plusplus(X, 12, random_state=seed, sample_weight=w)[1]
        np.testing.assert_array_equal(ops.kmeans_plusplus(X, 12, random_state=seed, sample_weight=w)[1], want)
        np.testing.assert_array_equal(ref.kmeans_plusplus(X, 12, random_state=seed, sample_weight=w)[1], want)
        a, b = np.random.RandomState(seed), np.random.RandomState(seed)
        sk.kmeans_plusplus(X, 12, random_state=a, sample_weight=w)
        ops.kmeans_plusplus(X, 12, random_state=b, sample_weight=w)
        assert a.randint(2**31) == b.randint(2**31)  # the same number of draws consumed
    # a Generator (which scikit-learn does not take) is drawn from in the same order
    np.testing.assert_array_equal(ops.kmeans_plusplus(X, 5, random_state=np.random.default_rng(7))[1],
                                  ref.kmeans_plusplus(X, 5, random_state=np.random.default_rng(7))[1])


def test_kmeans_matches_scikit_learn_kmeans_with_the_same_random_state(rng):
    """One k-means run (k-means++ and Lloyd) gives scikit-learn's KMeans(n_init=1)
    labels and iteration count for the same random_state, and its centres to rounding
    (scikit-learn centres X first and uses ‖x‖² - 2x·c + ‖c‖² distances: rtol 1e-10)."""
    sk = pytest.importorskip("sklearn.cluster")
    X = _overlapping(rng)
    for seed in range(4):
        km = sk.KMeans(10, n_init=1, random_state=seed).fit(X)
        got = ops.kmeans(X, 10, random_state=seed)
        np.testing.assert_array_equal(got.labels, km.labels_)
        assert got.n_iter == km.n_iter_
        np.testing.assert_allclose(got.centres, km.cluster_centers_, rtol=1e-10, atol=1e-10)
        # init='random' draws scikit-learn's rows
        km = sk.KMeans(10, init="random", n_init=1, random_state=seed).fit(X)
        got = ops.kmeans(X, 10, init="random", random_state=seed)
        np.testing.assert_array_equal(got.labels, km.labels_)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("n", [1, 2, 150, 65535, 65536, 65537, 200_001])
def test_first_seed_is_numpys_weighted_choice(dtype, n):
    """The unweighted first seed is drawn without NumPy's three n-element arrays but is
    the index (and the draw) of rs.choice(n, p=ones / n), for RandomState and Generator."""
    for seed in range(25):
        for make in (np.random.RandomState, np.random.default_rng):
            a, b = make(seed), make(seed)
            want = a.choice(n, p=np.ones(n, dtype) / np.ones(n, dtype).sum())
            assert ops._uniform_choice(b, n, dtype) == want
            assert a.random() == b.random() if make is np.random.default_rng else a.rand() == b.rand()
