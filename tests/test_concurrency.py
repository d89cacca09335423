"""Concurrency (issue 8): the GIL is released by every native kernel; Python threads that
fit and predict at once (separate estimators, or one shared fitted estimator) get
exactly the serial results; and a process forked after the kernels ran multi-threaded
(os.fork, multiprocessing 'fork') can call them without hanging.

Fork tests run in a fresh interpreter (subprocess) with a timeout, so that a hang fails
the test instead of blocking CI, and a forked child never inherits pytest's state.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import gmmfast
from gmmfast import GaussianMixture, ops

from conftest import assert_releases_gil, random_mixture, sample_mixture

FITTED = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_",
          "lower_bound_", "n_iter_", "converged_")


def assert_same_fit(a, b):
    for name in FITTED:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name  # bit for bit
        else:
            assert x == y, name


def run_threads(jobs):
    """Runs the callables at once (released together by a barrier); returns their
    results in order, re-raising the first exception."""
    barrier = threading.Barrier(len(jobs))
    results = [None] * len(jobs)
    errors = []

    def worker(i, job):
        try:
            barrier.wait()
            results[i] = job()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a thread did not finish in 120 s"
    if errors:
        raise errors[0]
    return results


# ======================================================================================
# the GIL


def _gil_cases():
    rng = np.random.default_rng(0)
    mix = random_mixture(rng, "full", 32, 16)
    X = rng.normal(scale=4.0, size=(200_000, 16))
    lw, mu, pc, t = mix.args()
    Xk = rng.normal(size=(100_000, 8))
    return {
        "log_prob": lambda: ops.log_prob(X, lw, mu, pc, t, "log_resp", n_threads=1),
        "em_stats": lambda: ops.em_stats(X, lw, mu, pc, t, n_threads=1),
        "kmeans_plusplus": lambda: ops.kmeans_plusplus(Xk, 64, random_state=0, n_threads=1),
        "kmeans_lloyd": lambda: ops.kmeans_lloyd(Xk, Xk[:64], max_iter=8, n_threads=1),
        "first_nonfinite_row": lambda: [gmmfast._core.first_nonfinite_row(Xk, 1) for _ in range(20)],
    }


@pytest.mark.parametrize("name", ["log_prob", "em_stats", "kmeans_plusplus", "kmeans_lloyd"])
def test_kernels_release_the_gil(name):
    """While a worker thread runs a single-threaded kernel, the main thread keeps running
    Python (conftest.assert_releases_gil)."""
    assert_releases_gil(name, _gil_cases()[name], min_duration=0.02, min_iterations=100)


# ======================================================================================
# threads give the serial results


def _fit_jobs():
    rng = np.random.default_rng(1)
    jobs = []
    for i, t in enumerate(("full", "tied", "diag", "spherical")):
        mix = random_mixture(rng, t, 3, 4)
        X = sample_mixture(rng, mix, 3000, dtype=np.float32 if i % 2 else np.float64)
        jobs.append((X, dict(n_components=3, covariance_type=t, random_state=i, tol=1e-6, max_iter=40)))
    return jobs


def test_threads_fitting_separate_estimators_match_serial():
    """Four threads each fit their own estimator (every covariance type, float32 and
    float64), at once: every fitted attribute equals the serial fit bit for bit."""
    jobs = _fit_jobs()
    serial = [GaussianMixture(**kw).fit(X) for X, kw in jobs]
    for _ in range(2):
        concurrent = run_threads([lambda X=X, kw=kw: GaussianMixture(**kw).fit(X) for X, kw in jobs])
        for a, b in zip(serial, concurrent):
            assert_same_fit(a, b)


def test_threads_predicting_with_a_shared_estimator_match_serial():
    """One fitted estimator shared by six threads calling predict, predict_proba,
    score_samples and score at once (while two more threads fit other estimators):
    every result equals the serial one exactly. Fitting one estimator from two threads
    at once is not supported (as in scikit-learn)."""
    rng = np.random.default_rng(2)
    mix = random_mixture(rng, "full", 4, 5)
    X = sample_mixture(rng, mix, 4000)
    shared = GaussianMixture(4, random_state=0).fit(X)
    batches = [sample_mixture(rng, mix, 5000 + 1000 * i) for i in range(6)]
    methods = ("predict", "predict_proba", "score_samples", "score")

    def predictions(B):
        return [getattr(shared, m)(B) for m in methods]

    serial = [predictions(B) for B in batches]
    fits = _fit_jobs()[:2]
    fit_serial = [GaussianMixture(**kw).fit(Xf) for Xf, kw in fits]
    jobs = [lambda B=B: predictions(B) for B in batches]
    jobs += [lambda Xf=Xf, kw=kw: GaussianMixture(**kw).fit(Xf) for Xf, kw in fits]
    out = run_threads(jobs)
    for want, got in zip(serial, out[: len(batches)]):
        for w, g in zip(want, got):
            np.testing.assert_array_equal(g, w)
    for a, b in zip(fit_serial, out[len(batches):]):
        assert_same_fit(a, b)


def test_threads_calling_every_op_at_once_match_serial():
    """The functional ops (em_stats, log_prob, finalize, k-means) from several threads
    with different thread counts: each result equals its serial run bit for bit."""
    rng = np.random.default_rng(3)
    mix = random_mixture(rng, "tied", 3, 6)
    X = sample_mixture(rng, mix, 20_000)
    lw, mu, pc, t = mix.args()

    def job(n):
        st = ops.em_stats(X, lw, mu, pc, t, n_threads=n)
        params = ops.finalize(st)
        lp = ops.log_prob(X, lw, mu, pc, t, "log_resp", n_threads=n)
        km = ops.kmeans(X, 3, random_state=0, n_threads=n)
        return [st.nk, st.s1, st.s2, np.float64(st.log_likelihood), params.means,
                params.precisions_cholesky, lp, km.centres, km.labels]

    counts = [1, 2, 1, 2]
    serial = [job(n) for n in counts]
    for want, got in zip(serial, run_threads([lambda n=n: job(n) for n in counts])):
        for w, g in zip(want, got):
            assert w.tobytes() == g.tobytes()


# ======================================================================================
# fork safety of the OpenMP pool


def run_script(body: str, timeout: float = 60.0) -> str:
    """Runs FORK_SETUP + `body` in a fresh interpreter; a hang (timeout) or a failure
    fails the test."""
    code = textwrap.dedent(FORK_SETUP) + textwrap.dedent(body)
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the script hung (> {timeout} s): {exc.stdout!r} {exc.stderr!r}")
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


FORK_SETUP = """
import os, sys, select, time
import numpy as np
from gmmfast import _core, ops, GaussianMixture

