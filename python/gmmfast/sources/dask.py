"""A Dask array as an EM data source: a task per row block computes the block's
statistics where the block lives, summed in a fixed tree (see :mod:`gmmfast.dask` for
the method, the initialisation and how to use it)."""

from __future__ import annotations

import functools
import math
import operator
import time
import warnings
from concurrent.futures import CancelledError  # what distributed raises for cancelled futures

import numpy as np

from .. import _core, ops
from .._types import EMStats
from .._validation import seed_from
from .base import PartitionedData, label_stats_block, mixture_in_dtype, nearest_centre, random_resp_block


def _dask():
    try:
        import dask
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            'gmmfast.dask needs Dask: pip install "dask[array,distributed]"'
        ) from exc
    return dask, da


def register_sizeof():
    """Tell Dask the size of EMStats (its generic estimate says 56 bytes), so that its
    scheduling and transfer accounting see what the statistics weigh."""
    try:
        from dask.sizeof import sizeof
    except ImportError:  # pragma: no cover
        return

    @sizeof.register(EMStats)
    def _sizeof_stats(st):
        return int(st.centres.nbytes + st.nk.nbytes + st.s1.nbytes + np.asarray(st.s2).nbytes + 64)



register_sizeof()


def candidates_per_block(n_components: int) -> int:
    """Rows summarising a block for the initialisation: max(2K, ⌈3 K ln(K + 1)⌉)."""
    K = int(n_components)
    return max(2 * K, int(math.ceil(3 * K * math.log(K + 1))))


def stats_nbytes(n_components: int, n_features: int, covariance_type: str) -> int:
    """Bytes of the numbers in one block's statistics, centres included (float64)."""
    from .._types import param_shape

    K, D = n_components, n_features
    return 8 * (2 + K + K * D + int(np.prod(param_shape(covariance_type, K, D))) + K * D)


# ----------------------------------------------------------------------------- block tasks


def _block_summary(X, w, m, seed, n_threads, summarise=True):
    """Checks, counts and the candidate summary of one block (see the module docstring).
    Without ``summarise`` (no initialisation needed) the candidates are m evenly spaced
    rows, which only serve recovery='reseed'."""
    X = np.asarray(X)
    out = {"n": X.shape[0], "bad_row": -1, "weight_error": None}
    if X.shape[0]:
        out["bad_row"] = int(_core.first_nonfinite_row(np.ascontiguousarray(X)))
    if out["bad_row"] >= 0:
        out["bad_is_nan"] = bool(np.isnan(X[out["bad_row"]]).any())
        return out
    if w is not None:
        w = np.asarray(w, dtype=X.dtype)
        if not np.all(np.isfinite(w)):
            out["weight_error"] = "sample_weight must be finite"
        elif np.any(w < 0):
            out["weight_error"] = "Negative values in data passed to `sample_weight`"
        if out["weight_error"]:
            return out
    out["n_rows"] = X.shape[0] if w is None else int(np.count_nonzero(w))
    out["weight_sum"] = float(X.shape[0]) if w is None else float(np.sum(w, dtype=np.float64))
    out["col_sum"] = np.sum(X, axis=0, dtype=np.float64)
    if X.shape[0] <= m:
        # the block is its own summary
        out["complete"] = True
        out["X"] = np.ascontiguousarray(X)
        out["w_select"] = np.ones(X.shape[0]) if w is None else w.astype(np.float64)
        out["w_own"] = None if w is None else w
        return out
    out["complete"] = False
    Xc = np.ascontiguousarray(X)
    positive = X.shape[0] if w is None else int(np.count_nonzero(w))
    if not summarise:
        idx = np.linspace(0, X.shape[0] - 1, m).astype(np.int64)
        mass = np.ones(m) if w is None else w[idx].astype(np.float64)
    elif positive <= m:
        idx = np.arange(X.shape[0]) if w is None else np.flatnonzero(w)
        mass = np.ones(idx.size) if w is None else w[idx].astype(np.float64)
    else:
        _, idx = ops.kmeans_plusplus(Xc, m, random_state=seed, sample_weight=w, n_local_trials=1, n_threads=n_threads)
        cand = np.ascontiguousarray(Xc[idx])
        labels = nearest_centre(Xc, cand, n_threads)
        mass = np.bincount(labels, weights=None if w is None else w.astype(np.float64), minlength=m)
        mass = mass.astype(np.float64)
    out["X"] = np.ascontiguousarray(Xc[idx])
    out["w_select"] = mass
    out["w_own"] = None if w is None else w[idx]
    return out


