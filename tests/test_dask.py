"""GaussianMixture.fit on Dask arrays, on a real two-process dask.distributed cluster on
loopback: each EM iteration maps em_stats over the blocks on the workers and tree-reduces
the statistics.

References: the in-memory fit of the same data from the same initial mixture (equal up
to the order of floating-point sums), and the in-memory fit with the same random_state
when every block is its own initialisation summary."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("dask.distributed")

import gmmfast.dask  # noqa: E402
from gmmfast import GaussianMixture  # noqa: E402

PARAMS = ("weights_", "means_", "covariances_", "precisions_cholesky_")


def blobs(n=2000, d=3, k=4, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=6.0, size=(k, d)) + 20.0
    return (centres[rng.integers(0, k, size=n)] + rng.normal(size=(n, d))).astype(dtype)


def fixed_init(X, k, covariance_type):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = GaussianMixture(k, covariance_type=covariance_type, max_iter=2, random_state=1).fit(X)
    w = g.weights_.astype(np.float64)
    return dict(weights_init=w / w.sum(), means_init=g.means_.astype(np.float64),
                precisions_init=g.precisions_.astype(np.float64))


def assert_close_fit(a, b, rtol):
    for attr in PARAMS:
        np.testing.assert_allclose(getattr(a, attr), getattr(b, attr), rtol=rtol, atol=rtol, err_msg=attr)
        assert getattr(a, attr).dtype == getattr(b, attr).dtype
    assert a.n_iter_ == b.n_iter_ and a.lower_bound_ == pytest.approx(b.lower_bound_, rel=rtol)


def test_without_a_cluster_and_lazy_import():
    """Dask's default (threaded) scheduler works too, and `import gmmfast` does not
    import dask."""
    X = blobs(1200)
    kw = dict(n_components=4, covariance_type="diag", n_threads=1, **fixed_init(X, 4, "diag"))
    got = GaussianMixture(**kw).fit(da.from_array(X, chunks=(300, 3)))
    assert_close_fit(got, GaussianMixture(**kw).fit(X), 1e-9)
    code = "import sys, gmmfast; gmmfast.GaussianMixture(2).fit([[0.], [1.], [2.]]); print('dask' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    )
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.mark.parametrize(
    "covariance_type,dtype,weighted",
    [("full", np.float64, False), ("tied", np.float64, True), ("diag", np.float32, False),
     ("spherical", np.float64, True)],
)
def test_fit_matches_the_in_memory_fit(client, covariance_type, dtype, weighted):
    X = blobs(3000, dtype=dtype)
    w = np.random.default_rng(3).integers(0, 3, size=X.shape[0]).astype(dtype) if weighted else None
    kw = dict(n_components=4, covariance_type=covariance_type, n_threads=1, tol=1e-5,
              **fixed_init(X, 4, covariance_type))
    Xd = da.from_array(X, chunks=(400, 3)).persist()
    wd = None if w is None else da.from_array(w, chunks=400)
    got = GaussianMixture(**kw).fit(Xd, sample_weight=wd)
    ref = GaussianMixture(**kw).fit(X, sample_weight=w)
    assert_close_fit(got, ref, 1e-9 if dtype == np.float64 else 2e-4)
    # predict / score stay lazy and agree with NumPy
    labels = got.predict(Xd)
    assert isinstance(labels, da.Array)
    np.testing.assert_array_equal(labels.compute(), got.predict(X))
    assert got.score(Xd) == pytest.approx(got.score(X), rel=1e-12)


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_initialisation_on_dask(client, init_params):
    """Blocks no larger than the per-block summary are their own summary: every
    init_params then gives the in-memory fit's start (same random_state). Larger blocks
    are summarised by k-means++ candidates, and the fit still finds the optimum."""
    X = blobs(1000)
    kw = dict(n_components=4, init_params=init_params, random_state=0, n_threads=1)
    Xd = da.from_array(X, chunks=(250, 3)).persist()
    got = gmmfast.dask.fit(GaussianMixture(**kw), Xd, candidates_per_block=250)
    assert_close_fit(got, GaussianMixture(**kw).fit(X), 1e-9)
    if init_params in ("kmeans", "k-means++"):
        # blocks of 250 rows summarised by max(8, ceil(12 ln 5)) = 20 candidates. Both
        # run to tol=1e-6: at the default tol=1e-3 two fits of one optimum from
        # different starts stop up to a few 1e-3 apart, which says nothing of the optimum
        tight = dict(kw, tol=1e-6)
        summarised = GaussianMixture(**tight).fit(Xd)
        ref = GaussianMixture(n_init=3, **tight).fit(X)
        assert summarised.lower_bound_ == pytest.approx(ref.lower_bound_, abs=1e-4)


def test_only_statistics_move(client):
    """Per iteration the workers send each other statistics (and the mixture), never
    rows: no block of X is transferred, and the bytes are those of the statistics."""
    X = blobs(200_000, d=8, k=4)
    Xd = da.from_array(X, chunks=(25_000, 8)).persist()
    distributed.wait(Xd)
    block_keys = {str(k) for k in Xd.__dask_keys__() for k in (k if isinstance(k, list) else [k])}
    kw = dict(n_components=4, n_threads=1, max_iter=5, tol=0.0, **fixed_init(X[:5000], 4, "full"))
    client.run(lambda dask_worker: dask_worker.transfer_outgoing_log.clear())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(**kw).fit(Xd)
    logs = client.run(lambda dask_worker: list(dask_worker.transfer_outgoing_log))
    entries = [e for log in logs.values() for e in log]
    sent_keys = {str(k) for e in entries for k in e["keys"]}
    assert not sent_keys & block_keys
    per_iteration = sum(e["total"] for e in entries) / (gm.n_iter_ + 1)  # + the checking pass
    stats = gmmfast.dask.stats_nbytes(4, 8, "full")
    assert per_iteration < 16 * stats + 10_000, (per_iteration, stats)  # ≤ 8 blocks + the mixture


def test_errors(client):
    X = blobs(600)
    bad = X.copy()
    bad[450, 1] = np.nan
    with pytest.raises(ValueError, match="NaN .first at row 450"):
        GaussianMixture(2, n_threads=1).fit(da.from_array(bad, chunks=(200, 3)))
    with pytest.raises(ValueError, match="sample_weight.shape"):
        GaussianMixture(2).fit(da.from_array(X, chunks=(200, 3)), sample_weight=np.ones(5))
    with pytest.raises(ValueError, match="Negative"):
        GaussianMixture(2, n_threads=1).fit(da.from_array(X, chunks=(200, 3)), sample_weight=-np.ones(600))
    with pytest.raises(ValueError, match="2D"):
        GaussianMixture(2).fit(da.ones((10, 2, 2)))