rng = np.random.default_rng(0)
X = rng.normal(size=(30_000, 6))
X[:15_000] += 6.0

def work(n_threads):
    p = ops.initial_params(X, 3, "full", random_state=0, n_threads=n_threads)
    lw = np.log(p.weights)
    st = ops.em_stats(X, lw, p.means, p.precisions_cholesky, "full", n_threads=n_threads)
    lp = ops.log_prob(X, lw, p.means, p.precisions_cholesky, "full", n_threads=n_threads)
    big = ops.precision_cholesky(np.broadcast_to(np.eye(64), (8, 64, 64)), "full")[0]  # parallel finalize
    gm = GaussianMixture(3, random_state=0, n_threads=n_threads).fit(X[:5000])
    return [st.s2, st.nk, lp, big, gm.means_, gm.covariances_]

def digest(arrays):
    import hashlib
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()

def wait(pid, timeout):
    # waitpid with a deadline: a hung child is killed and reported
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return "hung"
"""


def test_os_fork_after_parallel_kernels():
    """The parent runs every kernel on two threads (starting libgomp's pool), then
    forks. Without the fork handler the child's first parallel region waits forever
    for the parent's pool threads (GNU libgomp). With it the child runs single-threaded,
    asking for any number of threads, and gets the parent's one-thread results bit for
    bit; the parent keeps its threads."""
    out = run_script("""
    parent_two = digest(work(2))
    parent_one = digest(work(1))
    assert not _core.single_threaded_after_fork()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            msg = "%s %s %s %s" % (_core.single_threaded_after_fork(), digest(work(None)),
                                   digest(work(2)), _core.build_info()["max_threads"])
        except BaseException as exc:
            msg = "error " + repr(exc)
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    code = wait(pid, 40)
    msg = os.read(r, 4096).decode()
    assert code == 0, (code, msg)
    flag, d_default, d_two, max_threads = msg.split()
    assert flag == "True", msg
    assert d_default == parent_one and d_two == parent_one, "child results differ from one-thread results"
    assert max_threads == "1"
    assert digest(work(2)) == parent_two  # the parent's pool still works
    print("ok")
    """)
    assert out.strip().endswith("ok")


def test_multiprocessing_fork_pool_after_parallel_kernels():
    """A multiprocessing pool with the 'fork' start method, created after the parent ran
    kernels on two threads: its workers fit models (single-threaded) with the serial
    one-thread results."""
    out = run_script("""
    import multiprocessing as mp

    def task(seed):
        gm = GaussianMixture(3, random_state=seed).fit(X[:4000])
        return _core.single_threaded_after_fork(), gm.means_.tobytes(), gm.lower_bound_

    work(2)
    want = [GaussianMixture(3, random_state=s, n_threads=1).fit(X[:4000]) for s in range(4)]
    with mp.get_context("fork").Pool(2) as pool:
        got = pool.map_async(task, range(4)).get(timeout=40)
    for w, (flag, means, lb) in zip(want, got):
        assert flag is True
        assert means == w.means_.tobytes() and lb == w.lower_bound_
    print("ok")
    """)
    assert out.strip().endswith("ok")


def test_fork_before_any_parallel_kernel_keeps_threads():
    """A child forked from a process that has not started OpenMP threads (e.g. the
    children of multiprocessing's forkserver) keeps every thread."""
    out = run_script("""
    _core.build_info()  # a query, not a parallel region
    pid = os.fork()
    if pid == 0:
        ok = not _core.single_threaded_after_fork()
        work(2)  # the pool was never started: two threads in the child are fine
        os._exit(0 if ok else 3)
    assert wait(pid, 40) == 0
    print("ok")
    """)
    assert out.strip().endswith("ok")
