"""The EM driver: the one place where EM happens, for every kind of data.

    initialise -> repeat(em_stats -> finalize -> convergence / recovery) -> result

It knows nothing of where the rows live: it talks to a data source
(:mod:`gmmfast.sources.base` describes the protocol: the initial statistics, em_stats
summed over all the rows, the M-step on the source's device, the rows recovery may
restart components at). In-memory arrays, chunks, memory-mapped files, Dask arrays,
torch tensors and torch.distributed ranks are each one source; the driver runs the same
loop over all of them.

- :func:`fit` is scikit-learn's fit: ``n_init`` initialisations, the best kept, warm
  start, convergence on the change of the mean log-likelihood, ConvergenceWarning and
  the recovery warning.
- :class:`OnlineEM` is online / mini-batch EM: the same iterations over a sequence of
  batches with a step-size schedule (:class:`StepwiseEM`), one M-step per batch, instead
  of exact EM's one M-step per pass (:class:`ExactEM`).
- :func:`em_step` is one batch's E-step and M-step, with the recovery policy
  (:mod:`gmmfast._recovery`) as the fallback of a device M-step that failed.

Progress goes to a :class:`Monitor` (the estimator's verbose output, the command line's
progress line); the driver itself prints nothing.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import numpy as np

from . import ops
from ._checkpoint import Checkpoint, CheckpointError, FitState, RunRecord, fingerprint, rng_state, set_rng_state
from ._compat import ConvergenceWarning
from ._params import (
    covariances_from_precisions,
    precision_cholesky_from_precisions,
    weights_and_means,
)
from ._recovery import RunState, collapsed_components, m_step
from ._settings import EMSettings
from ._stats import blend_stats, implied_stats, learning_rate, recentre_stats, scale_stats
from ._types import EMStats, MixtureParams

__all__ = [
    "Monitor", "FitResult", "WarmStart", "MaximumLikelihood", "fit", "initial_params", "em_step", "iterate", "OnlineEM",
]


class Monitor:
    """Receives the progress of a fit; every hook does nothing here."""

    def init_begin(self, init: int) -> None:
        """Initialisation ``init`` (0, 1, ...) starts."""

    def initialising(self, what: str) -> None:
        """The initialisation (``what``: e.g. "k-means of 2000 components on 100000
        rows") starts; it may take long for many components."""

    def iteration(self, n_iter: int, lower_bound: float, change: float) -> None:
        """Iteration (or epoch) ``n_iter`` (1, 2, ...) ended with ``lower_bound``."""

    def init_end(self, lower_bound: float, converged: bool) -> None:
        """The initialisation's iterations ended."""


@dataclass
class WarmStart:
    """A fitted mixture to continue from (warm_start=True)."""

    params: MixtureParams  # host, float64
    lower_bound: float
    reg_covar: float  # the regularisation the previous fit ended with


@dataclass
class FitResult:
    """The kept run of :func:`fit`: parameters on the source's device, float64."""

    params: MixtureParams
    n_iter: int
    lower_bound: float
    lower_bounds: list = field(default_factory=list)
    converged: bool = False
    reg_covar: float = 0.0
    n_reseeds: int = 0


# ----------------------------------------------------------------------- step schedules


class ExactEM:
    """Exact (batch) EM: the M-step sees the statistics of all the rows as they are."""

    def statistics(self, stats, batch):
        return stats

    def objective(self, outcome) -> tuple:
        return outcome.log_likelihood, outcome.weight_sum

    def after_m_step(self, params, restarted, state) -> None:
        pass


#: exact EM keeps no state: one instance serves every fit
EXACT_EM = ExactEM()


class StepwiseEM:
    """Online (stepwise) EM (Cappé & Moulines 2009; Liang & Klein 2009): the M-step sees
    running per-sample statistics s ← (1 − η_t) s + η_t ŝ(batch), with
    η_t = (learning_offset + t)^(−learning_decay) for the t-th batch. The running
    statistics are centred at the current means and re-centred exactly when the M-step
    moves them."""

    def __init__(self, stats: EMStats, dtype, t: int, settings: EMSettings):
        self.stats = stats
        self.dtype = np.dtype(dtype)
        self.t = int(t)
        self.learning_decay = settings.learning_decay
        self.learning_offset = settings.learning_offset
        self._pending = None

    def statistics(self, chunk: EMStats, batch) -> EMStats:
        W = chunk.weight_sum
        if not W > 0:
            raise ValueError("sample_weight must not sum to zero")
        if not math.isfinite(chunk.log_likelihood):
            raise ValueError(
                "The log-likelihood of the chunk is not finite under the current mixture "
                f"({self.dtype} arithmetic overflowed): scale the data, or pass float64 data."
            )
        self.t += 1
        eta = learning_rate(self.t, self.learning_decay, self.learning_offset)
        # the chunk's statistics are centred at the means rounded to the data's dtype
        running = recentre_stats(self.stats, chunk.centres)
        running = blend_stats(running, scale_stats(chunk, 1.0 / W), eta)
        # the M-step sees the running statistics in units of this chunk's weight, so that
        # scikit-learn's 10·eps guard and the collapse rule mean what they do in fit
        m_stats = scale_stats(running, W)
        m_stats.log_likelihood = chunk.log_likelihood
        self._pending = (running, chunk.log_likelihood, W)
        return m_stats

    def objective(self, outcome) -> tuple:
        # the chunk's log-likelihood under the mixture before the step
        _, ll, W = self._pending
        return ll, W

    def after_m_step(self, params, restarted, state) -> None:
        running = self._pending[0]
        if restarted:
            self.stats = implied_stats(params, state.reg_covar, self.dtype)
        else:
            self.stats = recentre_stats(running, params.means)
        self._pending = None


# ------------------------------------------------------------------------------ the loop


def em_step(settings: EMSettings, batch, params, state: RunState, schedule=None) -> tuple:
    """One E-step and M-step of maximum-likelihood EM on ``batch`` (a data source) from
    ``params`` (on the batch's device). Returns ``(params, log_likelihood, weight_sum,
    restarted)``: the new mixture, the batch's contribution to the lower bound, and
    whether recovery restarted components."""
    schedule = schedule or EXACT_EM
    stats = schedule.statistics(batch.em_stats(params, settings), batch)
    state.n_rows = batch.n_rows
    outcome = batch.finalize(stats, state.reg_covar, settings)
    ll, weight = schedule.objective(outcome)
    new, restarted = outcome.params, False
    if new is None or (
        settings.recovery == "reseed"
        and collapsed_components(outcome.nk, outcome.weight_sum, state.n_rows).size
    ):
        # an ill-defined covariance or a collapsed component: the recovery policy, on
        # the host (raises scikit-learn's error when there is none)
        new, restarted = m_step(
            settings, batch.host_stats(stats), batch.dtype, batch.recovery_rows, batch.to_host(params), state
        )
        # every process takes the same decision (torch.distributed: rank 0's)
        new = batch.to_device(batch.agree(new, state))
    schedule.after_m_step(new, restarted, state)
    return new, ll, weight, restarted


# ----------------------------------------------------------------------------- models


class MaximumLikelihood:
    """What EM estimates, and how: GaussianMixture's model. The driver's loop (n_init,
    warm start, convergence, checkpoints, monitor) is the same for every model; a model
    says

    - ``initial_params(settings, source, random_state, inits, state)``: the initial
      parameters on the host;
    - ``to_device(source, params)`` / ``to_host(source, params)``: where the driver
      keeps them between iterations;
    - ``step(settings, batch, params, state, schedule)``: one E-step (``batch.em_stats``
      with the E-step's mixture) and M-step, returning ``(params, contribution,
      weight_sum, restarted)``;
    - ``lower_bound(contribution, weight_sum)``: the iteration's lower bound from the
      summed contributions of its batches, on which convergence (a change below tol)
      is tested;
    - ``params_type`` (the class of its parameters, for checkpoints), ``op`` (its name
      in memory errors) and optionally ``fingerprint()`` (what else than the settings
      and the data a checkpoint must agree on).

    Maximum likelihood keeps the mixture on the source's device and its lower bound is
    the mean log-likelihood. :class:`gmmfast._variational.VariationalModel` (the
    Bayesian mixture) is the other model.
    """

    op = "GaussianMixture.fit"
    params_type = MixtureParams

    def initial_params(self, settings, source, random_state, inits, state):
        return initial_params(settings, source, random_state, inits, state)

    def to_device(self, source, params):
        return source.to_device(params)

    def to_host(self, source, params):
        return source.to_host(params)

    def step(self, settings, batch, params, state, schedule):
        return em_step(settings, batch, params, state, schedule)

    def lower_bound(self, contribution: float, weight: float) -> float:
        return contribution / weight


#: maximum likelihood keeps no state: one instance serves every fit
MAXIMUM_LIKELIHOOD = MaximumLikelihood()


@dataclass
class Iterated:
    params: MixtureParams
    lower_bound: float
    lower_bounds: list
    converged: bool
    n_iter: int


def iterate(
    settings: EMSettings,
    batches: Callable[[], Iterable],
    params: MixtureParams,
    state: RunState,
    schedule=None,
    monitor: Optional[Monitor] = None,
    lower_bound: float = -np.inf,
    max_iter: Optional[int] = None,
    resume: Optional[tuple] = None,
    after_iteration: Optional[Callable] = None,
    model=None,
) -> Iterated:
    """EM iterations from ``params`` until the lower bound changes by less than
    ``settings.tol`` or ``max_iter`` (default ``settings.max_iter``) iterations ran.

    An iteration is one pass over ``batches()``: exact EM passes one batch (all the
    data) per iteration; online EM passes the batches of an epoch, one M-step each. The
    lower bound of an iteration is Σ log-likelihood / Σ weight over its batches.

    ``resume`` = (iterations done, their lower bounds, whether the last restarted
    components) continues a run from a checkpoint; ``after_iteration(n_iter, params,
    lower_bound, lower_bounds, restarted)`` is called after every iteration that does
    not end the run. ``model`` (default: maximum likelihood) makes the steps and the
    lower bound (see :class:`MaximumLikelihood`).
    """
    model = model or MAXIMUM_LIKELIHOOD
    schedule = schedule or EXACT_EM
    monitor = monitor or Monitor()
    max_iter = settings.max_iter if max_iter is None else max_iter
    done, lower_bounds, restarted = resume or (0, [], False)
    lower_bounds = list(lower_bounds)
    converged = False
    n_iter = done
    for n_iter in range(done + 1, max_iter + 1):
        # after a restart the objective changed: no convergence test against it
        prev = -np.inf if restarted else lower_bound
        ll = weight = 0.0
        restarted = False
        for batch in batches():
            params, ll_b, weight_b, restarted_b = model.step(settings, batch, params, state, schedule)
            ll += ll_b
            weight += weight_b
            restarted = restarted or restarted_b
        if weight == 0.0:
            raise ValueError("the data gave no rows in this pass")
        lower_bound = model.lower_bound(ll, weight)
        lower_bounds.append(lower_bound)
        change = lower_bound - prev
        monitor.iteration(n_iter, lower_bound, change)
        if not restarted and abs(change) < settings.tol:
            converged = True
            break
        if after_iteration is not None and n_iter < max_iter:
            after_iteration(n_iter, params, lower_bound, lower_bounds, restarted)
    return Iterated(params, lower_bound, lower_bounds, converged, n_iter)


# ------------------------------------------------------------------------ initialisation


def initial_params(settings: EMSettings, source, random_state, inits, state: RunState) -> MixtureParams:
    """The initial mixture on the host: the given *_init (``inits``, checked), the rest
    from the M-step of the initial responsibilities (``source.initial_stats``) under the
    recovery policy; the same on every process."""
    weights_init, means_init, precisions_init = inits
    t = settings.covariance_type
    params = None
    if weights_init is None or means_init is None or precisions_init is None:
        stats = source.initial_stats(settings, random_state)
        if precisions_init is None:
            params, _ = m_step(settings, stats, source.dtype, source.recovery_rows, None, state)
        else:
            # scikit-learn computes no covariance when precisions_init is given, so a
            # degenerate initial cluster must not fail here
            weights_k, means_k = weights_and_means(stats, source.dtype)
            params = MixtureParams(t, weights_k, means_k, None, None)
    weights = params.weights if weights_init is None else weights_init
    means = params.means if means_init is None else means_init
    if precisions_init is None:
        covariances, prec_chol = params.covariances, params.precisions_cholesky
    else:
        prec_chol = precision_cholesky_from_precisions(precisions_init, t)
        covariances = covariances_from_precisions(precisions_init, t)
    return source.agree(MixtureParams(t, weights, means, covariances, prec_chol), state)


# --------------------------------------------------------------------------- batch fit


def fit(
    settings: EMSettings,
    source,
    random_state,
    inits,
    *,
    warm_start: Optional[WarmStart] = None,
    monitor: Optional[Monitor] = None,
    checkpoint: Optional[Checkpoint] = None,
    model=None,
) -> FitResult:
    """scikit-learn's fit loop over ``source``: ``n_init`` initialisations (one from
    ``warm_start`` when given), exact EM from each, the best lower bound kept.
    Warns (ConvergenceWarning) when the kept run did not converge and (RuntimeWarning)
    when recovery acted in it.

    First, before any heavy work, ``source.check_memory`` raises MemoryError (naming the
    sizes and what to change) when the fit would need more memory than is available.

    With ``checkpoint``, the state is written every ``checkpoint.every`` iterations, a
    fit finding a checkpoint of itself resumes from it (the same result as without the
    interruption), and the checkpoint is removed when the fit ends.

    ``model`` (default: maximum likelihood, GaussianMixture's) is what is estimated:
    its initial parameters, steps and lower bound (see :class:`MaximumLikelihood`).
    """
    model = model or MAXIMUM_LIKELIHOOD
    monitor = monitor or Monitor()
    do_init = warm_start is None
    n_init = settings.n_init if do_init else 1
    # before any heavy work: MemoryError naming the sizes when the parameters, their
    # copies, the statistics or the initialisation cannot fit
    source.check_memory(settings, initialise=do_init and _initialises(inits), op=model.op)
    start_reg = float(settings.reg_covar)
    if not do_init and settings.recovery == "reg_covar":
        # a warm start goes on with the regularisation the previous fit ended with
        start_reg = max(start_reg, float(warm_start.reg_covar))
    best: Optional[RunRecord] = None
    max_lower_bound = -np.inf
    first_init, resumed, stamp = 0, None, None
    if checkpoint is not None:
        stamp = fingerprint(settings, source, warm_start, inits)
        if hasattr(model, "fingerprint"):
            stamp["model"] = model.fingerprint()

        def load():
            try:
                return checkpoint.load(stamp, model.params_type), None
            except CheckpointError as exc:
                return None, str(exc)

        # the root process reads the checkpoint and every process resumes from its
        # state: with torch.distributed the file need not be on a shared file system
        resumed, error = source.root(load)
        if error is not None:
            raise CheckpointError(error)
        if resumed is not None:
            first_init, max_lower_bound = resumed.init, resumed.max_lower_bound
            if resumed.best is not None:
                best = dataclasses.replace(resumed.best, params=model.to_device(source, resumed.best.params))
            set_rng_state(random_state, resumed.random_state)
    for init in range(first_init, n_init):
        monitor.init_begin(init)
        # the collapse rule counts samples that carry weight (zero weight = absent row)
        state = RunState(start_reg, source.n_rows)
        lower_bound = -np.inf if do_init else warm_start.lower_bound
        resume = None
        if resumed is not None:
            state.reg_covar, state.reseeds = resumed.reg_covar, resumed.n_reseeds
            params, lower_bound = model.to_device(source, resumed.params), resumed.lower_bound
            resume = (resumed.n_iter, resumed.lower_bounds, resumed.restarted)
            resumed = None
        elif do_init:
            _report_initialising(monitor, settings, source, inits)
            params = model.to_device(source, model.initial_params(settings, source, random_state, inits, state))
        else:
            params = model.to_device(source, warm_start.params)
        if settings.max_iter == 0:
            best = RunRecord(params, 0, -np.inf, [], False, state.reg_covar, state.reseeds)
            continue

        def save(n_iter, params, lower_bound, lower_bounds, restarted, init=init, state=state):
            if checkpoint.due(n_iter) and source.is_root:
                checkpoint.save(FitState(
                    init, n_iter, model.to_host(source, params), lower_bound, lower_bounds, restarted,
                    state.reg_covar, state.reseeds, _on_host(model, source, best), max_lower_bound,
                    rng_state(random_state), stamp,
                ))

        run = iterate(
            settings, lambda: (source,), params, state, monitor=monitor, lower_bound=lower_bound,
            resume=resume, after_iteration=None if checkpoint is None else save, model=model,
        )
        monitor.init_end(run.lower_bound, run.converged)
        if run.lower_bound > max_lower_bound or max_lower_bound == -np.inf:
            max_lower_bound = run.lower_bound
            best = RunRecord(
                run.params, run.n_iter, run.lower_bound, run.lower_bounds, run.converged,
                state.reg_covar, state.reseeds,
            )
    if checkpoint is not None and source.is_root:
        checkpoint.remove()
    if not best.converged and settings.max_iter > 0:
        warnings.warn(
            "Best performing initialization did not converge. "
            "Try different init parameters, or increase max_iter, "
            "tol, or check for degenerate data.",
            ConvergenceWarning,
        )
    # the recovery record of the kept run (the other runs' models are discarded)
    warn_if_recovered(settings, best.reg_covar, best.n_reseeds)
    return FitResult(
        best.params, best.n_iter, best.lower_bound, best.lower_bounds, best.converged, best.reg_covar, best.n_reseeds
    )


def _initialises(inits) -> bool:
    """Whether init_params runs (some of weights/means/precisions_init is not given)."""
    return any(v is None for v in inits)


def _report_initialising(monitor: Monitor, settings: EMSettings, source, inits) -> None:
    if _initialises(inits):
        method = {"kmeans": "k-means", "k-means++": "k-means++ seeding"}.get(settings.init_params, settings.init_params)
        monitor.initialising(f"{method} of {settings.n_components} components on {source.memory_shape()[0]} rows")


def _on_host(model, source, record: Optional[RunRecord]) -> Optional[RunRecord]:
    if record is None:
        return None
    return dataclasses.replace(record, params=model.to_host(source, record.params))


def warn_if_recovered(settings: EMSettings, reg_covar: float, n_reseeds: int) -> None:
    if n_reseeds or reg_covar > settings.reg_covar:
        done = []
        if n_reseeds:
            done.append(f"{n_reseeds} component restart(s)")
        if reg_covar > settings.reg_covar:
            done.append(f"reg_covar raised to {reg_covar:.3g}")
        warnings.warn(
            f"recovery={settings.recovery!r}: {' and '.join(done)}, because components "
            "collapsed or had ill-defined (not positive definite) covariances.",
            RuntimeWarning,
        )


# ----------------------------------------------------------------------------- online EM


_ONLINE = "GaussianMixture online EM (partial_fit, fit_minibatch)"


class OnlineEM:
    """The running state of online EM: the current mixture (host, float64), the
    step-size schedule with its running statistics and chunk count, the recovery
    bookkeeping and the data's dtype. :meth:`run` passes batches through
    :func:`iterate` with the schedule."""

    def __init__(self, settings: EMSettings, params: MixtureParams, dtype, state: RunState, t: int = 0):
        self.settings = settings
        self.params = params
        self.dtype = np.dtype(dtype)
        self.state = state
        self.schedule = StepwiseEM(implied_stats(params, state.reg_covar, dtype), dtype, t, settings)

    @classmethod
    def from_data(cls, settings: EMSettings, batch, random_state, inits) -> "OnlineEM":
        """Online EM initialised from the first batch as fit would initialise."""
        batch.check_memory(settings, _initialises(inits), op=_ONLINE)
        state = RunState(settings.reg_covar, batch.n_rows)
        params = initial_params(settings, batch, random_state, inits, state)
        return cls(settings, params, batch.dtype, state)

    @classmethod
    def from_fitted(cls, settings: EMSettings, params, dtype, reg_covar, n_rows, t=0) -> "OnlineEM":
        """Online EM continuing from a fitted mixture, its step schedule at ``t``."""
        K, D = params.means.shape
        ops.check_fit_memory(max(1, int(n_rows)), D, K, settings.covariance_type, dtype=dtype,
                             n_threads=settings.n_threads, initialise=False, n_copies=3, op=_ONLINE)
        return cls(settings, params, dtype, RunState(reg_covar, n_rows), t)

    @property
    def t(self) -> int:
        """Batches seen so far."""
        return self.schedule.t

    def run(self, batches: Callable[[], Iterable], max_iter: int = 1, monitor: Optional[Monitor] = None) -> Iterated:
        """``max_iter`` passes (epochs) over ``batches()``, one M-step per batch; stops
        early when an epoch's lower bound changes by less than tol. All or nothing: when
        a step fails (or Ctrl-C interrupts it) the state is that before the call."""
        saved = (self.params, self.schedule.stats, self.schedule.t, vars(self.state).copy())
        try:
            run = iterate(
                self.settings, batches, self.params, self.state, self.schedule, monitor, max_iter=max_iter
            )
        except BaseException:
            self.params, self.schedule.stats, self.schedule.t, state = saved
            vars(self.state).update(state)
            self.schedule._pending = None
            raise
        self.params = run.params
        return run
