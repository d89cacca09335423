"""Data with NaN entries (missing at random) as EM data sources: the same protocol and
the same driver loop, with statistics from the missing-value kernels
(:mod:`gmmfast._missing`): the E-step on each row's observed entries, the expected
complete-data statistics for the M-step, which the ordinary ``finalize`` turns into
parameters.

- :class:`MissingArraySource`: an array in memory (or a C-contiguous float memmap) with
  NaN entries; its rows are grouped by missingness pattern once, at construction.
- :class:`MissingChunkedSource`: ``fit_chunks`` data whose chunks may hold NaN; each
  chunk is grouped by pattern as it streams by (chunks without NaN go through
  :func:`gmmfast.ops.em_stats` itself).

The initialisation (``init_params``) and recovery restarts work on rows whose NaN are
replaced by their column's mean over the observed entries: the initial mixture is a
start, which EM then corrects. Data without NaN keep the ordinary sources (the
estimator picks them), so ``missing='em'`` changes nothing for them.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .. import _missing, ops
from .._types import EMStats
from .array import ArraySource, kmeans_labels
from .base import mixture_in_dtype
from .chunks import ChunkedSource


class MissingArraySource(ArraySource):
    """Rows ``X`` with NaN entries (validated: finite or NaN) and their pattern index."""

    def __init__(self, X: np.ndarray, sample_weight: Optional[np.ndarray] = None, kmeans=kmeans_labels,
                 index: Optional[_missing.MissingIndex] = None, feature_names=None):
        super().__init__(X, sample_weight, kmeans)
        self.index = index if index is not None else _missing.missing_index(X, feature_names=feature_names)
        self._filled = None

    def column_means(self) -> np.ndarray:
        return np.nanmean(self.X, axis=0, dtype=np.float64)

    def filled(self) -> np.ndarray:
        """X with each NaN replaced by its column's mean (made once, on first use)."""
        if self._filled is None:
            self._filled = _missing.fill_columns(self.X, self.column_means())
        return self._filled

    def recovery_rows(self) -> tuple:
        return self.filled(), self.sw

    def initial_stats(self, settings, random_state) -> EMStats:
        return ArraySource(self.filled(), self.sw, self.kmeans).initial_stats(settings, random_state)

    def em_stats(self, params, settings) -> EMStats:
        return _missing.em_stats(
            self.X, self.index, *mixture_in_dtype(params, self.dtype), settings.covariance_type,
            sample_weight=self.sw, n_threads=settings.n_threads,
        )


class MissingChunkedSource(ChunkedSource):
    """A stream of chunks that may hold NaN entries (``fit_chunks`` with missing='em')."""

    _first_empty_row = -1

    def _scan_chunk(self, X, i, offset):
        where = f"X ({self.name}[{i}], rows from {offset})"
        index = _missing.missing_index(X, where=where, check_columns=False, check_rows=False)
        if index.first_empty_row >= 0 and self._first_empty_row < 0:
            self._first_empty_row = offset + index.first_empty_row
        return np.stack([np.nansum(X, axis=0, dtype=np.float64), index.observed_per_column.astype(np.float64)])

    def _column_means(self, totals, n):
        # after the whole first pass: a column missing everywhere is named before an
        # empty row (which it may have caused)
        sums, counts = totals
        _missing.check_observed_columns(counts, self.feature_names)
        _missing.check_empty_row(self._first_empty_row, f"the data ({self.name})")
        return sums / counts

    def _init_rows(self, X):
        return _missing.fill_columns(X, self.mean) if _missing.has_missing(X) else X

    def em_stats(self, params, settings) -> EMStats:
        mixture = mixture_in_dtype(params, self.dtype)
        t, nt = settings.covariance_type, settings.n_threads

        def block(X, w, offset):
            if not _missing.has_missing(X):
                return ops.em_stats(X, *mixture, t, sample_weight=w, n_threads=nt)
            index = _missing.missing_index(X, n_threads=nt, check_columns=False)
            return _missing.em_stats(X, index, *mixture, t, sample_weight=w, n_threads=nt)

        return self._sum(block)
