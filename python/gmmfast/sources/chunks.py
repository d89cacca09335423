"""Data given as chunks of rows, and memory-mapped arrays streamed by blocks, as an EM
data source: every pass streams the chunks again, one in memory at a time, and sums
their statistics (exact EM over data that never sit in memory at once).

- :func:`row_chunks`: a re-iterable over row blocks of an array (a memory-mapped .npy
  file, an h5py or zarr dataset);
- :class:`Chunks`: the ``chunks`` argument of ``fit_chunks`` / ``fit_minibatch``
  normalised (a sequence, a function returning an iterator, or a one-shot iterator);
- :class:`ChunkedSource`: the data source. Its first pass validates every chunk, counts
  rows and weights and draws the initialisation sample (reservoir sampling, Li's
  Algorithm L), the *pool* of :class:`gmmfast.sources.base.PartitionedData`.
"""

from __future__ import annotations

import collections.abc

import numpy as np

from .. import _core, ops
from .._types import EMStats, MixtureParams
from .._validation import as_2d_float, feature_names, seed_from
from .base import PartitionedData, default_init_size, label_stats_block, mixture_in_dtype, shape_only


def row_chunks(X, chunk_rows: int, sample_weight=None, dtype=None):
    """A re-iterable over blocks of ``chunk_rows`` rows of X (with their weights).

    X is any array that can be sliced by rows without being read whole: a NumPy array,
    ``np.load(path, mmap_mode="r")``, an h5py or zarr dataset. Each block is converted
    on its own (to ``dtype`` when given), so memory is one block, never all of X::

        X = np.load("big.npy", mmap_mode="r")
        gm.fit_chunks(gmmfast.streaming.row_chunks(X, 1_000_000))
    """
    rows = int(chunk_rows)
    if rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    n = int(X.shape[0])

    def chunks():
        for start in range(0, n, rows):
            block = X[start : start + rows]
            if dtype is not None:
                block = np.asarray(block).astype(dtype, copy=False)
            if sample_weight is None:
                yield block
            else:
                yield block, np.asarray(sample_weight[start : start + rows])

    return chunks


def is_chunk_source(obj) -> bool:
    """True for what fit_chunks / fit_minibatch accept as chunks rather than as one
    array: a callable, a list/tuple of 2-D arrays or (X, weights) pairs, an iterator."""
    if hasattr(obj, "shape") or isinstance(obj, (str, bytes)):
        return False
    if callable(obj):
        return True
    if isinstance(obj, (list, tuple)):
        if len(obj) == 0:
            return False
        first = obj[0]
        return isinstance(first, tuple) or getattr(first, "ndim", 1) == 2
    return isinstance(obj, collections.abc.Iterator)


class Chunks:
    """Normalises the ``chunks`` argument: a sequence of arrays (or ``(X, weights)``
    pairs), a zero-argument callable returning a new iterator each time, or a re-iterable
    object; a one-shot iterator (a generator object) only when one pass is enough."""

    def __init__(self, chunks, name: str = "chunks"):
        self.name = name
        self._one_shot = None
        self._used = False
        if hasattr(chunks, "shape") or isinstance(chunks, (str, bytes)):
            raise TypeError(
                f"{name} must be a sequence of arrays or a function returning an iterator of "
                f"arrays, got {type(chunks).__name__}; for one array use fit(X), or "
                "gmmfast.streaming.row_chunks(X, rows) to stream it by blocks of rows"
            )
        if callable(chunks):
            self._make = chunks
        elif isinstance(chunks, collections.abc.Iterator):
            self._one_shot = chunks
            self._make = None
        elif isinstance(chunks, collections.abc.Iterable):
            self._make = lambda: iter(chunks)
        else:
            raise TypeError(
                f"{name} must be a sequence of arrays, a function returning an iterator of "
                f"arrays, or an iterator, got {type(chunks).__name__}"
            )

    @property
    def reiterable(self) -> bool:
        return self._one_shot is None

    def __iter__(self):
        if self._one_shot is not None:
            if self._used:
                raise TypeError(
                    f"{self.name} is a one-shot iterator (a generator object) and it has been "
                    "consumed; this needs several passes over the data: pass a list of arrays "
                    "or a function that returns a new iterator, e.g. `lambda: my_chunks()`"
                )
            self._used = True
            return iter(self._one_shot)
        it = self._make()
        try:
            return iter(it)
        except TypeError:
            raise TypeError(
                f"{self.name}() must return an iterator (or iterable) of arrays, got "
                f"{type(it).__name__}"
            ) from None


