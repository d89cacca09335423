"""Data-parallel fitting with torch.distributed.

When a ``torch.distributed`` process group is initialised (with more than one rank),
``GaussianMixture.fit`` on a torch tensor treats the tensor as this rank's part of the
data: every EM iteration runs the fused E-step (``gmmfast::em_stats``) on the local rows,
on their device, then sums the statistics across the ranks with one ``all_reduce``
(K·(1 + D + the covariance's size) + 2 float64 numbers, whatever the number of rows),
and every rank runs the same M-step. The result — on every rank — is the fit of the
concatenation of all the ranks' rows; the lower bound is the global weighted mean
log-likelihood. It works with the user's own setup (``torchrun``, NCCL on GPUs, gloo on
CPUs)::

    # torchrun --nproc-per-node 4 fit.py
    import torch, torch.distributed as dist, gmmfast
    dist.init_process_group("nccl")
    torch.cuda.set_device(dist.get_rank())
    X_local = load_my_shard(dist.get_rank()).cuda()     # this rank's rows
    gm = gmmfast.GaussianMixture(16, random_state=0).fit(X_local)
    # gm is the same model on every rank

Initialisation: each rank contributes a uniform random sample of its rows, in
proportion to its share of the data (``init_size`` rows in all: 100 000 by default, at
most 64 MiB of rows), gathered on every rank; rank 0 runs ``init_params`` on that sample
(k-means, k-means++ seeds, random rows) and broadcasts the result; for 'kmeans' every
rank then labels its rows by the nearest centre and the label statistics are
all-reduced. The initial mixture is broadcast from rank 0, so all ranks start from the
same parameters whatever their thread counts or random states. When the data have at
most ``init_size`` rows the sample is all of them, in rank order, and the fit equals a
single-process fit of the concatenated data. Given ``weights_init``, ``means_init`` and
``precisions_init`` (on rank 0; broadcast), no sample is needed.

The checks are collective: a rank whose part is invalid (NaN, a different number of
features or dtype) makes every rank raise, rather than leaving the others waiting.

Use :func:`use_group` to fit on a sub-group, or to fit each rank's data on its own
inside a process group (``use_group(None)``).
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch
import torch.distributed as dist

from .._types import EMStats, MixtureParams
from .._validation import check_random_state, seed_from
from ..streaming import (
    PartitionedData,
    default_init_size,
    initial_stats,
    label_stats_block,
    random_resp_block,
)

__all__ = ["current_group", "use_group", "init_size"]

_DEFAULT = object()
_local = threading.local()


def current_group():
    """The process group a tensor fit all-reduces over: the one set by :func:`use_group`,
    else the default (WORLD) group when torch.distributed is initialised with more than
    one rank; None for a single-process fit."""
    group = getattr(_local, "group", _DEFAULT)
    if group is None:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    if group is _DEFAULT:
        group = dist.group.WORLD
    if dist.get_world_size(group) <= 1:
        return None
    return group


@contextlib.contextmanager
def use_group(group):
    """Within the block, tensor fits all-reduce over ``group`` (a process group), or
    fit each rank's tensor on its own (``None``)."""
    previous = getattr(_local, "group", _DEFAULT)
    _local.group = group
    try:
        yield
    finally:
        _local.group = previous


#: rows of the initialisation sample over all ranks (None: the default of
#: gmmfast.streaming.default_init_size); a module setting, as the estimator's
#: parameters are those of scikit-learn
init_size = None


def raise_together(error, group):
    """Raise on every rank when any rank failed (its own error where it failed)."""
    errors = [None] * dist.get_world_size(group)
    dist.all_gather_object(errors, None if error is None else f"{type(error).__name__}: {error}", group=group)
    if error is not None:
        raise error
    for rank, msg in enumerate(errors):
        if msg is not None:
            raise ValueError(f"gmmfast: rank {rank} of the process group failed: {msg}")


def _comm_device(group, fallback):
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return fallback


