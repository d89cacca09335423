"""GaussianMixture.fit on Dask arrays, on a real two-process dask.distributed cluster on
loopback: each EM iteration maps em_stats over the blocks on the workers and tree-reduces
the statistics.

References: the in-memory fit of the same data from the same initial mixture (equal up
to the order of floating-point sums), and the in-memory fit with the same random_state
when every block is its own initialisation summary. The worker-loss tests kill worker
processes of their own cluster mid-fit: the reference is the undisturbed fit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("dask.distributed")

import gmmfast.dask  # noqa: E402
from gmmfast import ConvergenceWarning, GaussianMixture  # noqa: E402

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


def two_worker_client():
    """A client of a new 2-process LocalCluster (one thread each); closes both."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Port .* is already in use")  # another cluster has it
        cluster = distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        )
    c = distributed.Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


@pytest.fixture(scope="module")
def client():
    yield from two_worker_client()


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


# --------------------------------------------------------------------- losing workers
#
# A fresh two-process LocalCluster per test (these tests kill its workers). X is
# persisted from a graph, so Dask can recompute the blocks a dead worker held. A
# worker is killed with SIGKILL from a timer thread started by the iteration hook, so
# the kill lands inside a later pass (or between passes: both are recovered the same
# way). Every wait is bounded: the fit runs in a daemon thread joined with a timeout.

FAULT_KW = dict(n_components=4, covariance_type="full", n_threads=1, tol=0.0, max_iter=12,
                init_params="kmeans", random_state=0)


class KillAtIteration(GaussianMixture):
    """Calls self.kill (if set) from a timer thread 20 ms after iteration self.kill_at
    ends, inside the next pass or between passes; iteration kill_at + 1 does not end
    before the kill is done, so that the fit goes on past it."""

    kill = None
    kill_at = 3

    def _on_iteration(self, n_iter, lower_bound, change):
        super()._on_iteration(n_iter, lower_bound, change)
        if self.kill is not None and n_iter == self.kill_at:
            self._timer = threading.Timer(0.02, self.kill)
            self._timer.start()
        elif self.kill is not None and n_iter == self.kill_at + 1:
            self._timer.join(10.0)


@pytest.fixture
def fault_client(monkeypatch):
    monkeypatch.setattr(gmmfast.dask, "recompute_timeout", 30.0)
    yield from two_worker_client()


def graph_blobs(n=200_000, chunk=10_000):
    """Four blobs of 4-D rows, generated on the workers from a graph (recomputable)."""
    X = da.random.RandomState(0).normal(size=(n, 4), chunks=(chunk, 4))
    return X + 3.0 * (da.arange(n, chunks=chunk) % 4)[:, None]


def bounded_fit(gm, X, sample_weight=None, seconds=60.0):
    """gm.fit(X) in a daemon thread: (the estimator or the exception, the warnings)."""
    out = {}

    def run():
        try:
            out["result"] = gm.fit(X, sample_weight=sample_weight)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["result"] = exc

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = threading.Thread(target=run, daemon=True)
        t.start()
        t.join(seconds)
    assert not t.is_alive(), f"the fit did not end within {seconds} s"
    return out["result"], [w for w in caught if not issubclass(w.category, ConvergenceWarning)]


def holder_of_block(client, X, i=0):
    return client.who_has(distributed.futures_of(X))[X.__dask_keys__()[i][0]][0]


def fit_losing_a_holder(client, X):
    """X persisted; a fit during which the worker holding its first block is killed
    (and restarted): (that worker, the fit's result or exception, the warnings)."""
    X = X.persist()
    distributed.wait(X)
    victim = holder_of_block(client, X)
    gm = KillAtIteration(**FAULT_KW)
    gm.kill = kill_worker(client, victim, restart=True)
    return (victim, *bounded_fit(gm, X))


def kill_worker(client, address, restart):
    """SIGKILL the worker process at address; without ``restart`` its nanny is told first
    not to start a new one (a machine lost, or a worker without a nanny)."""
    pid = client.run(os.getpid, workers=[address])[address]
    if not restart:
        client.run(lambda dask_worker: dask_worker.close_gracefully(), nanny=True, workers=[address])
    return lambda: os.kill(pid, signal.SIGKILL)