def _split_item(item, index, name):
    if isinstance(item, tuple):
        if len(item) != 2:
            raise ValueError(
                f"{name}[{index}]: expected an array or a pair (X, sample_weight), got a tuple "
                f"of {len(item)} items"
            )
        return item
    return item, None


def _chunk_weights(w, n_rows, dtype, where):
    if w is None:
        return None
    w = np.asarray(w)
    if w.dtype.kind not in "fiub":
        raise ValueError(f"{where}: sample_weight must be numeric, got dtype {w.dtype}")
    w = np.ascontiguousarray(w, dtype=dtype)
    if w.shape != (n_rows,):
        raise ValueError(f"{where}: sample_weight has shape {w.shape}, expected ({n_rows},)")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{where}: sample_weight must be finite")
    if np.any(w < 0):
        raise ValueError(f"{where}: Negative values in data passed to `sample_weight`")
    return w


class _Reservoir:
    """A uniform random sample of at most ``size`` rows of a stream (Li's Algorithm L,
    vectorised), with their weights and positions; memory O(size) whatever the length.

    The first ``size`` rows are kept as they come, and no random number is drawn until
    row ``size + 1``: a stream of at most ``size`` rows gives exactly its rows, in order,
    and consumes nothing of ``random_state``. The replacements are drawn in batches that
    do not depend on the chunks, so neither does the sample.
    """

    _BATCH = 4096

    def __init__(self, size, n_features, dtype, weighted, random_state):
        self.size = int(size)
        self.X = np.empty((self.size, n_features), dtype=dtype)
        self.w = np.empty(self.size, dtype=dtype) if weighted else None
        self.idx = np.empty(self.size, dtype=np.int64)
        self.filled = 0
        self.random_state = random_state
        self.rng = None
        self.positions = np.empty(0, dtype=np.int64)  # rows of the pending replacements
        self.slots = np.empty(0, dtype=np.int64)

    def _draw(self):
        # Algorithm L: W shrinks as the stream grows (W ← W·u^(1/k)); the gap to the next
        # kept row is geometric with parameter W; the kept row replaces a random slot
        rng, k, B = self.rng, self.size, self._BATCH
        u1, u2 = 1.0 - rng.random(B), 1.0 - rng.random(B)
        slots = rng.integers(k, size=B)
        with np.errstate(divide="ignore", invalid="ignore"):
            W = self.W * np.exp(np.cumsum(np.log(u1)) / k)
            gaps = np.floor(np.log(u2) / np.log1p(-W))
        gaps = np.nan_to_num(gaps, nan=0.0, posinf=2.0**62)
        positions = self.last + np.cumsum(np.minimum(gaps, 2.0**62) + 1.0)
        self.W = float(W[-1])
        self.last = float(positions[-1])
        keep = positions < 2.0**62
        self.positions = np.concatenate([self.positions, positions[keep].astype(np.int64)])
        self.slots = np.concatenate([self.slots, slots[keep]])

    def add(self, X, w, offset):
        n = X.shape[0]
        if self.rng is None:
            take = min(n, self.size - self.filled)
            if take:
                sl = slice(self.filled, self.filled + take)
                self.X[sl] = X[:take]
                if self.w is not None:
                    self.w[sl] = w[:take]
                self.idx[sl] = np.arange(offset, offset + take)
                self.filled += take
            if take == n:
                return
            # an independent stream (the seed is mixed with a constant), drawn lazily
            seed = seed_from(self.random_state)
            self.rng = np.random.default_rng([seed, 0x726573657276])
            self.W = 1.0
            self.last = float(self.size - 1)
        end = offset + n
        while self.positions.size == 0 or self.positions[-1] < end:
            self._draw()
        m = int(np.searchsorted(self.positions, end))
        rows, slots = self.positions[:m], self.slots[:m]
        self.positions, self.slots = self.positions[m:], self.slots[m:]
        if m:
            # replacements in row order: a slot replaced twice keeps the later row
            last = m - 1 - np.unique(slots[::-1], return_index=True)[1]
            rows, slots = rows[last], slots[last]
            self.X[slots] = X[rows - offset]
            if self.w is not None:
                self.w[slots] = w[rows - offset]
            self.idx[slots] = rows

    def result(self):
        """(X, w, complete): the sample in row order; complete when it is the stream."""
        m = self.filled
        if self.rng is None:
            return self.X[:m], (None if self.w is None else self.w[:m]), True
        order = np.argsort(self.idx[:m], kind="stable")
        X = np.ascontiguousarray(self.X[:m][order])
        w = None if self.w is None else np.ascontiguousarray(self.w[:m][order])
        return X, w, False


