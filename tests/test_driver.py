"""The EM driver (gmmfast._driver) over the data-source protocol (gmmfast.sources.base).

The estimator's tests cover every built-in source through GaussianMixture; these check
the protocol itself, as the author of a new fitting mode would use it: a source written
from the protocol alone gives the fit of the NumPy reference (gmmfast.reference.em) from
the same start, the monitor sees every iteration, and online EM is the same iterations
with a step-size schedule.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gmmfast import _driver, ops
from gmmfast import reference as ref
from gmmfast._recovery import RunState
from gmmfast._settings import EMSettings
from gmmfast._stats import recentre_stats
from gmmfast._types import COVARIANCE_TYPES
from gmmfast.sources.array import ArraySource
from gmmfast.sources.base import DataSource, mixture_in_dtype


def blobs(n=900, d=3, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=5.0, size=(k, d))
    return centres[rng.integers(0, k, size=n)] + rng.normal(size=(n, d))


class BlocksSource(DataSource):
    """A source written from the protocol alone: rows held as a list of blocks, whose
    statistics are summed in em_stats; recovery restarts at rows of the first block."""

    def __init__(self, blocks):
        self.blocks = blocks
        self.dtype = blocks[0].dtype
        self.n_features = blocks[0].shape[1]
        self.n_rows = sum(b.shape[0] for b in blocks)
        self.passes = 0

    def em_stats(self, params, settings):
        self.passes += 1
        mixture = mixture_in_dtype(params, self.dtype)
        total = None
        for b in self.blocks:
            st = ops.em_stats(b, *mixture, settings.covariance_type, n_threads=settings.n_threads)
            total = st if total is None else total + st
        return total

    def initial_stats(self, settings, random_state):
        # k-means on all the rows, as the in-memory source does
        return ArraySource(np.vstack(self.blocks)).initial_stats(settings, random_state)

    def recovery_rows(self):
        return self.blocks[0], None


class Recorder(_driver.Monitor):
    def __init__(self):
        self.events = []

    def init_begin(self, init):
        self.events.append(("begin", init))

    def iteration(self, n_iter, lower_bound, change):
        self.events.append(("iter", n_iter, lower_bound, change))

    def init_end(self, lower_bound, converged):
        self.events.append(("end", lower_bound, converged))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_a_protocol_source_gives_the_reference_fit(covariance_type):
    """From the same start, the driver over a hand-written source equals the NumPy
    reference's EM (1e-10: both sum the same float64 statistics in another order)."""
    X = blobs()
    settings = EMSettings(3, covariance_type=covariance_type, tol=1e-6, max_iter=200)
    init = ops.initial_params(X, 3, covariance_type, random_state=0)
    source = BlocksSource(np.array_split(X, 4))
    start = _driver.WarmStart(init, -np.inf, settings.reg_covar)
    result = _driver.fit(settings, source, np.random.RandomState(0), (None, None, None), warm_start=start)
    want = ref.em(X, init, tol=1e-6, max_iter=200)
    assert result.n_iter == want.n_iter and result.converged == want.converged
    assert source.passes == result.n_iter  # one pass over the data per iteration
    assert abs(result.lower_bound - want.lower_bound) < 1e-10
    for name in ("weights", "means", "covariances", "precisions_cholesky"):
        np.testing.assert_allclose(getattr(result.params, name), getattr(want.params, name),
                                   rtol=1e-9, atol=1e-12, err_msg=name)


def test_initialisation_comes_from_the_source():
    """Without a warm start the driver initialises through source.initial_stats: the
    result is the in-memory source's fit with the same random state, bit for bit."""
    X = blobs(seed=1)
    settings = EMSettings(3, covariance_type="full", n_init=2)
    a = _driver.fit(settings, BlocksSource(np.array_split(X, 3)), np.random.RandomState(5), (None,) * 3)
    b = _driver.fit(settings, ArraySource(X), np.random.RandomState(5), (None,) * 3)
    assert a.n_iter == b.n_iter
    np.testing.assert_allclose(a.params.means, b.params.means, rtol=1e-10)
    assert abs(a.lower_bound - b.lower_bound) < 1e-12


