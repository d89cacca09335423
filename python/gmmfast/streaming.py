"""Data that do not fit in one array: EM over chunks, online EM, and the pieces shared
with the Dask and torch.distributed paths.

Everything here rests on one fact (ARCHITECTURE.md): the EM statistics of
:func:`gmmfast.ops.em_stats` are sums over rows, so the statistics of the pieces of a
data set add up to those of the whole. Exact EM over data that never sit in memory at
once is therefore one pass per iteration that sums the statistics of each chunk, then
one :func:`gmmfast.ops.finalize` (:meth:`GaussianMixture.fit_chunks`); the Dask and
torch.distributed fits sum the statistics of blocks and ranks the same way.

Online (stepwise) EM (:meth:`GaussianMixture.partial_fit`, Cappé & Moulines 2009;
Liang & Klein 2009) keeps *running* statistics instead: per-sample averages
s ← (1 − η_t) s + η_t ŝ(chunk), with η_t = (learning_offset + t)^(−learning_decay).
The statistics are centred at the current means, so when the M-step moves the means,
the running statistics are shifted exactly to the new centres (:func:`recentre_stats`).

Public helpers
--------------
- :func:`row_chunks` — a re-iterable over row blocks of an array (a memory-mapped
  .npy file, say), for :meth:`GaussianMixture.fit_chunks`;
- :func:`recentre_stats`, :func:`scale_stats`, :func:`blend_stats`,
  :func:`implied_stats` — exact arithmetic on :class:`gmmfast.EMStats`.
"""

from __future__ import annotations

import collections.abc
import math

import numpy as np

from . import _core, ops
from ._types import EMStats, MixtureParams, param_shape
from ._validation import seed_from

__all__ = [
    "row_chunks",
    "recentre_stats",
    "scale_stats",
    "blend_stats",
    "implied_stats",
    "learning_rate",
    "default_init_size",
]


# ------------------------------------------------------------------ statistics arithmetic


def recentre_stats(stats: EMStats, centres) -> EMStats:
    """The same statistics, centred at new ``centres`` (exactly, in float64).

    With d_k = c_k − c'_k (old minus new centre) and n_k, s1_k, S2_k the statistics:

    - s1'_k = s1_k + n_k d_k
    - S2'_k = S2_k + s1_k d_kᵀ + d_k s1_kᵀ + n_k d_k d_kᵀ   (full)
      and its forms for the other covariance types: summed over k (tied), the diagonal
      S2_k + 2 s1_k∘d_k + n_k d_k² (diag), the trace S2_k + 2 s1_k·d_k + n_k‖d_k‖²
      (spherical).

    The log-likelihood, weight sum and n_k do not depend on the centres. Centring near
    the data keeps the statistics accurate, so move the centres by small steps (the
    EM updates of the means) rather than far from the data.
    """
    new = np.asarray(centres, dtype=np.float64)
    if new.shape != stats.centres.shape:
        raise ValueError(f"centres must have shape {stats.centres.shape}, got {new.shape}")
    d = stats.centres - new
    nk, s1, s2 = stats.nk, stats.s1, stats.s2
    s1_new = s1 + nk[:, None] * d
    t = stats.covariance_type
    if t == "full":
        outer = s1[:, :, None] * d[:, None, :]
        s2_new = s2 + outer + np.swapaxes(outer, 1, 2) + nk[:, None, None] * d[:, :, None] * d[:, None, :]
    elif t == "tied":
        outer = s1.T @ d
        s2_new = s2 + outer + outer.T + (nk[:, None] * d).T @ d
    elif t == "diag":
        s2_new = s2 + 2.0 * s1 * d + nk[:, None] * d * d
    else:
        s2_new = s2 + 2.0 * np.sum(s1 * d, axis=1) + nk * np.sum(d * d, axis=1)
    return EMStats(t, new.copy(), stats.log_likelihood, stats.weight_sum, nk.copy(), s1_new, s2_new, stats.dtype)