class ChunkedSource(PartitionedData):
    """A stream of chunks: the first pass validates every chunk, counts rows and
    weights, and draws the reservoir sample (the pool); each later pass streams the
    chunks again, one in memory at a time."""

    def __init__(self, chunks: Chunks, n_components, init_size, random_state, n_threads, name="chunks", settings=None):
        """``settings`` (when given): the memory of the fit (but the initialisation's,
        which the driver checks) is checked as soon as the first chunk tells the dtype
        and the features, before the pass draws the pool."""
        self._chunks = chunks
        self.name = name
        self.n_threads = n_threads
        self.dtype = None
        self.n_features = None
        self.feature_names = None
        n = 0
        n_rows = 0
        weight_sum = 0.0
        col_sum = None
        reservoir = None
        weighted = None
        max_part = 1
        for i, item in enumerate(chunks):
            X, w = _split_item(item, i, name)
            if i == 0:
                self.feature_names = feature_names(X)
            X = as_2d_float(X, context=f" ({name}[{i}])")
            if self.dtype is None:
                self.dtype = X.dtype
                self.n_features = X.shape[1]
                weighted = w is not None
                size = (
                    default_init_size(n_components, self.n_features, X.dtype.itemsize)
                    if init_size is None
                    else int(init_size)
                )
                if size < n_components:
                    raise ValueError(f"init_size={size} must be at least n_components={n_components}")
                if settings is not None:
                    # the pool will hold at most `size` rows; the chunks seen so far are
                    # the first idea of the rows of a pass (the driver checks again)
                    self.check_memory(settings, initialise=False, shape=(size, max(1, X.shape[0])))
                reservoir = _Reservoir(size, self.n_features, self.dtype, weighted, random_state)
            self._check_chunk(X, i)
            if (w is not None) != weighted:
                raise ValueError(
                    f"{name}[{i}]: every chunk must come with sample weights, or none: the first "
                    f"chunk {'has' if weighted else 'has no'} weights"
                )
            w = _chunk_weights(w, X.shape[0], self.dtype, f"{name}[{i}]")
            if X.shape[0] == 0:
                continue
            col_sum = self._scan_chunk(X, i, n) + (0.0 if col_sum is None else col_sum)
            if w is None:
                n_rows += X.shape[0]
                weight_sum += X.shape[0]
            else:
                n_rows += int(np.count_nonzero(w))
                weight_sum += float(np.sum(w, dtype=np.float64))
            reservoir.add(X, w, n)
            max_part = max(max_part, X.shape[0])
            n += X.shape[0]
        if self.dtype is None or n == 0:
            raise ValueError(f"{name} gave no data (no chunk, or only empty chunks)")
        if weighted and not weight_sum > 0:
            raise ValueError("sample_weight must not sum to zero")
        if n < n_components:
            raise ValueError(
                f"Expected n_samples >= n_components but got n_components = {n_components}, n_samples = {n}"
            )
        self.n_samples = n
        self.n_rows = n_rows
        self.weight_sum = weight_sum
        self.weighted = weighted
        self.mean = self._column_means(col_sum, n)
        X_pool, w_pool, complete = reservoir.result()
        self.pool = (self._init_rows(X_pool), w_pool, w_pool, complete)
        self.max_part_rows = max_part

    def _scan_chunk(self, X, i, offset):
        """Checks the values of chunk i (rows from ``offset``); returns its float64
        column sums (a subclass may return other per-column totals)."""
        row = _core.first_nonfinite_row(X)
        if row >= 0:
            what = "NaN" if np.isnan(X[row]).any() else "infinity or a value too large for " + repr(X.dtype)
            raise ValueError(f"Input X contains {what} ({self.name}[{i}], row {row}; row {offset + row} of the data).")
        return np.sum(X, axis=0, dtype=np.float64)

    def _column_means(self, totals, n):
        """float64 column means from the summed ``_scan_chunk`` totals of n rows."""
        return totals / n

    def _init_rows(self, X):
        """The rows the initialisation sees for rows X of the data (the data itself)."""
        return X

    def _check_chunk(self, X, i):
        if X.shape[1] != self.n_features:
            raise ValueError(f"{self.name}[{i}] has {X.shape[1]} features, the first chunk has {self.n_features}")
        if X.dtype != self.dtype:
            raise ValueError(
                f"{self.name}[{i}] has dtype {X.dtype}, the first chunk {self.dtype}: pass chunks of "
                "one dtype (float32 data are fitted in float32)"
            )

    def chunks(self):
        """(X, w, row_offset) of every non-empty chunk of one more pass."""
        n = 0
        for i, item in enumerate(self._chunks):
            X, w = _split_item(item, i, self.name)
            X = as_2d_float(X, context=f" ({self.name}[{i}])")
            self._check_chunk(X, i)
            if X.shape[0] == 0:
                continue
            if self.weighted:
                w = _chunk_weights(w, X.shape[0], self.dtype, f"{self.name}[{i}]")
            else:
                w = None
            yield X, w, n
            n += X.shape[0]
        if n != self.n_samples:
            raise ValueError(
                f"{self.name} gave {n} rows in this pass but {self.n_samples} in the first: every "
                "pass must give the same rows (a function must return a new iterator over the "
                "same data each time)"
            )

    def _sum(self, fn) -> EMStats:
        total = None
        for X, w, offset in self.chunks():
            st = fn(X, w, offset)
            total = st if total is None else total + st
        return total

    def label_stats(self, centres, covariance_type, n_threads, labels=None):
        c = np.asarray(centres, dtype=self.dtype)
        return self._sum(
            lambda X, w, offset: label_stats_block(
                self._init_rows(X), w, c, covariance_type, n_threads, None if labels is None else labels[offset : offset + X.shape[0]]
            )
        )

    def random_resp_stats(self, seed, n_components, centres, covariance_type, n_threads):
        # one generator through the stream: the draws are those of one call in memory
        rng = np.random.default_rng(seed)
        K = n_components
        c = np.asarray(centres, dtype=self.dtype)
        D = self.n_features

        def block(X, w, _):
            resp = rng.uniform(size=(X.shape[0], K)).astype(X.dtype)
            resp /= resp.sum(axis=1, keepdims=True)
            return ops.em_stats(
                self._init_rows(X), centres=c, resp=resp, sample_weight=w, n_threads=n_threads, **shape_only(K, D, covariance_type)
            )

        return self._sum(block)

    def em_stats(self, params: MixtureParams, settings) -> EMStats:
        mixture = mixture_in_dtype(params, self.dtype)
        t, nt = settings.covariance_type, settings.n_threads
        return self._sum(lambda X, w, _: ops.em_stats(X, *mixture, t, sample_weight=w, n_threads=nt))


