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

The data source is :class:`gmmfast.sources.distributed.DistributedTensorSource`; the EM
loop is the one of every fit (``gmmfast._driver``). A recovery restart
(recovery='reseed') picks the worst-explained row of the initialisation sample on rank
0, as the chunked and Dask fits do, and every rank takes rank 0's choice.
"""

from __future__ import annotations

import contextlib
import threading

import torch.distributed as dist


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