def scale_stats(stats: EMStats, factor: float) -> EMStats:
    """Every sum (log-likelihood, weight sum, n_k, s1, S2) multiplied by ``factor``.

    finalize gives the same mixture for scaled statistics (up to its 10·eps guard on
    n_k), so ``scale_stats(s, 1 / s.weight_sum)`` are per-sample averages.
    """
    f = float(factor)
    return EMStats(
        stats.covariance_type,
        stats.centres,
        stats.log_likelihood * f,
        stats.weight_sum * f,
        stats.nk * f,
        stats.s1 * f,
        stats.s2 * f,
        stats.dtype,
    )


def blend_stats(old: EMStats, new: EMStats, eta: float) -> EMStats:
    """(1 − eta) · old + eta · new, for statistics with the same centres."""
    if old.centres.shape != new.centres.shape or not np.array_equal(old.centres, new.centres):
        raise ValueError("blend_stats needs statistics with the same centres (recentre_stats first)")
    a, b = 1.0 - float(eta), float(eta)
    return EMStats(
        old.covariance_type,
        old.centres,
        a * old.log_likelihood + b * new.log_likelihood,
        a * old.weight_sum + b * new.weight_sum,
        a * old.nk + b * new.nk,
        a * old.s1 + b * new.s1,
        a * old.s2 + b * new.s2,
        old.dtype,
    )


def implied_stats(params: MixtureParams, reg_covar: float, dtype="float64", weight_sum: float = 1.0) -> EMStats:
    """Statistics (centred at the means) whose finalize is ``params``: n_k = π_k W,
    s1_k = 0 and S2_k = n_k (Σ_k − reg_covar·I) in the covariance type's form.

    Online EM starts its running statistics here, from the initial mixture or from a
    fitted model, and restarts them here after recovery reseeded components.
    """
    t = params.covariance_type
    w = np.asarray(params.weights, dtype=np.float64)
    w = w / w.sum()
    nk = w * float(weight_sum)
    means = np.asarray(params.means, dtype=np.float64)
    K, D = means.shape
    cov = np.asarray(params.covariances, dtype=np.float64)
    reg = float(reg_covar)
    if t == "full":
        s2 = nk[:, None, None] * (cov - reg * np.eye(D))
    elif t == "tied":
        s2 = nk.sum() * (cov - reg * np.eye(D))
    elif t == "diag":
        s2 = nk[:, None] * (cov - reg)
    else:
        s2 = nk * D * (cov - reg)
    return EMStats(t, means.copy(), 0.0, float(weight_sum), nk, np.zeros((K, D)), s2, str(np.dtype(dtype)))


def learning_rate(t: int, learning_decay: float, learning_offset: float) -> float:
    """Step size of online EM for the t-th chunk (t = 1, 2, ...):
    η_t = (learning_offset + t)^(−learning_decay)."""
    return float((learning_offset + t) ** (-learning_decay))