def test_monitor_sees_every_iteration_of_every_initialisation():
    X = blobs(seed=2)
    settings = EMSettings(3, n_init=2, tol=1e-4)
    rec = Recorder()
    result = _driver.fit(settings, ArraySource(X), np.random.RandomState(0), (None,) * 3, monitor=rec)
    begins = [e for e in rec.events if e[0] == "begin"]
    ends = [e for e in rec.events if e[0] == "end"]
    assert [e[1] for e in begins] == [0, 1] and len(ends) == 2
    # the kept run's lower bounds are the ones the monitor saw in one of the runs
    runs, current = [], []
    for e in rec.events:
        if e[0] == "iter":
            current.append(e[2])
        elif e[0] == "end":
            runs.append(current)
            current = []
    assert result.lower_bounds in runs
    iters = [e for e in rec.events if e[0] == "iter"]
    # numbered from 1 in each run; change = this lower bound minus the previous one
    # (minus -inf at the first iteration of a run)
    assert [e[1] for e in iters] == list(range(1, len(runs[0]) + 1)) + list(range(1, len(runs[1]) + 1))
    for e, prev in zip(iters, [None] + iters[:-1]):
        want = np.inf if e[1] == 1 else e[2] - prev[2]
        assert e[3] == want


def test_max_iter_zero_keeps_the_initial_mixture_without_iterating():
    X = blobs(seed=3)
    settings = EMSettings(3, max_iter=0)
    rec = Recorder()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConvergenceWarning for max_iter=0
        result = _driver.fit(settings, ArraySource(X), np.random.RandomState(0), (None,) * 3, monitor=rec)
    assert result.n_iter == 0 and result.lower_bound == -np.inf and result.lower_bounds == []
    assert not any(e[0] == "iter" for e in rec.events)


def test_online_step_is_stepwise_em_by_hand():
    """One OnlineEM step equals the stepwise-EM formula written out: running statistics
    (implied by the mixture) re-centred at the chunk's centres, blended with step
    η_1 = (τ₀ + 1)^(−κ), scaled to the chunk's weight and finalized."""
    X = blobs(seed=4)
    settings = EMSettings(3, covariance_type="diag", learning_decay=0.6, learning_offset=2.0)
    init = ops.initial_params(X[:300], 3, "diag", random_state=0)
    online = _driver.OnlineEM.from_fitted(settings, init, X.dtype, settings.reg_covar, 300)
    running0 = online.schedule.stats
    batch = ArraySource(np.ascontiguousarray(X[300:600]))
    run = online.run(lambda: (batch,), max_iter=1)

    chunk = ops.em_stats(batch.X, np.log(init.weights), init.means, init.precisions_cholesky, "diag")
    eta = (2.0 + 1) ** -0.6
    r = recentre_stats(running0, chunk.centres)
    W = chunk.weight_sum
    blended_nk = (1 - eta) * r.nk + eta * chunk.nk / W
    blended_s1 = (1 - eta) * r.s1 + eta * chunk.s1 / W
    blended_s2 = (1 - eta) * r.s2 + eta * chunk.s2 / W
    want = ref.finalize(
        type(chunk)("diag", chunk.centres, chunk.log_likelihood, W, blended_nk * W, blended_s1 * W, blended_s2 * W),
        settings.reg_covar,
    )
    assert online.t == 1 and run.n_iter == 1 and not run.converged
    assert run.lower_bounds == [pytest.approx(chunk.log_likelihood / W, rel=1e-12)]
    np.testing.assert_allclose(online.params.means, want.means, rtol=1e-9)
    np.testing.assert_allclose(online.params.covariances, want.covariances, rtol=1e-9)


def test_collapse_triggers_recovery_through_the_protocol():
    """recovery='reseed': a component with no responsibility is restarted at a row
    that the source offers (recovery_rows), and the restart is counted."""
    X = blobs(seed=5)
    settings = EMSettings(3, covariance_type="full", recovery="reseed")
    init = ops.initial_params(X, 3, "full", random_state=0)
    init.means[2] = 1e3  # far from every row: its responsibility mass is ~0
    source = BlocksSource(np.array_split(X, 2))
    state = RunState(settings.reg_covar, source.n_rows)
    params, ll, weight, restarted = _driver.em_step(settings, source, init, state)
    assert restarted and state.reseeds == 1
    assert any(np.array_equal(params.means[2], row) for row in source.blocks[0])
    assert weight == X.shape[0] and np.isfinite(ll)
