"""Data beyond one array in memory: memory-mapped arrays, EM over chunks (fit_chunks),
online EM (partial_fit), mini-batch EM (fit_minibatch), the statistics arithmetic they
rest on, and the CLI's streaming of .npy files.

References: the in-memory fit of the same data (exact EM over chunks must equal it up to
the order of floating-point sums), em_stats computed directly at other centres (for the
re-centring formulas), one EM iteration (for online EM with step size 1)."""

from __future__ import annotations

import contextlib
import io
import tracemalloc
import warnings

import numpy as np
import pytest

import gmmfast
from gmmfast import GaussianMixture, ops
from gmmfast._types import COVARIANCE_TYPES
from gmmfast.streaming import (
    _Reservoir,
    blend_stats,
    implied_stats,
    learning_rate,
    recentre_stats,
    row_chunks,
    scale_stats,
)

PARAMS = ("weights_", "means_", "covariances_", "precisions_cholesky_")


def blobs(n=2000, d=3, k=4, seed=0, offset=0.0, dtype=np.float64, centres_seed=None):
    """k well-separated unit blobs (centres from ``centres_seed``, default ``seed``)."""
    rng = np.random.default_rng(seed)
    crng = rng if centres_seed is None else np.random.default_rng(centres_seed)
    centres = crng.normal(scale=6.0, size=(k, d)) + offset
    X = centres[rng.integers(0, k, size=n)] + rng.normal(size=(n, d))
    return X.astype(dtype)