def default_init_size(n_components: int, n_features: int, itemsize: int) -> int:
    """Rows of the initialisation sample of streamed data: 100 000, at most 64 MiB of
    rows, and at least 50 per component."""
    return int(max(50 * n_components, min(100_000, (64 << 20) // max(1, n_features * itemsize))))


# --------------------------------------------------------------------------- chunk sources


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


class ChunkSource:
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


# ------------------------------------------------------------------- data as a sum of parts


class PartitionedData:
    """What the initialisation and the EM loop need from data held in parts (chunks of a
    stream, Dask blocks, torch.distributed ranks); subclasses provide the parts.

    Attributes: n_samples, n_features, dtype, weighted, weight_sum, n_rows (rows of
    non-zero weight), mean (float64 column means), and ``pool``: rows for k-means, as
    ``(X, select_weight, own_weight, complete)`` — a uniform sample (or weighted
    candidates) of the data, which is all of the data, in order, when ``complete``.
    """

    def root(self, fn):
        """fn() computed once and shared by every part (the root rank computes it)."""
        return fn()

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


def _shape_only(K, D, covariance_type):
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
        X, centres=c, labels=labels, sample_weight=w, n_threads=n_threads, **_shape_only(K, D, covariance_type)
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
        X, centres=centres, resp=resp, sample_weight=w, n_threads=n_threads, **_shape_only(K, D, covariance_type)
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
        **_shape_only(K, D, covariance_type),
    )
    st.weight_sum = float(weight_sum)
    return st


def initial_stats(est, data: PartitionedData, random_state) -> EMStats:
    """Statistics of the initial responsibilities of ``est.init_params`` over data in parts.

    - 'kmeans': k-means (gmmfast's k-means++ and Lloyd) on ``data.pool``, then one pass
      over all the data with every row labelled by its nearest centre;
    - 'k-means++': k-means++ seeds drawn from the pool (responsibility one at each seed,
      as scikit-learn does);
    - 'random_from_data': rows drawn uniformly (one per component);
    - 'random': scikit-learn's random responsibilities, the same numbers as in memory.

    When the pool is complete (all the data) the result is that of the in-memory fit
    with the same random_state, up to the order of floating-point sums.
    """
    from .mixture import _weights_and_means

    K, t, nt = est.n_components, est.covariance_type, est.n_threads
    X_pool, w_select, w_own, _ = data.pool
    init = est.init_params
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
        _, means = _weights_and_means(first, data.dtype)
        return one_hot_stats(rows, w, means, data.weight_sum, t, nt)
    seed = data.root(lambda: seed_from(random_state))
    first = data.random_resp_stats(seed, K, np.tile(data.mean, (K, 1)), t, nt)
    _, means = _weights_and_means(first, data.dtype)
    return data.random_resp_stats(seed, K, means, t, nt)


class ChunkData(PartitionedData):
    """A stream of chunks: the first pass validates every chunk, counts rows and
    weights, and draws the reservoir sample (the pool); each later pass streams the
    chunks again, one in memory at a time."""

    def __init__(self, source: ChunkSource, n_components, init_size, random_state, n_threads, name="chunks"):
        from .mixture import _as_2d_float, _feature_names

        self.source = source
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
        for i, item in enumerate(source):
            X, w = _split_item(item, i, name)
            if i == 0:
                self.feature_names = _feature_names(X)
            X = _as_2d_float(X, context=f" ({name}[{i}])")
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
            row = _core.first_nonfinite_row(X)
            if row >= 0:
                what = "NaN" if np.isnan(X[row]).any() else "infinity or a value too large for " + repr(X.dtype)
                raise ValueError(f"Input X contains {what} ({name}[{i}], row {row}; row {n + row} of the data).")
            col_sum = np.sum(X, axis=0, dtype=np.float64) + (0.0 if col_sum is None else col_sum)
            if w is None:
                n_rows += X.shape[0]
                weight_sum += X.shape[0]
            else:
                n_rows += int(np.count_nonzero(w))
                weight_sum += float(np.sum(w, dtype=np.float64))
            reservoir.add(X, w, n)
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
        self.mean = col_sum / n
        X_pool, w_pool, complete = reservoir.result()
        self.pool = (X_pool, w_pool, w_pool, complete)

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
        from .mixture import _as_2d_float

        n = 0
        for i, item in enumerate(self.source):
            X, w = _split_item(item, i, self.name)
            X = _as_2d_float(X, context=f" ({self.name}[{i}])")
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
                X, w, c, covariance_type, n_threads, None if labels is None else labels[offset : offset + X.shape[0]]
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
                X, centres=c, resp=resp, sample_weight=w, n_threads=n_threads, **_shape_only(K, D, covariance_type)
            )

        return self._sum(block)

    def em_stats(self, params: MixtureParams, covariance_type, n_threads) -> EMStats:
        dt = self.dtype
        lw = _log_weights(params.weights).astype(dt)
        means = params.means.astype(dt)
        U = params.precisions_cholesky.astype(dt)
        return self._sum(
            lambda X, w, _: ops.em_stats(X, lw, means, U, covariance_type, sample_weight=w, n_threads=n_threads)
        )


def _log_weights(weights):
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(weights, dtype=np.float64))


