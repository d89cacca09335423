"""Fitting Gaussian mixtures to Dask arrays: ``GaussianMixture.fit(X)`` with X a
``dask.array.Array`` (or :func:`fit` here).

Dask is optional (``pip install "dask[array,distributed]"``); gmmfast imports it only
when given a Dask array.

How it works
------------
Every EM iteration is one Dask graph: a task per row block computes the block's
statistics (:func:`gmmfast.ops.em_stats`, the fused E-step) where the block lives, and
the statistics are summed in a tree (fan-in 8) down to one
:class:`gmmfast.EMStats`, which the client turns into the next mixture
(:func:`gmmfast.ops.finalize`). Only the mixture (to the workers) and the statistics (back)
move: K·(1 + D + the covariance's size) + 2 float64 numbers per block, never rows.
Persist X on the workers first (``X = X.persist()``) so that its blocks are not
recomputed in every iteration. The tree's order of additions is fixed, so the result
does not depend on scheduling; it equals the in-memory fit from the same initial
mixture up to the order of floating-point sums.

Initialisation (k-means and k-means++ on Dask)
----------------------------------------------
A first pass summarises each block by weighted candidate rows (a coreset in the manner
of Ailon, Jaiswal & Monteleoni, "Streaming k-means approximation", NIPS 2009): a block
of at most ``m`` rows is its own summary; a larger one is summarised by ``m`` rows drawn
by k-means++ (D² sampling) within the block, each weighted by the sample weight of the
block's rows nearest to it, with ``m = max(2K, ⌈3 K ln(K + 1)⌉)`` by default
(``candidates_per_block``). The same pass checks every block (finite values, weights)
and counts rows and weights. The client then runs ``init_params`` on the pooled
candidates:

- 'kmeans': weighted k-means (k-means++ seeding and Lloyd) on the candidates, then one
  more pass labels every row by its nearest centre and tree-reduces the statistics of
  those labels;
- 'k-means++': weighted k-means++ seeds among the candidates (one-hot responsibilities
  at the seeds, as scikit-learn);
- 'random_from_data': K rows drawn uniformly from all rows (fetched: K rows move);
- 'random': scikit-learn's random responsibilities, generated on the workers (the same
  numbers as in memory: each block advances one generator to its first row).

When every block has at most ``m`` rows the candidates are the data themselves, in
order, and the initialisation is that of the in-memory fit with the same
random_state. Given ``weights_init``, ``means_init`` and ``precisions_init``, the first
pass only checks the data.

Losing workers
--------------
With a ``dask.distributed`` client and X persisted, each block's task runs on a worker
holding the block. If the only workers holding some blocks leave the cluster during a
fit (a crash, a killed process, a lost machine), the pass under way (an EM iteration,
or one of the initialisation's passes) is cancelled, Dask recomputes the lost blocks
from X's graph (the scheduler keeps the task behind every persisted block and
recomputes it when its data is lost; it runs on any live worker, a restarted one
included), gmmfast reads where the blocks now live, places the sample weights of those
blocks next to them, and redoes the pass from the start. Statistics are exact sums in a
fixed tree order, so the fit is the undisturbed one: the same iterations, lower bound
and parameters, bit for bit (a block's statistics depend on the thread count computing
them, not on the worker: set ``n_threads`` when the workers' default thread counts,
``OMP_NUM_THREADS`` or their cores, differ). Each recovery emits a
``RuntimeWarning`` naming the lost workers and the recomputed blocks. Rows still never
travel to the client, and the tasks still run where the blocks are (blocks recomputed
elsewhere are not moved back to a worker that the nanny restarts).

A loss is noticed within about a second of the scheduler removing the worker (by its
address: a worker that a nanny restarts at the same address, with a fixed worker port,
may go unnoticed; the fit is still right, as Dask recomputes the blocks and runs the
pinned tasks there, but blocks recomputed on other workers are then copied to it in
each pass). The fit still fails, with a ``RuntimeError`` saying which blocks and why, when

- the lost blocks cannot be recomputed: X was built from data that existed only on the
  lost workers, with no graph behind it (e.g. arrays sent with ``client.scatter``), or
  recomputing them fails (Dask's error is quoted);
- they are not back on a live worker within :data:`recompute_timeout` seconds;
- workers holding blocks are lost more than :data:`max_block_retries` times in one pass.

Without a distributed client (Dask's local schedulers) nothing is pinned and Dask
itself handles its tasks.

The data source itself is :class:`gmmfast.sources.dask.DaskSource`; the EM loop is the
one of every fit (``gmmfast._driver``).
"""

from __future__ import annotations

from .sources.dask import _dask, candidates_per_block, stats_nbytes

__all__ = ["fit", "candidates_per_block", "stats_nbytes", "max_block_retries", "recompute_timeout"]

#: Recoveries from lost workers allowed in one pass over the blocks (an EM iteration or
#: an initialisation pass) before the fit raises; 0 raises at the first loss. Read when
#: a fit starts.
max_block_retries = 3

#: Seconds a recovery waits for Dask to recompute the lost blocks on live workers before
#: the fit raises; None waits without limit. Read when a fit starts.
recompute_timeout = 600.0


def fit(estimator, X, sample_weight=None, *, candidates_per_block=None):
    """``estimator.fit(X, sample_weight=sample_weight)`` for a Dask array X, with the
    initialisation's summary size as an option; returns the estimator.

    candidates_per_block : int, default=None
        Rows summarising each block for the initialisation (see the module docstring);
        blocks of at most this many rows are used whole. Default:
        :func:`candidates_per_block` of n_components.
    """
    _dask()
    if candidates_per_block is not None and int(candidates_per_block) < 1:
        raise ValueError(f"candidates_per_block must be a positive integer, got {candidates_per_block!r}")
    estimator._fit(X, sample_weight, candidates_per_block=candidates_per_block)
    return estimator
