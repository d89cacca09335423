"""A NumPy array in memory (or memory-mapped, C-contiguous float32/float64) as an EM data
source: every pass is one native call over all the rows."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .. import ops
from .._params import weights_and_means
from .._types import EMStats, param_shape
from .._validation import seed_from
from .base import DataSource, mixture_in_dtype, one_hot_stats

#: kmeans_labels(X, n_components, random_state, sample_weight, n_threads) -> labels
KMeansLabels = Callable[..., np.ndarray]


def kmeans_labels(X, n_components, random_state, sample_weight, n_threads) -> np.ndarray:
    """gmmfast's k-means (k-means++ seeding, Lloyd), drawing scikit-learn's numbers."""
    return ops.kmeans(
        X, n_components, random_state=random_state, sample_weight=sample_weight, n_threads=n_threads
    ).labels


class ArraySource(DataSource):
    """Rows ``X`` (a validated, C-contiguous float32/float64 array) with optional
    per-row weights ``sample_weight``.

    ``kmeans`` replaces the k-means of init_params='kmeans' (model selection shares one
    k-means between the covariance types of a number of components).
    """

    def __init__(self, X: np.ndarray, sample_weight: Optional[np.ndarray] = None, kmeans: KMeansLabels = kmeans_labels):
        self.X = X
        self.sw = sample_weight
        self.dtype = X.dtype
        self.n_features = X.shape[1]
        self.n_rows = X.shape[0] if sample_weight is None else int(np.count_nonzero(sample_weight))
        self.kmeans = kmeans

    def recovery_rows(self) -> tuple:
        return self.X, self.sw

    def memory_shape(self) -> tuple:
        return self.X.shape[0], self.X.shape[0]

    def column_means(self) -> np.ndarray:
        return np.mean(self.X, axis=0, dtype=np.float64)

    def em_stats(self, params, settings) -> EMStats:
        return ops.em_stats(
            self.X,
            *mixture_in_dtype(params, self.dtype),
            settings.covariance_type,
            sample_weight=self.sw,
            n_threads=settings.n_threads,
        )

    def initial_stats(self, settings, random_state) -> EMStats:
        """The statistics of the initial responsibilities.

        The same computation and random draws as :func:`gmmfast.ops.initial_params`
        (whose result is ``ops.finalize`` of these statistics), stopped before the last
        M-step so that the recovery policy applies to it, and with the first pass's
        means taken without its covariances: those could fail where the second pass's
        do not.
        """
        X, sw = self.X, self.sw
        N, D = X.shape
        K, t, nt = settings.n_components, settings.covariance_type, settings.n_threads
        labels = None
        init = settings.init_params
        if init in ("k-means++", "random_from_data"):
            # responsibility one at K rows and zero elsewhere: the statistics of those
            # K rows alone (no n_samples × n_components array; X may be memory-mapped)
            if init == "k-means++":
                _, idx = ops.kmeans_plusplus(X, K, random_state=random_state, sample_weight=sw, n_threads=nt)
            else:
                # gmmfast's own stream (not scikit-learn's permutation of all N rows):
                # the chunked, Dask and torch.distributed fits draw the same rows
                rs = np.random.default_rng(seed_from(random_state))
                idx = rs.choice(N, size=K, replace=False)
            return self._one_hot_initial_stats(settings, np.asarray(idx))
        if init == "kmeans":
            labels = self.kmeans(X, K, random_state, sw, nt)
        else:  # random
            # gmmfast's own stream, which can jump to any row: the chunked, Dask and
            # torch.distributed fits draw the same numbers block by block in parallel
            seed = seed_from(random_state)
        shape_only = dict(
            log_weights=np.zeros(K),
            means=np.zeros((K, D)),
            precisions_cholesky=np.ones(param_shape(t, K, D)),
            covariance_type=t,
            n_threads=nt,
        )

        def stats(centres):
            if labels is not None:
                return ops.em_stats(X, centres=centres, sample_weight=sw, labels=labels, **shape_only)
            # random responsibilities in blocks of rows (the draws of one
            # uniform(size=(N, K)) call, block after block), so that no n_samples ×
            # n_components array is allocated for large data
            rs = np.random.default_rng(seed)
            block = max(1, (1 << 22) // K)
            total = None
            for start in range(0, N, block):
                Xb = X[start : start + block]
                resp = rs.uniform(size=(Xb.shape[0], K)).astype(X.dtype)
                resp /= resp.sum(axis=1, keepdims=True)
                wb = None if sw is None else sw[start : start + block]
                st = ops.em_stats(Xb, centres=centres, sample_weight=wb, resp=resp, **shape_only)
                total = st if total is None else total + st
            return total

        # pass 1 centres at the data mean; pass 2 at the means it gives, for accuracy
        centre = np.mean(X, axis=0, dtype=np.float64)
        first = stats(np.tile(centre, (K, 1)))
        _, means = weights_and_means(first, X.dtype)
        return stats(means)

    def _one_hot_initial_stats(self, settings, idx) -> EMStats:
        """Statistics of responsibilities one-hot at rows ``idx`` (component k at row
        idx[k]), two passes as in initial_stats; Σ g_i is that of all the rows."""
        X, sw = self.X, self.sw
        K, t, nt = settings.n_components, settings.covariance_type, settings.n_threads
        rows = np.ascontiguousarray(X[idx])
        w = None if sw is None else np.ascontiguousarray(sw[idx])
        weight_sum = float(X.shape[0]) if sw is None else float(np.sum(sw, dtype=np.float64))
        centre = np.mean(X, axis=0, dtype=np.float64)
        first = one_hot_stats(rows, w, np.tile(centre, (K, 1)), weight_sum, t, nt)
        _, means = weights_and_means(first, X.dtype)
        return one_hot_stats(rows, w, means, weight_sum, t, nt)