def wait_for(predicate, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.parametrize(
    "restart,weighted",
    [(True, False), (False, False), (True, True)],
    ids=["nanny-restarts-worker", "worker-gone", "weighted"],
)
def test_worker_loss_mid_fit_gives_the_undisturbed_fit(fault_client, restart, weighted):
    """A worker holding blocks of X is SIGKILLed during the 4th iteration: Dask recomputes
    its blocks from X's graph, the interrupted pass is redone, and the fit is the
    undisturbed one, bit for bit. With a nanny (the default of a real cluster) the worker
    comes back at a new address; without, the fit ends on the surviving worker. No block
    of X travels between workers, before or after the recovery."""
    client = fault_client
    X = graph_blobs().persist()
    w = None
    if weighted:
        w = (da.arange(X.shape[0], chunks=10_000) % 3).astype(np.float64)
    distributed.wait(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref = GaussianMixture(**FAULT_KW).fit(X, sample_weight=w)
    assert ref.n_iter_ == 12

    victim = holder_of_block(client, X)
    gm = KillAtIteration(**FAULT_KW)
    gm.kill = kill_worker(client, victim, restart)
    client.run(lambda dask_worker: dask_worker.transfer_outgoing_log.clear())
    t0 = time.monotonic()
    got, caught = bounded_fit(gm, X, sample_weight=w)
    elapsed = time.monotonic() - t0
    if isinstance(got, BaseException):
        raise got
    logs = client.run(lambda dask_worker: list(dask_worker.transfer_outgoing_log))
    sent = {str(k) for log in logs.values() for e in log for k in e["keys"]}
    assert not sent & {str(k) for (k,) in X.__dask_keys__()}
    messages = [str(c.message) for c in caught]
    assert any(
        issubclass(c.category, RuntimeWarning) and victim in str(c.message) and "recomputed" in str(c.message)
        for c in caught
    ), messages
    assert victim not in client.nthreads()
    # the same fit: statistics are exact sums in a fixed tree
    assert got.n_iter_ == ref.n_iter_ and got.converged_ == ref.converged_
    assert got.lower_bound_ == ref.lower_bound_
    for attr in PARAMS:
        np.testing.assert_array_equal(getattr(got, attr), getattr(ref, attr), err_msg=attr)
    # the blocks are all in memory again, on live workers
    who = client.who_has(distributed.futures_of(X))
    assert all(set(h) <= set(client.nthreads()) and h for h in who.values())
    if restart:
        wait_for(lambda: len(client.nthreads()) == 2)
    else:
        assert len(client.nthreads()) == 1
    assert elapsed < 45, elapsed


def test_worker_loss_errors(fault_client, monkeypatch):
    """A clear error when the lost blocks cannot be recomputed (X built from arrays sent
    with client.scatter: no graph), and when the retries are used up
    (max_block_retries = 0 restores the old error)."""
    client = fault_client
    rng = np.random.default_rng(0)
    parts = [client.scatter(rng.normal(size=(5_000, 4)) + 3.0 * (i % 4)) for i in range(8)]
    X = da.concatenate([da.from_delayed(p, shape=(5_000, 4), dtype=np.float64) for p in parts])
    victim, got, _ = fit_losing_a_holder(client, X)
    assert isinstance(got, RuntimeError), got
    assert "cannot be recomputed" in str(got) and "client.scatter" in str(got) and victim in str(got)
    wait_for(lambda: len(client.nthreads()) == 2)

    monkeypatch.setattr(gmmfast.dask, "max_block_retries", 0)
    victim, got, caught = fit_losing_a_holder(client, graph_blobs(40_000, 5_000))
    assert isinstance(got, RuntimeError), got
    assert "max_block_retries = 0" in str(got) and victim in str(got)
    assert not any(issubclass(c.category, RuntimeWarning) for c in caught)
