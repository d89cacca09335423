"""A tensor per torch.distributed rank as one EM data source (see
:mod:`gmmfast.torch.distributed` for the method and how to use it): every iteration
all-reduces the statistics of the ranks' rows; the initialisation works on a sample
gathered from every rank, and every decision taken on one rank (the initial mixture, a
recovery restart) is rank 0's, broadcast."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from .._types import EMStats, MixtureParams
from .._validation import check_random_state, seed_from
from .base import PartitionedData, default_init_size, label_stats_block, random_resp_block
from .tensor import TensorSource, TensorStats


def _comm_device(group, fallback):
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return fallback


class DistributedTensorSource(PartitionedData, TensorSource):
    """This rank's part of data spread over a process group (see
    :mod:`gmmfast.torch.distributed`): the E-step and M-step of a tensor source, with
    the statistics all-reduced, and the initialisation of data in parts from a sample
    gathered from every rank."""

    def __init__(self, X, X_host, sw, sw_host, group, settings, random_state):
        TensorSource.__init__(self, X, X_host, sw, sw_host)
        self.settings = settings
        self.random_state = random_state  # the estimator's parameter (drawn from lazily)
        self.group = group
        X, sw = X_host, sw_host
        self.rank = dist.get_rank(group)
        self.is_root = self.rank == 0
        self.world = dist.get_world_size(group)
        self.root_rank = dist.get_global_rank(group, 0) if group is not dist.group.WORLD else 0
        self.comm_device = _comm_device(group, torch.device("cpu"))
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
        K = settings.n_components
        if self.n_samples < max(2, K):
            raise ValueError(
                "Expected n_samples >= n_components but got n_components = "
                f"{K}, n_samples = {self.n_samples} (over all ranks)"
            )
        if weighted and not self.weight_sum > 0:
            raise ValueError("sample_weight must not sum to zero (over all ranks)")
        self._pool = None

    def memory_shape(self) -> tuple:
        # the pool's size without gathering it
        from ..torch import distributed

        size = distributed.init_size
        if size is None:
            size = default_init_size(self.settings.n_components, self.n_features, self.dtype.itemsize)
        return min(self.n_samples, max(int(size), self.settings.n_components)), self.host.X.shape[0]

    def check_memory(self, settings, initialise=True, n_copies=3, op="GaussianMixture.fit", shape=None):
        """Every rank checks its own memory and every rank raises when one rank's check
        fails (a rank raising alone would leave the others waiting in a collective)."""
        try:
            TensorSource.check_memory(self, settings, initialise, n_copies, op, shape)
            mine = None
        except MemoryError as e:
            mine = str(e)
        outcomes = [None] * self.world
        dist.all_gather_object(outcomes, mine, group=self.group)
        for r, msg in enumerate(outcomes):
            if msg is not None:
                raise MemoryError(msg if r == self.rank else f"rank {r}: {msg}")

    # -------------------------------------------------------------- collectives

    def root(self, fn):
        box = [fn() if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=self.root_rank, group=self.group)
        return box[0]

    def all_reduce_tensors(self, *tensors):
        flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
        moved = flat.device != self.comm_device and dist.get_backend(self.group) == "nccl"
        if moved:
            flat = flat.to(self.comm_device)
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
        if self.comm_device.type != "cpu":
            parts = [p.to(self.comm_device) for p in parts]
        scalars, nk, s1, s2 = (p.cpu().numpy() for p in self.all_reduce_tensors(*parts))
        return EMStats(st.covariance_type, st.centres, float(scalars[0]), float(scalars[1]), nk, s1, s2, st.dtype)

    def sum_across_processes(self, stats: TensorStats) -> TensorStats:
        # one all-reduce of the statistics per iteration: every rank then computes the
        # same M-step and lower bound (the global weighted mean)
        scalars, nk, s1, s2 = self.all_reduce_tensors(stats.scalars, stats.nk, stats.s1, stats.s2)
        return TensorStats(scalars, nk, s1, s2, stats.centres, stats.covariance_type)

    def agree(self, params: MixtureParams, state):
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
        from ..torch import distributed

        K = self.settings.n_components
        size = distributed.init_size
        if size is None:
            size = default_init_size(K, self.n_features, self.dtype.itemsize)
        size = max(int(size), K)
        complete = self.n_samples <= size
        X_host, sw_host = self.host.X, self.host.sw
        n = X_host.shape[0]
        if complete:
            idx = np.arange(n)
        else:
            seed = self.root(lambda: seed_from(check_random_state(self.random_state)))
            share = min(n, int(np.ceil(size * n / self.n_samples)))
            rng = np.random.default_rng([seed, 0x72616E6B, self.rank])
            idx = np.sort(rng.choice(n, size=share, replace=False))
        mine = (X_host[idx], None if sw_host is None else sw_host[idx])
        parts = [None] * self.world
        dist.all_gather_object(parts, mine, group=self.group)
        X = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
        w = None if sw_host is None else np.ascontiguousarray(np.concatenate([p[1] for p in parts]))
        return X, w, w, complete

    def label_stats(self, centres, covariance_type, n_threads, labels=None):
        c = np.asarray(centres, dtype=self.dtype)
        if labels is not None:
            labels = labels[self.offset : self.offset + self.host.X.shape[0]]
        return self._all_reduce_stats(label_stats_block(self.host.X, self.host.sw, c, covariance_type, n_threads, labels))

    def random_resp_stats(self, seed, n_components, centres, covariance_type, n_threads):
        st = random_resp_block(
            self.host.X, self.host.sw, seed, self.offset, n_components, centres, covariance_type, n_threads
        )
        return self._all_reduce_stats(st)


def rank_source(X, validate, group, settings, random_state):
    """(this rank's source, X's column names): ``validate()`` returns this rank's host
    rows, names and weights; an error on any rank (invalid data, a different number of
    features, too few rows in all) is raised on every rank, rather than leaving the
    others waiting in a collective."""
    from ..torch.distributed import raise_together

    error = X_host = names = sw_host = None
    try:
        X_host, names, sw_host = validate()
    except ValueError as exc:
        error = exc
    raise_together(error, group)
    sw = None if sw_host is None else torch.as_tensor(sw_host, device=X.device)
    source = None
    try:
        source = DistributedTensorSource(X, X_host, sw, sw_host, group, settings, random_state)
    except ValueError as exc:
        error = exc
    raise_together(error, group)
    return source, names
