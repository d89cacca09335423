"""Data sources of the EM driver: one module per place the rows can live.

:mod:`~gmmfast.sources.base` states the protocol (see docs/architecture.md); the
implementations are :mod:`~gmmfast.sources.array` (in memory), :mod:`~.chunks`
(chunks, memory-mapped files by blocks), :mod:`~.dask`, :mod:`~.tensor` (torch
tensors) and :mod:`~.distributed` (torch.distributed ranks). Nothing is imported here:
the Dask and torch sources import their optional dependency only when used.
"""
