"""Data that do not fit in one array: the public helpers of chunked and online EM.

Everything rests on one fact (docs/architecture.md): the EM statistics of
:func:`gmmfast.ops.em_stats` are sums over rows, so the statistics of the pieces of a
data set add up to those of the whole. Exact EM over data that never sit in memory at
once is therefore one pass per iteration that sums the statistics of each chunk, then
one :func:`gmmfast.ops.finalize` (:meth:`GaussianMixture.fit_chunks`); the Dask and
torch.distributed fits sum the statistics of blocks and ranks the same way. The EM
driver (``gmmfast._driver``) runs all of them; the chunked data source is
:mod:`gmmfast.sources.chunks`.

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
  :func:`implied_stats` — exact arithmetic on :class:`gmmfast.EMStats`;
- :func:`learning_rate` — online EM's step size; :func:`default_init_size` — rows of
  the initialisation sample of streamed data.
"""

from __future__ import annotations

from ._stats import blend_stats, implied_stats, learning_rate, recentre_stats, scale_stats
from .sources.base import default_init_size
from .sources.chunks import _Reservoir, is_chunk_source, row_chunks  # noqa: F401

__all__ = [
    "row_chunks",
    "recentre_stats",
    "scale_stats",
    "blend_stats",
    "implied_stats",
    "learning_rate",
    "default_init_size",
]