def fixed_init(X, k, covariance_type, seed=1):
    """weights/means/precisions_init from a short in-memory fit (not the answer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = GaussianMixture(k, covariance_type=covariance_type, max_iter=2, random_state=seed).fit(X)
    w = g.weights_.astype(np.float64)
    return dict(weights_init=w / w.sum(), means_init=g.means_.astype(np.float64),
                precisions_init=g.precisions_.astype(np.float64))


def uneven_chunks(X, w=None, sizes=(1, 17, 300, 0, 511)):
    """X cut into chunks of irregular sizes (an empty one included), repeating ``sizes``."""
    out, start, i = [], 0, 0
    while start < X.shape[0]:
        n = sizes[i % len(sizes)]
        i += 1
        stop = min(start + n, X.shape[0])
        out.append(X[start:stop] if w is None else (X[start:stop], w[start:stop]))
        start = stop
    return out


def assert_close_fit(a, b, rtol):
    for attr in PARAMS:
        np.testing.assert_allclose(getattr(a, attr), getattr(b, attr), rtol=rtol, atol=rtol, err_msg=attr)
        assert getattr(a, attr).dtype == getattr(b, attr).dtype, attr
    assert a.n_iter_ == b.n_iter_ and a.converged_ == b.converged_
    assert a.lower_bound_ == pytest.approx(b.lower_bound_, rel=rtol, abs=rtol)


# ---------------------------------------------------------------- statistics arithmetic


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_recentre_stats_equals_em_stats_at_the_new_centres(covariance_type):
    """s1' = s1 + n(c - c'), S2' = S2 + s1 dᵀ + d s1ᵀ + n d dᵀ (and the tied, diag,
    spherical forms) give what em_stats computes directly at the new centres."""
    X = blobs(500, d=4, offset=100.0)
    init = ops.initial_params(X, 4, covariance_type, random_state=0)
    args = (X, np.log(init.weights), init.means, init.precisions_cholesky, covariance_type)
    rng = np.random.default_rng(3)
    c_new = init.means + rng.normal(scale=0.5, size=init.means.shape)
    direct = ops.em_stats(*args, centres=c_new)
    shifted = recentre_stats(ops.em_stats(*args), c_new)
    np.testing.assert_array_equal(shifted.centres, c_new)
    np.testing.assert_allclose(shifted.nk, direct.nk, rtol=1e-13)
    scale = np.abs(direct.s1).max()
    np.testing.assert_allclose(shifted.s1, direct.s1, rtol=1e-9, atol=1e-9 * scale)
    np.testing.assert_allclose(shifted.s2, direct.s2, rtol=1e-9, atol=1e-9 * np.abs(direct.s2).max())
    assert shifted.log_likelihood == direct.log_likelihood and shifted.weight_sum == direct.weight_sum
    # finalize does not depend on the centres
    a, b = ops.finalize(shifted), ops.finalize(direct)
    np.testing.assert_allclose(a.covariances, b.covariances, rtol=1e-9)
    np.testing.assert_allclose(a.means, b.means, rtol=1e-12)
    with pytest.raises(ValueError, match="centres must have shape"):
        recentre_stats(direct, c_new[:2])


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_scale_blend_and_implied_stats(covariance_type):
    X = blobs(400)
    init = ops.initial_params(X, 3, covariance_type, random_state=0)
    st = ops.em_stats(X, np.log(init.weights), init.means, init.precisions_cholesky, covariance_type)
    # finalize is scale-free (up to its 10·eps guard)
    a, b = ops.finalize(st), ops.finalize(scale_stats(st, 1.0 / st.weight_sum))
    np.testing.assert_allclose(a.means, b.means, rtol=1e-12)
    np.testing.assert_allclose(a.covariances, b.covariances, rtol=1e-9)
    # (1 - eta) s + eta s = s; a blend of differently centred statistics is refused
    np.testing.assert_allclose(blend_stats(st, st, 0.3).s2, st.s2, rtol=1e-14)
    with pytest.raises(ValueError, match="same centres"):
        blend_stats(st, recentre_stats(st, st.centres + 1.0), 0.5)
    # the statistics implied by a mixture finalize back to it
    params = ops.finalize(st, 1e-3)
    back = ops.finalize(implied_stats(params, 1e-3), 1e-3)
    np.testing.assert_allclose(back.weights, params.weights, rtol=1e-12)
    np.testing.assert_allclose(back.means, params.means, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(back.covariances, params.covariances, rtol=1e-9)
    assert learning_rate(1, 0.7, 10.0) == pytest.approx(11.0**-0.7)


def test_reservoir_is_uniform_and_independent_of_chunking():
    X = np.arange(10_000, dtype=np.float64).reshape(-1, 1)

    def sample(sizes, seed):
        r = _Reservoir(500, 1, X.dtype, False, np.random.RandomState(seed))
        start = 0
        for n in sizes:
            r.add(X[start : start + n], None, start)
            start += n
        return r.result()

    a, _, complete = sample([10_000], 0)
    b, _, _ = sample([1, 499, 3, 7000, 2497], 0)
    np.testing.assert_array_equal(a, b)
    assert not complete and a.shape == (500, 1) and np.all(np.diff(a[:, 0]) > 0)
    # uniform: the mean row index of many samples is near the middle
    means = [sample([10_000], s)[0].mean() for s in range(20)]
    assert abs(np.mean(means) - 4999.5) < 150
    # a stream no longer than the reservoir is its own sample, with no random draw
    rs = np.random.RandomState(7)
    r = _Reservoir(500, 1, X.dtype, False, rs)
    r.add(X[:300], None, 0)
    r.add(X[300:500], None, 300)
    got, _, complete = r.result()
    assert complete and np.array_equal(got, X[:500])
    assert rs.randint(1 << 30) == np.random.RandomState(7).randint(1 << 30)


# -------------------------------------------------------------------------- fit_chunks


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_fit_chunks_equals_fit_from_the_same_init(covariance_type, dtype):
    X = blobs(3000, d=3, offset=50.0, dtype=dtype)
    # float32 EM stops at tol=1e-4: beyond it rounding noise steers the iterations
    tol = 1e-6 if dtype == np.float64 else 1e-4
    kw = dict(n_components=4, covariance_type=covariance_type, tol=tol, max_iter=40,
              **fixed_init(X, 4, covariance_type))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = GaussianMixture(**kw).fit(X)
        got = GaussianMixture(**kw).fit_chunks(uneven_chunks(X))
    assert_close_fit(got, ref, 1e-9 if dtype == np.float64 else 2e-4)
    assert got.n_features_in_ == 3 and got.means_.dtype == dtype


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_fit_chunks_default_init_equals_fit_when_the_sample_is_the_data(init_params):
    """At most init_size rows: the initialisation sample is the data, so every
    init_params gives the in-memory fit (same random_state), n_init included."""
    X = blobs(2000)
    kw = dict(n_components=4, init_params=init_params, random_state=3, n_init=2)
    ref = GaussianMixture(**kw).fit(X)
    got = GaussianMixture(**kw).fit_chunks(row_chunks(X, 300))
    assert_close_fit(got, ref, 1e-9)


def test_fit_chunks_weights_generators_and_a_sampled_init():
    X = blobs(3000, k=3)
    w = np.random.default_rng(2).integers(0, 4, size=X.shape[0]).astype(np.float64)
    kw = dict(n_components=3, tol=1e-6, **fixed_init(X, 3, "full"))
    ref = GaussianMixture(**kw).fit(X, sample_weight=w)
    got = GaussianMixture(**kw).fit_chunks(uneven_chunks(X, w))
    assert_close_fit(got, ref, 1e-9)

    # a generator function, each chunk generated from its own seed (never all in memory)
    centres = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0]])

    def chunks():
        for i in range(10):
            rng = np.random.default_rng(100 + i)
            yield centres[rng.integers(0, 3, size=500)] + rng.normal(size=(500, 3))

    data = np.concatenate(list(chunks()))
    ref = GaussianMixture(3, random_state=0).fit(data)
    # the sample is 1000 of the 5000 rows: a different start, the same optimum
    got = GaussianMixture(3, random_state=0).fit_chunks(chunks, init_size=1000)
    assert got.lower_bound_ == pytest.approx(ref.lower_bound_, abs=1e-3)
    # a pandas DataFrame chunk gives feature names
    pd = pytest.importorskip("pandas")
    frames = [pd.DataFrame(c, columns=["a", "b", "c"]) for c in np.array_split(X, 3)]
    g = GaussianMixture(3, random_state=0).fit_chunks(frames)
    assert list(g.feature_names_in_) == ["a", "b", "c"]


def test_fit_chunks_errors():
    X = blobs(600)
    gm = GaussianMixture(2)
    with pytest.raises(TypeError, match="one-shot iterator"):
        gm.fit_chunks(iter([X[:300], X[300:]]))
    with pytest.raises(TypeError, match="row_chunks"):
        gm.fit_chunks(X)
    with pytest.raises(ValueError, match=r"chunks\[1\] has 2 features"):
        gm.fit_chunks([X[:300], X[300:, :2]])
    with pytest.raises(ValueError, match=r"chunks\[1\] has dtype float32"):
        gm.fit_chunks([X[:300], X[300:].astype(np.float32)])
    bad = X.copy()
    bad[450, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN \(chunks\[1\], row 150; row 450 of the data\)"):
        gm.fit_chunks([bad[:300], bad[300:]])
    with pytest.raises(ValueError, match="every chunk must come with sample weights"):
        gm.fit_chunks([(X[:300], np.ones(300)), X[300:]])
    with pytest.raises(ValueError, match="Negative"):
        gm.fit_chunks([(X[:300], -np.ones(300))])
    with pytest.raises(ValueError, match="no data"):
        gm.fit_chunks([X[:0]])
    calls = []

    def shrinking():
        calls.append(1)
        return iter([X[: 600 - 100 * len(calls)]])

    with pytest.raises(ValueError, match="every pass must give the same rows"):
        gm.fit_chunks(shrinking)


# ---------------------------------------------------------------------- memory-mapped


def _fit_traced(gm, X, **kw):
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm.fit(X, **kw)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    "dtype,init_params",
    [(np.float64, "kmeans"), (np.float32, "kmeans"), (np.float64, "k-means++"), (np.float32, "random_from_data")],
)
def test_fit_on_a_memory_mapped_array_copies_nothing(tmp_path, dtype, init_params):
    """np.load(..., mmap_mode='r') is fitted in place: the result is bit-identical to
    the in-memory fit, and no allocation traced by NumPy comes near the data's size
    (k-means keeps one label per row: 8 bytes against D·itemsize)."""
    X = blobs(200_000, d=8, k=5, dtype=dtype)
    path = tmp_path / "x.npy"
    np.save(path, X)
    mm = np.load(path, mmap_mode="r")
    kw = dict(n_components=5, init_params=init_params, random_state=0, max_iter=10)
    got = GaussianMixture(**kw)
    peak = _fit_traced(got, mm)
    ref = GaussianMixture(**kw)
    _fit_traced(ref, X)
    for attr in PARAMS:
        assert np.array_equal(getattr(got, attr), getattr(ref, attr)), attr
        assert getattr(got, attr).dtype == dtype
    assert peak < 0.3 * X.nbytes, (peak, X.nbytes)
    assert got.score(mm) == ref.score(X)


def test_memory_mapped_array_that_needs_converting_is_streamed(tmp_path):
    """A big-endian / integer / Fortran-ordered memory-mapped file would be copied whole
    by a conversion: it is converted block by block instead (its initialisation sample
    is all the data here, so the result is the in-memory fit's)."""
    X = blobs(3000, d=3)
    for name, arr in (("be", X.astype(">f8")), ("int", np.round(X * 100).astype(np.int32)),
                      ("fortran", np.asfortranarray(X))):
        path = tmp_path / f"{name}.npy"
        np.save(path, arr)
        mm = np.load(path, mmap_mode="r")
        got = GaussianMixture(3, random_state=0).fit(mm)
        ref = GaussianMixture(3, random_state=0).fit(np.asarray(arr, dtype=np.float64, order="C"))
        assert_close_fit(got, ref, 1e-9)
    # memory: one block of rows plus the initialisation sample, not the whole array
    big = blobs(1_000_000, d=4, k=3, dtype=np.float32)
    path = tmp_path / "big.npy"
    np.save(path, big.astype(">f4"))
    mm = np.load(path, mmap_mode="r")
    peak = _fit_traced(GaussianMixture(3, covariance_type="diag", random_state=0, max_iter=3), mm)
    assert peak < 0.4 * big.nbytes, (peak, big.nbytes)


# -------------------------------------------------------------------------- online EM


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_partial_fit_with_step_one_is_an_em_iteration(covariance_type):
    """learning_offset=0, learning_decay=1: the first chunk's step is η = 1, so the
    running statistics are the chunk's and partial_fit is one EM iteration from the
    initial mixture (through the re-centring and per-sample normalisation)."""
    X = blobs(1500)
    init = fixed_init(X, 4, covariance_type)
    online = GaussianMixture(4, covariance_type=covariance_type, learning_offset=0.0,
                             learning_decay=1.0, **init).partial_fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        em = GaussianMixture(4, covariance_type=covariance_type, max_iter=1, **init).fit(X)
    for attr in PARAMS:
        np.testing.assert_allclose(getattr(online, attr), getattr(em, attr), rtol=1e-9, atol=1e-12)
    assert online.n_batch_iter_ == 1 and online.lower_bound_ == pytest.approx(em.lower_bound_)
    # η_2 = 1/2: the second chunk's statistics weigh as much as the first's
    online.partial_fit(X)
    assert online.n_batch_iter_ == 2


def test_partial_fit_converges_and_follows_sample_weight():
    X = blobs(40_000, k=4, seed=5)
    ref = GaussianMixture(4, random_state=0).fit(X)
    gm = GaussianMixture(4, random_state=0)
    for start in range(0, X.shape[0], 1000):
        gm.partial_fit(X[start : start + 1000])
    assert gm.n_batch_iter_ == 40
    assert gm.score(X) == pytest.approx(ref.score(X), abs=1e-2)
    # integer weights act as repeated rows
    w = np.random.default_rng(0).integers(1, 3, size=1000)
    init = fixed_init(X, 4, "full")
    a = GaussianMixture(4, **init).partial_fit(X[:1000], sample_weight=w)
    b = GaussianMixture(4, **init).partial_fit(np.repeat(X[:1000], w, axis=0))
    for attr in PARAMS:
        np.testing.assert_allclose(getattr(a, attr), getattr(b, attr), rtol=1e-9, atol=1e-12)


def test_partial_fit_lifecycle():
    X = blobs(4000)
    # continues from a fitted model (its implied statistics), and fit ends online EM
    fitted = GaussianMixture(4, random_state=0).fit(X)
    means = fitted.means_.copy()
    fitted.partial_fit(X[:500])
    assert fitted.n_batch_iter_ == 1
    np.testing.assert_allclose(fitted.means_, means, atol=0.2)
    fitted.fit(X)
    assert "_online" not in fitted.__dict__ and not hasattr(fitted, "n_batch_iter_")
    # errors name the problem; the schedule is validated like any parameter
    gm = GaussianMixture(4, random_state=0).partial_fit(X[:500])
    with pytest.raises(ValueError, match="X has 2 features"):
        gm.partial_fit(X[:100, :2])
    with pytest.raises(ValueError, match="n_samples >= n_components"):
        GaussianMixture(4).partial_fit(X[:3])
    for bad in (0.5, 1.5, "x"):
        with pytest.raises(ValueError, match="learning_decay"):
            GaussianMixture(4, learning_decay=bad).partial_fit(X)
    with pytest.raises(ValueError, match="learning_offset"):
        GaussianMixture(4, learning_offset=-1.0).partial_fit(X)
    # float32 chunks keep the model in float32; later chunks take its dtype
    g32 = GaussianMixture(4, random_state=0).partial_fit(X[:1000].astype(np.float32))
    g32.partial_fit(X[1000:2000])
    assert g32.means_.dtype == np.float32
    # the parameters are scikit-learn parameters: clone keeps them
    from sklearn.base import clone

    c = clone(GaussianMixture(learning_decay=0.9, learning_offset=3.0))
    assert c.learning_decay == 0.9 and c.learning_offset == 3.0


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_partial_fit_resumes_after_save_and_load(tmp_path, covariance_type):
    """Online EM saved half-way and loaded again continues where it stopped: the same step
    schedule (n_batch_iter_ is kept) from the statistics implied by the saved mixture, so
    the result equals the uninterrupted run's up to the rounding of that round trip."""
    X = blobs(8000, seed=3)
    chunks = np.array_split(X, 8)
    straight = GaussianMixture(4, covariance_type=covariance_type, random_state=0)
    for c in chunks:
        straight.partial_fit(c)
    first = GaussianMixture(4, covariance_type=covariance_type, random_state=0)
    for c in chunks[:4]:
        first.partial_fit(c)
    first.save(tmp_path / "half.gmm")
    resumed = gmmfast.load(tmp_path / "half.gmm")
    assert resumed.n_batch_iter_ == 4
    for c in chunks[4:]:
        resumed.partial_fit(c)
    assert resumed.n_batch_iter_ == straight.n_batch_iter_ == 8
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(resumed, name), getattr(straight, name), rtol=1e-9, atol=1e-12)
    # restarting the schedule (what loading used to do) gives a visibly different model
    restarted = gmmfast.load(tmp_path / "half.gmm")
    del restarted.n_batch_iter_
    for c in chunks[4:]:
        restarted.partial_fit(c)
    assert np.abs(restarted.means_ - straight.means_).max() > 1e-6