def _block_em_stats(X, w, params, covariance_type, n_threads):
    lw, means, U = params
    return ops.em_stats(np.asarray(X), lw, means, U, covariance_type, sample_weight=w, n_threads=n_threads)


def _identity(x):
    return x


def _placement(holders, strict=True) -> dict:
    """submit/compute arguments that keep a task on the workers holding its block
    (``strict=False``: prefer them, run elsewhere when none of them is alive)."""
    holders = list(holders or ())
    return dict(workers=holders, allow_other_workers=not strict) if holders else {}


class _WorkersLost(Exception):
    """Raised inside a pass: the only workers holding some blocks left the cluster."""

    def __init__(self, workers):
        super().__init__(workers)
        self.workers = set(workers)


_POLL_S = 1.0  # how often a waiting pass checks that the blocks' workers are alive


def _sum_stats(*parts) -> EMStats:
    return functools.reduce(operator.add, parts)


def _tree_sum(parts, split_every=8):
    dask, _ = _dask()
    while len(parts) > 1:
        parts = [
            dask.delayed(_sum_stats)(*parts[i : i + split_every]) for i in range(0, len(parts), split_every)
        ]
    return parts[0]


# ------------------------------------------------------------------------------ the data


class DaskSource(PartitionedData):
    """A Dask array (and its weights) as blocks of rows; see the module docstring."""

    def __init__(self, X, sample_weight, settings, random_state, initialise=True, n_candidates=None,
                 max_block_retries=3, recompute_timeout=600.0):
        """``initialise``: the initialisation needs the candidate summaries (False for a
        warm start or when every *_init is given: the first pass only checks).
        ``max_block_retries``, ``recompute_timeout``: see :mod:`gmmfast.dask` (worker loss)."""
        dask, da = _dask()
        self.max_block_retries = int(max_block_retries)
        self.recompute_timeout = None if recompute_timeout is None else float(recompute_timeout)
        if X.ndim != 2:
            raise ValueError(
                f"Expected 2D array, got {X.ndim}D dask array instead. Reshape your data to "
                "(n_samples, n_features)."
            )
        if X.dtype.kind == "c":
            raise ValueError("Complex data not supported")
        if not (X.dtype == np.float32 or X.dtype == np.float64):
            # another dtype or byte order: converted block by block on the workers
            X = X.astype(np.float32 if X.dtype.kind == "f" and X.dtype.itemsize == 4 else np.float64)
        if any(math.isnan(c) for c in X.chunks[0]):
            X = X.compute_chunk_sizes()
        if X.numblocks[1] > 1:
            X = X.rechunk({1: -1})  # a block holds whole rows
        N, D = X.shape
        if N < 1 or D < 1:
            raise ValueError(f"Found array with shape {X.shape}: at least one sample and one feature are required")
        sw = None
        if sample_weight is not None:
            sw = sample_weight if hasattr(sample_weight, "dask") else da.from_array(np.asarray(sample_weight))
            if sw.dtype.kind not in "fiub":
                raise ValueError(f"sample_weight must be numeric, got dtype {sw.dtype}")
            if sw.ndim != 1:
                raise ValueError("Sample weights must be 1D array or scalar")
            if sw.shape != (N,):
                raise ValueError(f"sample_weight.shape == {sw.shape}, expected {(N,)}!")
            sw = sw.astype(X.dtype).rechunk((X.chunks[0],))
        self.X = X
        self.sw = sw
        self.dtype = np.dtype(X.dtype)
        self.n_features = D
        self.n_samples = N
        self.weighted = sw is not None
        self.blocks = list(X.to_delayed().ravel())
        self.wblocks = list(sw.to_delayed().ravel()) if sw is not None else [None] * len(self.blocks)
        self._pin_to_workers(X, sw)
        sizes = X.chunks[0]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        K = settings.n_components
        if N < K:
            raise ValueError(f"Expected n_samples >= n_components but got n_components = {K}, n_samples = {N}")
        m = candidates_per_block(K) if n_candidates is None else int(n_candidates)
        self.max_part_rows = int(max(sizes))
        # before the pass that draws the pool (every block's candidates, gathered here)
        self.check_memory(settings, initialise, shape=(int(sum(min(int(s), m) for s in sizes)), self.max_part_rows))
        summarise = initialise
        seed = None
        if summarise and any(s > m for s in sizes):
            seed = seed_from(random_state)
        summaries = self._map(
            _block_summary,
            lambda i: (m, None if seed is None else int(np.random.SeedSequence([seed, i]).generate_state(1)[0]),
                       settings.n_threads, summarise),
        )
        for i, s in enumerate(summaries):
            if s["bad_row"] >= 0:
                what = "NaN" if s["bad_is_nan"] else f"infinity or a value too large for {self.dtype!r}"
                raise ValueError(f"Input X contains {what} (first at row {int(self.offsets[i]) + s['bad_row']}).")
            if s["weight_error"]:
                raise ValueError(s["weight_error"])
        self.n_rows = int(sum(s["n_rows"] for s in summaries))
        self.weight_sum = float(sum(s["weight_sum"] for s in summaries))
        if self.weighted and not self.weight_sum > 0:
            raise ValueError("sample_weight must not sum to zero")
        self.mean = sum(s["col_sum"] for s in summaries) / N
        complete = all(s["complete"] for s in summaries)
        Xp = np.ascontiguousarray(np.concatenate([s["X"] for s in summaries]))
        if complete and not self.weighted:
            w_select = None
        else:
            w_select = np.concatenate([s["w_select"] for s in summaries]).astype(self.dtype)
        w_own = np.concatenate([s["w_own"] for s in summaries]) if self.weighted else None
        self.pool = (Xp, w_select, w_own, complete)

    # --------------------------------------------------------------------- passes

    # Where the block tasks run. With a dask.distributed client and X persisted on the
    # workers, every block task is pinned to a worker that holds the block (Dask's work
    # stealing would otherwise move a block to an idle worker now and then), and the
    # weights are placed next to their blocks once: during the fit only the mixture and
    # the statistics travel. Otherwise the blocks are computed by the graph where the
    # scheduler puts them (still never sent to the client).
    #
    # Worker loss. A task pinned to a worker that left the cluster would wait for ever,
    # so a pass waiting for its results checks every _POLL_S seconds that each block
    # still has a live holder. When the only holders of some blocks are gone, the pass
    # is cancelled, Dask recomputes the lost blocks from X's graph (the scheduler keeps
    # the task of every persisted key a client holds, and recomputes it when its data is
    # lost), the placement is read again, the weights of moved blocks are placed anew,
    # and the pass is redone from the start: the same sums in the same tree, so the
    # same statistics. At most max_block_retries recoveries per pass.

    def _pin_to_workers(self, X, sw):
        self.client = None
        try:
            from distributed import futures_of, get_client, wait
        except ImportError:
            return
        try:
            client = get_client()
        except ValueError:  # no client: the local scheduler
            return
        futures = {f.key: f for f in futures_of(X)}
        keys = list(X.__dask_keys__())
        flat = [k for row in keys for k in (row if isinstance(row, list) else [row])]
        if not flat or any(k not in futures for k in flat):
            return  # X is not persisted as these blocks
        self.client = client
        self.block_futures = [futures[k] for k in flat]
        self._inflight = []
        # the blocks stay where they are (no task of this fit moves them), so this is
        # asked once (when X is in memory), and again only after a worker holding blocks
        # is lost
        wait(self.block_futures)
        who = client.who_has(self.block_futures)
        self.holders = [list(who.get(f.key, ())) for f in self.block_futures]
        self.weight_futures = [None] * len(flat)
        if sw is not None:
            self._place_weights(range(len(flat)))

    def _place_weights(self, blocks):
        """Weights of these blocks on their blocks' workers: computed there if they can
        be (elsewhere if those are gone), then copied by a task pinned there. Only that
        copy is pinned (a key of its own), so that no task of the weights' graph is tied
        to a worker that may leave."""
        client = self.client
        for i in blocks:
            raw = client.compute(self.wblocks[i], **_placement(self.holders[i], strict=False))
            self.weight_futures[i] = client.submit(_identity, raw, pure=False, **_placement(self.holders[i]))

    def _submit(self, task, args) -> list:
        """One task per block, each on a worker holding its block."""
        client = self.client
        # an argument shared by several blocks (the mixture) travels once to each worker
        all_args = [args(i) for i in range(len(self.block_futures))]  # alive: ids stay unique
        uses = {}
        for a in (a for block_args in all_args for a in block_args):
            uses[id(a)] = uses.get(id(a), 0) + 1
        shared = {}
        futures = []
        for i, (bf, wf) in enumerate(zip(self.block_futures, self.weight_futures)):
            extra = []
            for a in all_args[i]:
                if isinstance(a, (np.ndarray, tuple)) and uses[id(a)] > 1:
                    if id(a) not in shared:
                        # a task holding it (no blocking round trip, as scatter has)
                        shared[id(a)] = client.submit(_identity, a, pure=False)
                        self._inflight.append(shared[id(a)])
                    a = shared[id(a)]
                extra.append(a)
            futures.append(client.submit(task, bf, wf, *extra, pure=False, **_placement(self.holders[i])))
        self._inflight.extend(futures)
        return futures

    def _lost_workers(self) -> set:
        """The workers that were the only holders of some block and are gone."""
        alive = set(self.client.nthreads())
        return {w for h in self.holders if h and not alive.intersection(h) for w in h}

    def _wait(self, future):
        """future.result(), or _WorkersLost if the only workers holding some blocks
        leave meanwhile (a task pinned to them would otherwise wait for ever)."""
        while True:
            try:
                return future.result(timeout=_POLL_S)
            except TimeoutError:
                lost = self._lost_workers()
                if lost:
                    raise _WorkersLost(lost) from None
            except Exception:
                # a task of the pass lost with its worker (cancelled, KilledWorker):
                # recovered as a loss; any other error is the task's own
                lost = self._lost_workers()
                if lost:
                    raise _WorkersLost(lost) from None
                raise

    def _on_cluster(self, run):
        """run() (one pass on the cluster), redone after each recovery from lost
        workers, at most max_block_retries times."""
        recoveries = 0
        while True:
            self._inflight = []
            try:
                return run()
            except _WorkersLost as exc:
                self.client.cancel(self._inflight)
                if recoveries >= self.max_block_retries:
                    raise RuntimeError(
                        f"worker(s) {sorted(exc.workers)} holding blocks of X left the cluster during "
                        f"the fit, loss {recoveries + 1} in one pass (gmmfast.dask.max_block_retries "
                        f"= {self.max_block_retries}): persist X again and refit"
                    ) from None
                recoveries += 1
                self._recover(exc.workers, recoveries)
            finally:
                self._inflight = []

    def _recover(self, lost, attempt):
        """Wait until Dask has recomputed the blocks lost with ``lost``, read the
        placement again and place anew the weights that are not with their blocks."""
        _, holders = self._await_holders(self.block_futures, lost, "blocks of X")
        moved = [i for i, (old, new) in enumerate(zip(self.holders, holders)) if not set(old) & set(new)]
        self.holders = holders
        if self.weighted:
            stale = self._stale_weights()
            old = [self.weight_futures[i] for i in stale]
            try:
                self._place_weights(stale)
            except CancelledError:  # their graph holds data that is gone
                raise RuntimeError(
                    f"blocks of sample_weight {stale} were lost with worker(s) {sorted(lost)} and "
                    "cannot be recomputed: Dask has no graph to recompute them from. Persist X and "
                    "sample_weight from their source again and refit"
                ) from None
            self.client.cancel(old)
            self._await_holders(self.weight_futures, lost, "blocks of sample_weight")
        now = sorted({w for i in moved for w in holders[i]})
        warnings.warn(
            f"gmmfast.dask: worker(s) {sorted(lost)} holding blocks of X left the cluster during the "
            f"fit; blocks {moved} of X, held only there, were recomputed by Dask from X's graph "
            f"(now on {now}) and the interrupted pass is redone (recovery {attempt} of at most "
            f"{self.max_block_retries} in this pass: gmmfast.dask.max_block_retries)",
            RuntimeWarning,
        )

    def _stale_weights(self) -> list:
        """The blocks whose weights are not (or no longer) on a live worker holding the
        block."""
        while True:
            alive = set(self.client.nthreads())
            live = [f for f in self.weight_futures if f.status not in ("cancelled", "error")]
            try:
                who = self.client.who_has(live)
            except CancelledError:
                continue  # one was just cancelled
            return [
                i for i, f in enumerate(self.weight_futures)
                if not alive.intersection(self.holders[i]).intersection(who.get(f.key, ()))
            ]

    def _await_holders(self, futures, lost, what):
        """Wait (recompute_timeout at most) until each future's data is on a live
        worker; (live workers, holders per future). A clear error for data that Dask
        cannot recompute."""
        client = self.client
        timeout = self.recompute_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.02
        while True:
            gone = [i for i, f in enumerate(futures) if f.status in ("cancelled", "error")]
            if gone:
                raise RuntimeError(self._unrecoverable(futures, gone, lost, what)) from None
            alive = set(client.nthreads())
            try:
                who = client.who_has(futures)
            except CancelledError:
                continue  # a future was just cancelled: say which above
            holders = [[w for w in who.get(f.key, ()) if w in alive] for f in futures]
            missing = [i for i, h in enumerate(holders) if not h]
            if not missing:
                return alive, holders
            if deadline is not None and time.monotonic() > deadline:
                raise RuntimeError(
                    f"{what} {missing}, lost with worker(s) {sorted(lost)}, were not recomputed "
                    f"within gmmfast.dask.recompute_timeout = {self.recompute_timeout} s "
                    f"({len(alive)} worker(s) alive): persist X again and refit"
                )
            time.sleep(pause)
            pause = min(2 * pause, 0.5)

    @staticmethod
    def _unrecoverable(futures, gone, lost, what) -> str:
        why = []
        cancelled = [i for i in gone if futures[i].status == "cancelled"]
        if cancelled:
            which = "them" if cancelled == gone else f"{cancelled}"
            why.append(
                f"Dask has no graph to recompute {which} from (X was built from data that "
                "existed only on the lost worker(s), e.g. arrays sent with client.scatter)"
            )
        for i in (i for i in gone if futures[i].status == "error"):
            why.append(f"recomputing [{i}] failed: {futures[i].exception()!r}")
        return (
            f"{what} {gone} were lost with worker(s) {sorted(lost)} and cannot be recomputed: "
            + "; ".join(why) + ". Persist X from its source again and refit"
        )

    def _map(self, task, args) -> list:
        """task(block, weights, *args(i)) for every block, gathered in block order."""
        if self.client is not None:
            return self._on_cluster(lambda: [self._wait(f) for f in self._submit(task, args)])
        dask, _ = _dask()
        tasks = [dask.delayed(task)(b, w, *args(i)) for i, (b, w) in enumerate(zip(self.blocks, self.wblocks))]
        return list(dask.compute(*tasks))

    def _reduce(self, task, args) -> EMStats:
        """The sum of task(block, weights, *args(i)) over the blocks, in a fixed tree."""
        if self.client is not None:

            def run():
                parts = self._submit(task, args)
                while len(parts) > 1:
                    parts = [
                        self.client.submit(_sum_stats, *parts[i : i + 8], pure=False)
                        for i in range(0, len(parts), 8)
                    ]
                    self._inflight.extend(parts)
                return self._wait(parts[0])

            return self._on_cluster(run)
        dask, _ = _dask()
        parts = [dask.delayed(task)(b, w, *args(i)) for i, (b, w) in enumerate(zip(self.blocks, self.wblocks))]
        (total,) = dask.compute(_tree_sum(parts))
        return total

    def label_stats(self, centres, covariance_type, n_threads, labels=None):
        c = np.asarray(centres, dtype=self.dtype)
        sizes = self.X.chunks[0]

        def args(i):
            lab = None if labels is None else labels[self.offsets[i] : self.offsets[i] + sizes[i]]
            return (c, covariance_type, n_threads, lab)

        return self._reduce(label_stats_block, args)

    def random_resp_stats(self, seed, n_components, centres, covariance_type, n_threads):
        c = np.asarray(centres, dtype=np.float64)
        return self._reduce(
            random_resp_block,
            lambda i: (seed, int(self.offsets[i]), n_components, c, covariance_type, n_threads),
        )

    def random_rows(self, random_state, n_components):
        rs = np.random.default_rng(seed_from(random_state))
        idx = rs.choice(self.n_samples, size=n_components, replace=False)
        rows = np.ascontiguousarray(np.asarray(self.X[idx].compute()))
        w = None if self.sw is None else np.asarray(self.sw[idx].compute())
        return rows, w

    def em_stats(self, params, settings) -> EMStats:
        # one object holds the mixture: it travels once to each worker, not once per block
        packed = mixture_in_dtype(params, self.dtype)
        if self.client is None:
            dask, _ = _dask()
            packed = dask.delayed(packed, pure=True, traverse=False)
        t, nt = settings.covariance_type, settings.n_threads
        return self._reduce(_block_em_stats, lambda i: (packed, t, nt))