class RankData(PartitionedData):
    """This rank's part of data spread over a process group (see the module docstring)."""

    def __init__(self, est, X, sw, group):
        self.est = est
        self.X = X
        self.sw = sw
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.root_rank = dist.get_global_rank(group, 0) if group is not dist.group.WORLD else 0
        self.device = _comm_device(group, torch.device("cpu"))
        weighted = sw is not None
        mine = dict(
            n=int(X.shape[0]),
            d=int(X.shape[1]),
            dtype=str(X.dtype),
            weighted=weighted,
            n_rows=int(X.shape[0] if sw is None else np.count_nonzero(sw)),
            weight_sum=float(X.shape[0] if sw is None else np.sum(sw, dtype=np.float64)),
            col_sum=np.sum(X, axis=0, dtype=np.float64),
        )
        parts = [None] * self.world
        dist.all_gather_object(parts, mine, group=group)
        first = parts[0]
        for r, p in enumerate(parts):
            for key, what in (("d", "features"), ("dtype", "dtype"), ("weighted", "sample weights (given or not)")):
                if p[key] != first[key]:
                    raise ValueError(
                        f"every rank must pass data with the same {what}: rank 0 has "
                        f"{first[key]!r}, rank {r} has {p[key]!r}"
                    )
        self.sizes = [p["n"] for p in parts]
        self.offset = int(sum(self.sizes[: self.rank]))
        self.n_samples = int(sum(self.sizes))
        self.n_features = first["d"]
        self.dtype = np.dtype(first["dtype"])
        self.weighted = weighted
        self.n_rows = int(sum(p["n_rows"] for p in parts))
        self.weight_sum = float(sum(p["weight_sum"] for p in parts))
        self.mean = sum(p["col_sum"] for p in parts) / self.n_samples
        K = est.n_components
        if self.n_samples < max(2, K):
            raise ValueError(
                "Expected n_samples >= n_components but got n_components = "
                f"{K}, n_samples = {self.n_samples} (over all ranks)"
            )
        if weighted and not self.weight_sum > 0:
            raise ValueError("sample_weight must not sum to zero (over all ranks)")
        self._pool = None

    # -------------------------------------------------------------- collectives

    def root(self, fn):
        box = [fn() if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=self.root_rank, group=self.group)
        return box[0]

    def all_reduce_tensors(self, *tensors):
        flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
        moved = flat.device != self.device and dist.get_backend(self.group) == "nccl"
        if moved:
            flat = flat.to(self.device)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        if moved:
            flat = flat.to(tensors[0].device)
        out, start = [], 0
        for t in tensors:
            out.append(flat[start : start + t.numel()].reshape(t.shape))
            start += t.numel()
        return out

    def _all_reduce_stats(self, st: EMStats) -> EMStats:
        scalars = torch.tensor([st.log_likelihood, st.weight_sum], dtype=torch.float64)
        parts = [scalars] + [torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (st.nk, st.s1, st.s2)]
        if self.device.type != "cpu":
            parts = [p.to(self.device) for p in parts]
        scalars, nk, s1, s2 = (p.cpu().numpy() for p in self.all_reduce_tensors(*parts))
        return EMStats(st.covariance_type, st.centres, float(scalars[0]), float(scalars[1]), nk, s1, s2, st.dtype)

    def agree_on(self, params: MixtureParams, state):
        """Rank 0's parameters and recovery bookkeeping, on every rank."""
        box = [(params, state.reg_covar, state.reseeds) if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=self.root_rank, group=self.group)
        params, state.reg_covar, state.reseeds = box[0]
        return params

    # ---------------------------------------------------------- PartitionedData

    @property
    def pool(self):
        if self._pool is None:
            self._pool = self._gather_sample()
        return self._pool

    def _gather_sample(self):
        size = init_size
        if size is None:
            size = default_init_size(self.est.n_components, self.n_features, self.dtype.itemsize)
        size = max(int(size), self.est.n_components)
        complete = self.n_samples <= size
        n = self.X.shape[0]
        if complete:
            idx = np.arange(n)
        else:
            seed = self.root(lambda: seed_from(check_random_state(self.est.random_state)))
            share = min(n, int(np.ceil(size * n / self.n_samples)))
            rng = np.random.default_rng([seed, 0x72616E6B, self.rank])
            idx = np.sort(rng.choice(n, size=share, replace=False))
        mine = (self.X[idx], None if self.sw is None else self.sw[idx])
        parts = [None] * self.world
        dist.all_gather_object(parts, mine, group=self.group)
        X = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
        w = None if self.sw is None else np.ascontiguousarray(np.concatenate([p[1] for p in parts]))
        return X, w, w, complete

    def label_stats(self, centres, covariance_type, n_threads, labels=None):
        c = np.asarray(centres, dtype=self.dtype)
        if labels is not None:
            labels = labels[self.offset : self.offset + self.X.shape[0]]
        return self._all_reduce_stats(label_stats_block(self.X, self.sw, c, covariance_type, n_threads, labels))

    def random_resp_stats(self, seed, n_components, centres, covariance_type, n_threads):
        st = random_resp_block(
            self.X, self.sw, seed, self.offset, n_components, centres, covariance_type, n_threads
        )
        return self._all_reduce_stats(st)

    def initial_params(self, random_state, inits, state):
        if all(v is not None for v in inits):
            # all *_init given: no sample to gather (rank 0's are broadcast)
            return self.agree_on(self.est._initial_params(self.X, self.sw, random_state, inits, state), state)
        X_pool, _, w_pool, _ = self.pool
        params = self.est._initial_params(
            X_pool,
            w_pool,
            random_state,
            inits,
            state,
            initial_stats=lambda: initial_stats(self.est, self, random_state),
        )
        return self.agree_on(params, state)