def test_fit_minibatch():
    X = blobs(60_000, k=4, seed=5)
    # One start for both fits, so that they compare batch and online EM and not two
    # k-means runs (all rows vs the first mini-batch), either of which can end in a
    # local optimum: with random_state=0 the first mini-batch's k-means merges two blobs
    p = ops.initial_params(X, 4, random_state=0)
    start = dict(weights_init=p.weights, means_init=p.means,
                 precisions_init=np.linalg.inv(p.covariances), random_state=0)
    ref = GaussianMixture(4, **start).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mb = GaussianMixture(4, **start).fit_minibatch(X, batch_size=2000, max_epochs=3)
    assert mb.score(X) == pytest.approx(ref.score(X), abs=1e-2)
    assert mb.n_iter_ <= 3 and len(mb.lower_bounds_) == mb.n_iter_ and mb.n_batch_iter_ == 30 * mb.n_iter_
    # the same random_state shuffles the same way
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = GaussianMixture(4, **start).fit_minibatch(X, batch_size=2000, max_epochs=3)
    assert np.array_equal(again.means_, mb.means_)
    # chunks (a generator function) and one-shot iterators for one epoch
    chunks = row_chunks(X, 5000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        by_chunks = GaussianMixture(4, **start).fit_minibatch(chunks, batch_size=2500, max_epochs=2)
        GaussianMixture(4, random_state=0).fit_minibatch(iter(np.array_split(X, 10)), max_epochs=1)
    assert by_chunks.score(X) == pytest.approx(ref.score(X), abs=2e-2)
    with pytest.raises(TypeError, match="one epoch"):
        GaussianMixture(4).fit_minibatch(iter(np.array_split(X, 10)), max_epochs=2)
    # tol stops it once the epoch means settle
    conv = GaussianMixture(4, random_state=0, tol=1e-1).fit_minibatch(X, batch_size=2000, max_epochs=10)
    assert conv.converged_ and conv.n_iter_ < 10


# -------------------------------------------------------------------------------- CLI


def test_cli_streams_a_large_npy(tmp_path):
    from gmmfast.cli import main

    X = blobs(6000, k=3)
    path = tmp_path / "x.npy"
    np.save(path, X)

    def run(*args):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            assert main([str(a) for a in args]) == 0
        return out.getvalue()

    plain = run("fit", path, "-k", 3, "--random-state", 0, "-o", tmp_path / "a.npz", "-q")
    streamed = run("fit", path, "-k", 3, "--random-state", 0, "--chunk-size", 700, "-o",
                   tmp_path / "b.npz", "-q")
    assert "streamed in blocks of 700 rows" in streamed
    a, b = gmmfast.load(tmp_path / "a.npz"), gmmfast.load(tmp_path / "b.npz")
    np.testing.assert_allclose(b.means_, a.means_, rtol=1e-9)
    bic = [line for line in plain.splitlines() if "BIC" in line]
    assert bic and bic[0] in streamed
    mini = run("fit", path, "-k", 3, "--random-state", 0, "--chunk-size", 500, "--mini-batch",
               "--max-epochs", 3, "-q")
    assert "mini-batch EM, batches of 500 rows" in mini
    out = io.StringIO()
    with contextlib.redirect_stderr(out):
        assert main(["fit", str(tmp_path / "a.npz"), "-k", "2", "--chunk-size", "10"]) == 1