def minibatches(X, sample_weight, batch_size, default_size, shuffle, random_state, max_epochs):
    """The batches of mini-batch EM, as a function returning a new iterator of
    ``(X_batch, weights_batch)`` per epoch, and X's column names (or None).

    X is chunks (as for fit_chunks; chunks larger than ``batch_size`` are cut) or an
    array cut into blocks of ``batch_size`` (default ``default_size``) consecutive rows,
    visited in a new random order every epoch when ``shuffle``. A memory-mapped array
    is read batch by batch, never whole.
    """
    names = None
    if is_chunk_source(X):
        if sample_weight is not None:
            raise ValueError("sample_weight must be None when X is chunks: pass (X, weights) pairs")
        chunks = Chunks(X, "X")
        if max_epochs > 1 and not chunks.reiterable:
            raise TypeError(
                "X is a one-shot iterator (a generator object), which allows one epoch: "
                "pass max_epochs=1, or a function that returns a new iterator"
            )

        def batches():
            for item in chunks:
                Xc, wc = item if isinstance(item, tuple) else (item, None)
                n = len(Xc)
                step = n if batch_size is None else batch_size
                for start in range(0, n, max(step, 1)):
                    yield Xc[start : start + step], (None if wc is None else wc[start : start + step])

    else:
        if not isinstance(X, np.ndarray):
            names = feature_names(X)  # lists, data frames: converted once
            X = as_2d_float(X)
        elif X.ndim != 2:
            as_2d_float(X)  # scikit-learn's error for the wrong number of dimensions
        sw_all = None
        if sample_weight is not None:
            sw_all = np.asarray(sample_weight)
            if sw_all.shape != (X.shape[0],):
                raise ValueError(f"sample_weight.shape == {sw_all.shape}, expected {(X.shape[0],)}!")
        size = batch_size or default_size
        starts = np.arange(0, X.shape[0], size)

        def batches():
            order = random_state.permutation(starts.size) if shuffle else np.arange(starts.size)
            for j in order:
                a = starts[j]
                yield X[a : a + size], (None if sw_all is None else sw_all[a : a + size])

    return batches, names
