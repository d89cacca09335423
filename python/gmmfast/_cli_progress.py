"""How ``gmmfast fit`` reports on itself while and after it runs.

Holds ``_Progress`` (at most one progress line per interval on stderr, with a timer
thread that announces a slow initialisation), ``_progress_estimator`` (a
GaussianMixture subclass that feeds it through the estimator's verbose hooks),
``_report_warnings`` (the warnings caught during a fit, each printed once) and the
wall-time and thread-count text (``_format_seconds``, ``_threads``) shared by the fit
summary and the demo. Imports only :mod:`gmmfast._cli_data` among the CLI modules.
"""

from __future__ import annotations

import math
import sys
import threading
from time import perf_counter
from typing import Optional

from ._cli_data import _one_line


def _threads(n_threads) -> int:
    from . import _core

    return int(n_threads) if n_threads else int(_core.build_info().get("max_threads", 1))


def _format_seconds(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1.0:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


# ------------------------------------------------------------------------ progress


class _Progress:
    """Reports a long EM fit on stderr: at most one line per ``interval`` seconds."""

    def __init__(self, stream, interval=1.0, n_init=1):
        self.stream = stream
        self.interval = interval
        self.n_init = n_init
        self.lower_bound = math.nan
        self.init = 0
        self.start = self.last = perf_counter()
        self.printed = False

    def begin(self, init):
        self.init = init
        self.printed = False
        self.start = self.last = perf_counter()
        # k-means runs before the first iteration, in native code that releases the
        # GIL: a timer thread says so when it takes long.
        self._cancel_timer()
        self._timer = threading.Timer(self.interval, self._initialising)
        self._timer.daemon = True
        self._timer.start()

    _timer = None

    def _cancel_timer(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _initialising(self):
        self.printed = True
        which = f"init {self.init + 1}/{self.n_init}: " if self.n_init > 1 else ""
        method = self.what or ("k-means" if self.init_params == "kmeans" else self.init_params)
        self.stream.write(f"  {which}initialising ({method})...\n")
        self.stream.flush()

    init_params = "kmeans"
    what = None  # what the initialisation runs (the driver's monitor says)

    def iteration(self, n_iter, change):
        if n_iter == 1:
            self._cancel_timer()
        now = perf_counter()
        if now - self.last < self.interval:
            return
        self.last = now
        self.printed = True
        which = f"init {self.init + 1}/{self.n_init}, " if self.n_init > 1 else ""
        change_text = f"change {change:.2e}" if math.isfinite(change) else "first iteration"
        self.stream.write(
            f"  {which}iteration {n_iter}: lower bound {self.lower_bound:.6f} "
            f"({change_text}), {now - self.start:.1f} s\n"
        )
        self.stream.flush()

    def end(self, lower_bound, converged):
        self._cancel_timer()
        if self.printed:
            which = f"init {self.init + 1}/{self.n_init} " if self.n_init > 1 else ""
            self.stream.write(
                f"  {which}{'converged' if converged else 'stopped (max_iter)'}: lower bound "
                f"{lower_bound:.6f}, {perf_counter() - self.start:.1f} s\n"
            )
            self.stream.flush()


def _progress_estimator(progress: Optional[_Progress], estimator=None, **params):
    """A GaussianMixture (or the given ``estimator`` class, e.g. the Bayesian mixture)
    that reports to ``progress`` through the estimator's verbose hooks (the lower bound
    of each iteration comes with its _on_iteration hook)."""
    if estimator is None:
        from .mixture import GaussianMixture as estimator

    class _ProgressMixture(estimator):
        def _verbose_init_begin(self, n_init, *a, **k):
            super()._verbose_init_begin(n_init, *a, **k)
            if progress is not None:
                progress.begin(n_init)

        def _verbose_initialising(self, what):
            if progress is not None:
                progress.what = what
            elif self.verbose >= 2:
                print(f"  Initialising: {what}", flush=True)

        def _on_iteration(self, n_iter, lower_bound, change):
            if progress is not None:
                progress.lower_bound = lower_bound
            super()._on_iteration(n_iter, lower_bound, change)

        def _verbose_iter_end(self, n_iter, diff_ll, *a, **k):
            super()._verbose_iter_end(n_iter, diff_ll, *a, **k)
            if progress is not None:
                progress.iteration(n_iter, diff_ll)

        def _verbose_init_end(self, lb, converged, *a, **k):
            super()._verbose_init_end(lb, converged, *a, **k)
            if progress is not None:
                progress.end(lb, converged)

    return _ProgressMixture(**params)


def _report_warnings(caught, prefix="warning"):
    seen = set()
    for w in caught:
        msg = _one_line(w.message)
        if msg not in seen:
            seen.add(msg)
            print(f"gmmfast: {prefix}: {msg}", file=sys.stderr)