class StatsEngine:
    """GaussianMixture's EM engine for data in parts (see _engines.py for the protocol):
    each step sums the parts' statistics (``data.em_stats``) and runs the estimator's
    M-step with its recovery policy. Recovery that restarts a component picks the
    worst-explained row of the pool (the initialisation sample), as no single pass can
    look at every row cheaply."""

    def __init__(self, estimator, data):
        self.est = estimator
        self.data = data
        self.n_features = data.n_features
        self.n_rows = data.n_rows
        X_pool, _, w_own, _ = data.pool
        self.X_pool = X_pool
        self.w_pool = w_own

    def initial_params(self, random_state, inits, state):
        return self.est._initial_params(
            self.X_pool,
            self.w_pool,
            random_state,
            inits,
            state,
            initial_stats=lambda: initial_stats(self.est, self.data, random_state),
        )

    def to_device(self, params):
        return params

    def to_host(self, params):
        return params

    def step(self, params, state):
        est = self.est
        stats = self.data.em_stats(params, est.covariance_type, est.n_threads)
        params, restarted = est._m_step(stats, self.X_pool, self.w_pool, params, state)
        return stats.mean_log_likelihood, params, restarted

    def attributes(self, params):
        dt = self.data.dtype
        return {
            "weights_": params.weights.astype(dt),
            "means_": params.means.astype(dt),
            "covariances_": params.covariances.astype(dt),
            "precisions_cholesky_": params.precisions_cholesky.astype(dt),
        }


# -------------------------------------------------------------------------------- online EM


class OnlineState:
    """The running state of online EM (GaussianMixture.partial_fit / fit_minibatch):
    the current mixture (float64), the running per-sample statistics centred at its
    means, the number of chunks seen and the recovery bookkeeping."""

    def __init__(self, params: MixtureParams, stats: EMStats, dtype, run_state, t: int = 0):
        self.params = params
        self.stats = stats
        self.dtype = np.dtype(dtype)
        self.run_state = run_state
        self.t = t


def online_update(est, online: OnlineState, X, w) -> tuple:
    """One step of stepwise EM on the chunk (X, w); returns (Σ w log p, Σ w) of the chunk
    under the mixture before the step."""
    p = online.params
    dt = online.dtype
    t_cov = est.covariance_type
    chunk = ops.em_stats(
        X,
        _log_weights(p.weights).astype(dt),
        p.means.astype(dt),
        p.precisions_cholesky.astype(dt),
        t_cov,
        sample_weight=w,
        n_threads=est.n_threads,
    )
    W = chunk.weight_sum
    if not W > 0:
        raise ValueError("sample_weight must not sum to zero")
    if not math.isfinite(chunk.log_likelihood):
        raise ValueError(
            "The log-likelihood of the chunk is not finite under the current mixture "
            f"({dt} arithmetic overflowed): scale the data, or pass float64 data."
        )
    online.t += 1
    eta = learning_rate(online.t, est.learning_decay, est.learning_offset)
    # the chunk's statistics are centred at the means rounded to the data's dtype
    running = recentre_stats(online.stats, chunk.centres)
    running = blend_stats(running, scale_stats(chunk, 1.0 / W), eta)
    # the M-step sees the running statistics in units of this chunk's weight, so that
    # scikit-learn's 10·eps guard and the collapse rule mean what they do in fit
    m_stats = scale_stats(running, W)
    m_stats.log_likelihood = chunk.log_likelihood
    state = online.run_state
    state.n_rows = X.shape[0] if w is None else int(np.count_nonzero(w))
    new, restarted = est._m_step(m_stats, X, w, p, state)
    if restarted:
        running = implied_stats(new, state.reg_covar, dt)
    else:
        running = recentre_stats(running, new.means)
    online.params = new
    online.stats = running
    return chunk.log_likelihood, W
