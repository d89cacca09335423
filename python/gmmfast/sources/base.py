"""The data-source protocol of the EM driver, and what the sources share.

The EM driver (:mod:`gmmfast._driver`) never sees where the rows live. It asks a
:class:`DataSource` for

- ``n_features``, ``n_rows`` (rows of non-zero weight, for the collapse rule), ``dtype``
  (the data's floating dtype) and ``device`` ("cpu", or a torch device);
- ``initial_stats(settings, random_state)``: the statistics of the initial
  responsibilities of ``settings.init_params`` (k-means labels, k-means++ seeds, random
  rows or random responsibilities), summed over all the rows;
- ``em_stats(params, settings)``: the fused E-step over all the rows (one pass), as
  summable statistics centred at the mixture's means;
- ``finalize(stats, reg_covar, settings)``: the M-step where the statistics are (the
  host, or the device for tensors), reporting failure instead of raising;
- ``host_stats``, ``to_device``, ``to_host``: moving statistics and parameters between
  the source's device and the host, where the recovery code runs;
- ``recovery_rows()``: host rows ``(X, sample_weight)`` where recovery may restart a
  component (all the rows in memory; a sample of them for data in parts);
- ``column_means()`` and ``is_root``: a fingerprint of the data for checkpoints, and
  whether this process writes them;
- ``agree(params, state)``, ``root(fn)``: the same parameters, or the same value of
  ``fn()`` computed by the root process, on every process (torch.distributed);
- ``memory_shape()``: ``(init_rows, pass_rows)``, the rows the initialisation works on
  (all the rows in memory, the pool of data in parts, the batch of online EM) and the
  most rows one native call of a pass sees (all of them, a chunk, a block); with it
  ``check_memory(settings, initialise, n_copies, op)`` estimates everything the fit will
  hold (:func:`gmmfast.ops.fit_memory_parts`) and raises MemoryError before the
  initialisation (the driver calls it first; a tensor source on a GPU also checks the
  device's memory);
- ``attributes(params)``: the fitted arrays, in the data's dtype and kind of array.

:class:`DataSource` implements everything but the data-specific parts for data whose
statistics are NumPy :class:`gmmfast.EMStats` on the host. :class:`PartitionedData` adds
the initialisation of data held in parts (chunks of a stream, Dask blocks,
torch.distributed ranks) from a sample of rows, the *pool*.

The implementations: :mod:`gmmfast.sources.array` (a NumPy array in memory, also a
memory-mapped one), :mod:`gmmfast.sources.chunks` (chunks of rows, and memory-mapped
arrays streamed by blocks), :mod:`gmmfast.sources.dask` (Dask arrays),
:mod:`gmmfast.sources.tensor` (torch tensors, CPU or CUDA) and
:mod:`gmmfast.sources.distributed` (a tensor per torch.distributed rank).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from .. import ops
from .._params import log_weights, weights_and_means
from .._types import EMStats, MixtureParams, param_shape
from .._validation import seed_from


class Finalized(NamedTuple):
    """The outcome of a source's M-step: the new mixture (None when a covariance was
    ill-defined), the statistics' log-likelihood and weight sum, and their n_k (on the
    host; None when the source did not transfer them)."""

    params: Optional[MixtureParams]
    log_likelihood: float
    weight_sum: float
    nk: Optional[np.ndarray]


class DataSource:
    """Base of the data sources (see the module docstring for the protocol). The
    defaults are those of data on the host, whose statistics are EMStats."""

    device = "cpu"
    #: whether the initialisation rows are a sample held besides the data (the pool)
    holds_pool = False
    #: whether this process writes checkpoints (one process of a distributed fit does)
    is_root = True
    n_features: int
    n_rows: int
    dtype: np.dtype

    def initial_stats(self, settings, random_state) -> EMStats:
        raise NotImplementedError

    def em_stats(self, params: MixtureParams, settings) -> EMStats:
        raise NotImplementedError

    def recovery_rows(self) -> tuple:
        raise NotImplementedError

    def column_means(self) -> np.ndarray:
        """float64 column means of the data (a checkpoint's fingerprint of it)."""
        raise NotImplementedError

    def memory_shape(self) -> tuple:
        """(rows the initialisation works on, most rows one call of a pass sees); by
        default all the rows for both."""
        return self.n_rows, self.n_rows

    def check_memory(self, settings, initialise=True, n_copies=3, op="GaussianMixture.fit", shape=None):
        """Raises MemoryError (the sizes and what to change) when the fit of ``settings``
        over this data would need more memory than is available: the parameters and
        their ``n_copies`` copies, the statistics accumulators and, with ``initialise``,
        the state of ``settings.init_params`` on the rows it sees. ``shape``: the
        ``memory_shape()`` to assume (a source checking early, before it knows it)."""
        init_rows, pass_rows = self.memory_shape() if shape is None else shape
        ops.check_fit_memory(
            max(1, int(pass_rows)), self.n_features, settings.n_components, settings.covariance_type,
            dtype=self.dtype, n_threads=settings.n_threads, init_params=settings.init_params,
            init_rows=max(1, int(init_rows)), initialise=initialise, n_copies=n_copies, op=op,
            held_rows=int(init_rows) if self.holds_pool else 0,
        )

    def finalize(self, stats: EMStats, reg_covar: float, settings) -> Finalized:
        try:
            params = ops.finalize(stats, reg_covar, self.dtype)
        except ValueError:
            params = None  # the driver's recovery code raises or recovers
        return Finalized(params, stats.log_likelihood, stats.weight_sum, stats.nk)

    def host_stats(self, stats) -> EMStats:
        return stats

    def to_device(self, params: MixtureParams) -> MixtureParams:
        return params

    def to_host(self, params: MixtureParams) -> MixtureParams:
        return params

    def agree(self, params: MixtureParams, state) -> MixtureParams:
        return params

    def root(self, fn):
        """fn() computed once and shared by every process (the root rank computes it)."""
        return fn()

    def attributes(self, params: MixtureParams) -> dict:
        dt = self.dtype
        return {
            "weights_": params.weights.astype(dt),
            "means_": params.means.astype(dt),
            "covariances_": params.covariances.astype(dt),
            "precisions_cholesky_": params.precisions_cholesky.astype(dt),
        }


def mixture_in_dtype(params: MixtureParams, dtype) -> tuple:
    """(log-weights, means, precision Cholesky factors) in the data's dtype: the mixture
    as the E-step kernels take it (the log-weights are ``params.log_weights`` when set)."""
    lw = log_weights(params.weights) if params.log_weights is None else params.log_weights
    return (
        np.asarray(lw, dtype=np.float64).astype(dtype),
        params.means.astype(dtype),
        params.precisions_cholesky.astype(dtype),
    )


class PartitionedData(DataSource):
    """What the initialisation and the EM loop need from data held in parts (chunks of a
    stream, Dask blocks, torch.distributed ranks); subclasses provide the parts.

    Attributes: n_samples, n_features, dtype, weighted, weight_sum, n_rows (rows of
    non-zero weight), mean (float64 column means), max_part_rows (the most rows of one
    part), and ``pool``: rows for k-means, as
    ``(X, select_weight, own_weight, complete)`` — a uniform sample (or weighted
    candidates) of the data, which is all of the data, in order, when ``complete``.
    Recovery restarts components at rows of the pool.
    """

    def initial_stats(self, settings, random_state) -> EMStats:
        return _partitioned_initial_stats(settings, self, random_state)

    def column_means(self) -> np.ndarray:
        return self.mean

    def recovery_rows(self) -> tuple:
        # a restart picks the worst-explained row of the pool: no single pass can look
        # at every row cheaply
        X_pool, _, w_own, _ = self.pool
        return X_pool, w_own

    holds_pool = True

    def memory_shape(self) -> tuple:
        return self.pool[0].shape[0], self.max_part_rows

    def label_stats(self, centres, covariance_type, n_threads, labels=None) -> EMStats:
        """Statistics of hard labels over all the data, centred at ``centres``: every
        row's nearest centre, or ``labels`` (one per row of the data, in order)."""
        raise NotImplementedError

    def random_resp_stats(self, seed, n_components, centres, covariance_type, n_threads) -> EMStats:
        raise NotImplementedError

    def random_rows(self, random_state, n_components):
        """n_components rows drawn uniformly without replacement (and their weights)."""
        X, _, w, _ = self.pool
        rs = np.random.default_rng(seed_from(random_state))
        idx = rs.choice(X.shape[0], size=n_components, replace=False)
        return X[idx], (None if w is None else w[idx])


def shape_only(K, D, covariance_type):
    return dict(
        log_weights=np.zeros(K),
        means=np.zeros((K, D)),
        precisions_cholesky=np.ones(param_shape(covariance_type, K, D)),
        covariance_type=covariance_type,
    )


def nearest_centre(X, centres, n_threads=None) -> np.ndarray:
    """Label of the nearest centre of every row (the lowest index on ties), computed
    as the most likely component of equal-weight unit spheres, in row blocks."""
    K = centres.shape[0]
    block = max(1, (1 << 22) // K)
    out = np.empty(X.shape[0], dtype=np.int64)
    zeros, ones = np.zeros(K, dtype=X.dtype), np.ones(K, dtype=X.dtype)
    for start in range(0, X.shape[0], block):
        w = ops.log_prob(X[start : start + block], zeros, centres, ones, "spherical", "weighted", n_threads=n_threads)
        out[start : start + block] = np.argmax(w, axis=1)
    return out


def label_stats_block(X, w, centres, covariance_type, n_threads, labels=None) -> EMStats:
    """Statistics of one block for hard labels (given, or the nearest centre), centred
    at the centres."""
    X = np.asarray(X)
    c = np.ascontiguousarray(centres, dtype=X.dtype)
    if labels is None:
        labels = nearest_centre(X, c, n_threads)
    K, D = c.shape
    return ops.em_stats(
        X, centres=c, labels=labels, sample_weight=w, n_threads=n_threads, **shape_only(K, D, covariance_type)
    )


def random_resp_block(X, w, seed, row_offset, K, centres, covariance_type, n_threads) -> EMStats:
    """Statistics of one block for scikit-learn's 'random' responsibilities: the rows'
    uniform draws are those of one ``default_rng(seed).uniform(size=(N, K))`` over all the
    data (the generator is advanced to the block's first row)."""
    rng = np.random.default_rng(seed)
    if row_offset:
        rng.bit_generator.advance(int(row_offset) * K)
    resp = rng.uniform(size=(X.shape[0], K)).astype(X.dtype)
    resp /= resp.sum(axis=1, keepdims=True)
    D = X.shape[1]
    return ops.em_stats(
        X, centres=centres, resp=resp, sample_weight=w, n_threads=n_threads, **shape_only(K, D, covariance_type)
    )


def one_hot_stats(rows, w, centres, weight_sum, covariance_type, n_threads) -> EMStats:
    """Statistics of responsibilities one-hot at K given rows (k-means++ seeds, random
    rows): component k holds row k alone. ``weight_sum`` is that of all the data."""
    K, D = rows.shape
    st = ops.em_stats(
        rows,
        centres=centres,
        resp=np.eye(K, dtype=rows.dtype),
        sample_weight=w,
        n_threads=n_threads,
        **shape_only(K, D, covariance_type),
    )
    st.weight_sum = float(weight_sum)
    return st


def _partitioned_initial_stats(settings, data, random_state) -> EMStats:
    """Statistics of the initial responsibilities of ``settings.init_params`` over data in parts.

    - 'kmeans': k-means (gmmfast's k-means++ and Lloyd) on ``data.pool``, then one pass
      over all the data with every row labelled by its nearest centre;
    - 'k-means++': k-means++ seeds drawn from the pool (responsibility one at each seed,
      as scikit-learn does);
    - 'random_from_data': rows drawn uniformly (one per component);
    - 'random': scikit-learn's random responsibilities, the same numbers as in memory.

    When the pool is complete (all the data) the result is that of the in-memory fit
    with the same random_state, up to the order of floating-point sums.
    """
    K, t, nt = settings.n_components, settings.covariance_type, settings.n_threads
    X_pool, w_select, w_own, _ = data.pool
    init = settings.init_params
    if init == "kmeans":
        complete = data.pool[3]

        def run_kmeans():
            km = ops.kmeans(X_pool, K, random_state=random_state, sample_weight=w_select, n_threads=nt)
            # a complete pool is the data in order: k-means's labels are the rows' labels
            return km.centres, (km.labels if complete else None)

        centres, labels = data.root(run_kmeans)
        return data.label_stats(centres, t, nt, labels=labels)
    if init in ("k-means++", "random_from_data"):

        def pick():
            if init == "random_from_data":
                return data.random_rows(random_state, K)
            _, idx = ops.kmeans_plusplus(X_pool, K, random_state=random_state, sample_weight=w_select, n_threads=nt)
            return X_pool[idx], (None if w_own is None else w_own[idx])

        rows, w = data.root(pick)
        rows = np.ascontiguousarray(rows)
        # pass 1 centred at the data mean, pass 2 at the means it gives (as in memory)
        first = one_hot_stats(rows, w, np.tile(data.mean, (K, 1)), data.weight_sum, t, nt)
        _, means = weights_and_means(first, data.dtype)
        return one_hot_stats(rows, w, means, data.weight_sum, t, nt)
    seed = data.root(lambda: seed_from(random_state))
    first = data.random_resp_stats(seed, K, np.tile(data.mean, (K, 1)), t, nt)
    _, means = weights_and_means(first, data.dtype)
    return data.random_resp_stats(seed, K, means, t, nt)


def default_init_size(n_components: int, n_features: int, itemsize: int) -> int:
    """Rows of the initialisation sample of streamed data: 100 000, at most 64 MiB of
    rows, and at least 50 per component."""
    return int(max(50 * n_components, min(100_000, (64 << 20) // max(1, n_features * itemsize))))
