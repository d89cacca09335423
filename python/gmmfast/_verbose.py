"""A fit's progress as the estimator reports it: scikit-learn's verbose output word for
word, and the monitor that passes the EM driver's progress to the estimator's hooks
(``_verbose_init_begin``, ``_on_iteration`` / ``_verbose_iter_end``,
``_verbose_init_end``), which subclasses such as the command line's progress display
override."""

from __future__ import annotations

from time import time

from ._driver import Monitor


class VerboseOutput:
    """scikit-learn's ``verbose`` messages (1: initialisations and every
    ``verbose_interval``-th iteration; 2: with times and the lower bound)."""

    def __init__(self):
        self.init_prev_time = self.iter_prev_time = time()

    def init_begin(self, verbose, n_init):
        if verbose >= 1:
            print("Initialization %d" % n_init)
        if verbose >= 2:
            self.init_prev_time = self.iter_prev_time = time()

    def iter_end(self, verbose, verbose_interval, n_iter, diff_ll):
        if n_iter % verbose_interval == 0:
            if verbose == 1:
                print("  Iteration %d" % n_iter)
            elif verbose >= 2:
                cur_time = time()
                print(
                    "  Iteration %d\t time lapse %.5fs\t ll change %.5f"
                    % (n_iter, cur_time - self.iter_prev_time, diff_ll)
                )
                self.iter_prev_time = cur_time

    def init_end(self, verbose, lb, converged):
        msg = "converged" if converged else "did not converge"
        if verbose == 1:
            print(f"Initialization {msg}.")
        elif verbose >= 2:
            t = time() - self.init_prev_time
            print(f"Initialization {msg}. time lapse {t:.5f}s\t lower bound {lb:.5f}.")


class EstimatorMonitor(Monitor):
    """The driver's progress, to the estimator's (overridable) verbose hooks."""

    def __init__(self, estimator):
        self.estimator = estimator

    def init_begin(self, init):
        self.estimator._verbose_init_begin(init)

    def initialising(self, what):
        # verbose >= 3 says what runs before the first iteration (k-means of many
        # components can take minutes); levels 1 and 2 print scikit-learn's output word
        # for word, and nothing more. The command line's progress line overrides it.
        hook = getattr(self.estimator, "_verbose_initialising", None)
        if hook is not None:
            hook(what)
        elif getattr(self.estimator, "verbose", 0) >= 3:
            print(f"  Initialising: {what}", flush=True)

    def iteration(self, n_iter, lower_bound, change):
        self.estimator._on_iteration(n_iter, lower_bound, change)

    def init_end(self, lower_bound, converged):
        self.estimator._verbose_init_end(lower_bound, converged)
