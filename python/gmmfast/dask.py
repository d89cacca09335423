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

The data source itself is :class:`gmmfast.sources.dask.DaskSource`; the EM loop is the
one of every fit (``gmmfast._driver``).
"""

from __future__ import annotations

from .sources.dask import _dask, candidates_per_block, stats_nbytes

__all__ = ["fit", "candidates_per_block", "stats_nbytes"]


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
