"""gmmfast.GaussianMixture: scikit-learn's GaussianMixture on gmmfast's native kernels.

Same constructor, methods, fitted attributes and semantics as
``sklearn.mixture.GaussianMixture`` (1.9), plus:

- ``sample_weight`` in ``fit``, ``fit_predict``, ``score``, ``bic`` and ``aic`` (exact
  weighted EM: integer weights give the fit of repeated rows);
- ``recovery``: what to do when a component collapses or its covariance is
  ill-defined ("reg_covar" raises the regularisation, "reseed" restarts the component);
  the default, None, raises scikit-learn's error like scikit-learn;
- ``n_threads`` for the OpenMP kernels;
- ``save(path)`` / :func:`gmmfast.load` in a portable, pickle-free format;
- data beyond one array in memory: memory-mapped and Dask arrays in ``fit``,
  ``fit_chunks`` (exact EM over chunks), ``partial_fit`` / ``fit_minibatch`` (online EM)
  and data-parallel torch fits under ``torch.distributed``.

float32 data are fitted with float32 kernels (statistics accumulated in float64) and the
fitted parameters are float32, as scikit-learn keeps them; float64 stays float64; other
numeric input is converted to float64.

This module is the scikit-learn shell only: parameters, validation, fitted attributes,
scoring and verbose output. Each fit picks a data source (:mod:`gmmfast.sources`) and
hands it to the EM driver (:mod:`gmmfast._driver`); see docs/architecture.md.
"""

from __future__ import annotations

import itertools
import math
import numbers
import warnings

import numpy as np

from . import _driver as driver
from . import _scoring as scoring
from ._checkpoint import Checkpoint
from ._compat import BaseEstimator, ConvergenceWarning, DensityMixin, NotFittedError
from ._driver import WarmStart
from ._params import precisions_from_cholesky
from ._settings import EMSettings, check_int
from ._types import MixtureParams
from ._validation import (
    as_2d_float,
    as_tensor,
    check_finite,
    check_means_init,
    check_n_features,
    check_precisions_init,
    check_random_state,
    check_sample_weight,
    check_weights_init,
    feature_names,
    feature_names_mismatch,
    is_dask_array,
    is_tensor,
    needs_blockwise_conversion,
    to_numpy,
)
from ._verbose import EstimatorMonitor, VerboseOutput
from .io import FittedModel, read_model, save_model
from .sources.array import ArraySource
from .sources.chunks import Chunks, ChunkedSource, minibatches, row_chunks

__all__ = ["GaussianMixture", "load"]

# the fields of a model file (io.FittedModel) and the fitted attributes they hold
_SAVED = (
    ("weights", "weights_"),
    ("means", "means_"),
    ("covariances", "covariances_"),
    ("precisions_cholesky", "precisions_cholesky_"),
    ("n_features_in", "n_features_in_"),
    ("converged", "converged_"),
    ("n_iter", "n_iter_"),
    ("lower_bound", "lower_bound_"),
    ("lower_bounds", "lower_bounds_"),
)


# ------------------------------------------------------------------------------- estimator


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture model fitted by EM on gmmfast's native kernels.

    A drop-in replacement for :class:`sklearn.mixture.GaussianMixture`: the parameters,
    methods, fitted attributes and results are scikit-learn's (see its documentation);
    only the extras are described here.

    Beyond one array in memory: ``fit`` takes memory-mapped arrays
    (``np.load(path, mmap_mode="r")``) without copying them and ``dask.array.Array``
    data (see :mod:`gmmfast.dask`); :meth:`fit_chunks` runs exact EM over data given as
    chunks, one pass per iteration; :meth:`partial_fit` (online EM) and
    :meth:`fit_minibatch` (mini-batch EM); a torch-tensor fit inside an initialised
    ``torch.distributed`` process group all-reduces the statistics of every iteration
    (see :mod:`gmmfast.torch.distributed`).

    Parameters
    ----------
    n_components : int, default=1
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
    tol : float, default=1e-3
        Convergence threshold on the change of the (weighted) mean log-likelihood.
    reg_covar : float, default=1e-6
    max_iter : int, default=100
    n_init : int, default=1
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}, default='kmeans'
        Initialisation uses gmmfast's own C++ k-means / k-means++.
    weights_init, means_init, precisions_init : array-like, default=None
    random_state : int, RandomState instance or None, default=None
    warm_start : bool, default=False
    verbose : int, default=0
        scikit-learn's levels 1 and 2, word for word; 3 also says what runs before the
        first iteration (k-means of many components can take minutes).
    verbose_interval : int, default=10
    recovery : {None, 'reg_covar', 'reseed'}, default=None
        What to do when a covariance is ill-defined (not positive definite) or a
        component collapses (its responsibility mass falls below two average samples):

        - None: raise scikit-learn's ValueError, as scikit-learn does (collapsed
          components are left alone);
        - 'reg_covar': retry the M-step with reg_covar multiplied by 10 until the
          covariances are positive definite; ``reg_covar_`` records the value used;
        - 'reseed': restart each failed or collapsed component at the worst-explained
          sample (lowest log-likelihood), with the average covariance of the others and
          weight 1/n_components; at most ``max(10, n_components)`` restarts per
          initialisation, counted in ``n_reseeds_``. When no restart is possible (the
          budget is spent, every component failed, or the covariance is 'tied'), an
          ill-defined covariance is handled as with 'reg_covar'.

        Both are deterministic; a warning reports that recovery happened.
    n_threads : int, default=None
        OpenMP threads of the kernels (None: OMP_NUM_THREADS or all cores).
    learning_decay : float in (0.5, 1.0], default=0.7
        κ of the step size of online EM (:meth:`partial_fit`, :meth:`fit_minibatch`):
        the t-th chunk (t = 1, 2, ...) moves the running statistics by
        η_t = (learning_offset + t)^(−learning_decay) (Cappé & Moulines 2009); κ in
        (0.5, 1] makes Σ η_t diverge and Σ η_t² converge, as stochastic approximation
        needs. Smaller κ forgets old chunks faster. Not used by :meth:`fit`.
    learning_offset : float >= 0, default=10.0
        τ₀ of the step size above: larger values make the first steps smaller.
    checkpoint : str or path-like, default=None
        Where a long fit writes its state every ``checkpoint_every`` EM iterations
        (atomically, in the model files' safe format). A fit that finds a checkpoint of
        the same fit (same parameters, same data) resumes from it and ends with the
        model the uninterrupted fit would have given; a checkpoint of another fit is an
        error. The file is removed when the fit ends. Used by ``fit``, ``fit_chunks``
        and fits of Dask arrays and tensors (with torch.distributed, rank 0 writes and reads it
        and every rank resumes from its state);
        not by online EM. Give each fit its own path (a clone shares it).
    checkpoint_every : int >= 1, default=10
        Iterations between checkpoints.

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_ : ndarray
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
    lower_bounds_ : list of float
    n_features_in_ : int
    feature_names_in_ : ndarray of str (only when X had string column names)
    reg_covar_ : float
        The regularisation in effect at the end of the kept run (differs from reg_covar
        only when recovery raised it).
    n_reseeds_ : int
        Components restarted by recovery='reseed' in the kept run (0 otherwise).
    n_batch_iter_ : int
        Chunks seen by online EM since it started (only after :meth:`partial_fit` or
        :meth:`fit_minibatch`).
    """

    def __init__(
        self,
        n_components=1,
        *,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weights_init=None,
        means_init=None,
        precisions_init=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        recovery=None,
        n_threads=None,
        learning_decay=0.7,
        learning_offset=10.0,
        checkpoint=None,
        checkpoint_every=10,
    ):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.recovery = recovery
        self.n_threads = n_threads
        self.learning_decay = learning_decay
        self.learning_offset = learning_offset
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every

    # ------------------------------------------------------------------ parameter checks

    def _check_params(self) -> EMSettings:
        """scikit-learn's parameter constraints (InvalidParameterError with its text),
        plus gmmfast's recovery, n_threads and online-EM parameters; returns the
        settings of the EM driver."""
        return EMSettings.from_params(self.get_params(deep=False))

    def _validate_fit_X(self, X, min_samples: int = 1):
        """X for a fit: (validated array, string column names or None)."""
        names = feature_names(X)
        return self._checked_array(X, min_samples), names

    def _validate_X(self, X, features=None) -> np.ndarray:
        """X for predict/score/partial_fit: scikit-learn's validate_data order (feature
        names against those seen in fit, check_array, the number of features).
        ``features``: (n_features, names) of a model being fitted, instead of the fitted
        model's."""
        n_features, fitted = features or (self.n_features_in_, getattr(self, "feature_names_in_", None))
        names = feature_names(X)
        if fitted is not None and names is None:
            warnings.warn(
                "X does not have valid feature names, but GaussianMixture was fitted with feature names",
                UserWarning,
            )
        elif fitted is None and names is not None:
            warnings.warn("X has feature names, but GaussianMixture was fitted without feature names", UserWarning)
        elif fitted is not None and (len(fitted) != len(names) or np.any(fitted != names)):
            raise ValueError(feature_names_mismatch(fitted, names))
        arr = self._checked_array(X, 1)
        check_n_features(arr.shape[1], n_features)
        return arr

    def _checked_array(self, X, min_samples):
        arr = as_2d_float(X)
        if arr.shape[0] < min_samples:
            raise ValueError(
                "Found array with %d sample(s) (shape=%s) while a minimum of %d is required by "
                "GaussianMixture." % (arr.shape[0], arr.shape, min_samples)
            )
        if arr.shape[1] < 1:
            raise ValueError(
                "Found array with %d feature(s) (shape=%s) while a minimum of 1 is required by "
                "GaussianMixture." % (arr.shape[1], arr.shape)
            )
        check_finite(arr)
        return arr

    def _set_features(self, n_features, names):
        self.n_features_in_ = n_features
        if names is not None:
            self.feature_names_in_ = names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_

    def _check_is_fitted(self):
        if not hasattr(self, "means_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )

    def __sklearn_is_fitted__(self):
        return hasattr(self, "means_")

    def _checked_inits(self, n_features):
        K, t = self.n_components, self.covariance_type
        return (
            None if self.weights_init is None else check_weights_init(self.weights_init, K),
            None if self.means_init is None else check_means_init(self.means_init, K, n_features),
            None
            if self.precisions_init is None
            else check_precisions_init(self.precisions_init, t, K, n_features),
        )

    def _fit_weights(self, X, sample_weight):
        n_samples = X.shape[0]
        if n_samples < self.n_components:
            raise ValueError(
                "Expected n_samples >= n_components "
                f"but got n_components = {self.n_components}, n_samples = {n_samples}"
            )
        return check_sample_weight(sample_weight, n_samples, X.dtype)

    # ------------------------------------------------------------------------- fitting

    def fit(self, X, y=None, sample_weight=None):
        """Estimate the parameters with EM (``n_init`` runs, the best kept).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative per-sample weights; integer weights are equivalent to
            repeating rows.

        Returns
        -------
        self
        """
        self._fit(X, sample_weight)
        return self

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit, then return the component labels of X (equal to fit(X).predict(X))."""
        Xv = self._fit(X, sample_weight)
        return self._labels(Xv)

    def _fit(self, X, sample_weight, candidates_per_block=None):
        """Validate, pick the data source, run the EM driver, set the fitted attributes;
        returns the validated X (NumPy, a Dask array, or a tensor on its device)."""
        settings = self._check_params()
        if is_tensor(X):
            source, X, names = self._tensor_source(X, sample_weight, settings)
        elif is_dask_array(X):
            from . import dask as dask_api
            from .sources.dask import DaskSource

            initialise = not (
                self._warm()
                or (self.weights_init is not None and self.means_init is not None and self.precisions_init is not None)
            )
            source = DaskSource(
                X, sample_weight, settings, check_random_state(self.random_state), initialise, candidates_per_block,
                max_block_retries=dask_api.max_block_retries, recompute_timeout=dask_api.recompute_timeout,
            )
            X, names = source.X, None
        elif needs_blockwise_conversion(X):
            # a memory-mapped array that is not C-contiguous float32/float64: converting
            # it would copy all of it, so it is streamed by blocks of rows instead
            source = self._blockwise_source(X, sample_weight, settings)
            names = None
        else:
            X, names = self._validate_fit_X(X, min_samples=2)
            # one C-contiguous copy of a Fortran-ordered (or strided) X, instead of one
            # per native call; it also makes NumPy's column means, whose rounding depends
            # on the layout, the same as for the C-ordered array
            X = np.ascontiguousarray(X)
            source = self._array_source(X, self._fit_weights(X, sample_weight))
        self._run_em(source, settings, names)
        return X

    def _array_source(self, X, sample_weight):
        """The data source of an in-memory fit (model selection overrides it to share
        one k-means between covariance types)."""
        return ArraySource(X, sample_weight)

    def _blockwise_source(self, X, sample_weight, settings):
        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight)
            if sample_weight.shape != (X.shape[0],):
                raise ValueError(f"sample_weight.shape == {sample_weight.shape}, expected {(X.shape[0],)}!")
        dtype = np.float32 if X.dtype.kind == "f" and X.dtype.itemsize == 4 else np.float64
        rows = max(1024, (1 << 18) // max(1, X.shape[1]))  # blocks of ~256k values
        return self._chunked_source(Chunks(row_chunks(X, rows, sample_weight, dtype=dtype), "X"), None, settings)

    def _chunked_source(self, chunks, init_size, settings):
        rs = check_random_state(self.random_state)
        return ChunkedSource(chunks, settings.n_components, init_size, rs, settings.n_threads, chunks.name, settings)

    def _tensor_source(self, X, sample_weight, settings):
        """The data source of a tensor fit: the tensor on its device, or this rank's part
        of the data inside a torch.distributed process group (every rank raises when
        one rank's part is invalid)."""
        import torch

        from .sources.tensor import TensorSource
        from .torch.distributed import current_group

        if X.is_complex():
            raise ValueError("Complex data not supported")
        Xt = X.detach()
        if Xt.dtype not in (torch.float32, torch.float64):
            Xt = Xt.to(torch.float64)
        Xt = Xt.contiguous()
        group = current_group()
        if group is None:
            X_host, names = self._validate_fit_X(Xt.cpu().numpy(), min_samples=2)
            sw_host = self._fit_weights(X_host, to_numpy(sample_weight))
            sw = None if sw_host is None else torch.as_tensor(sw_host, device=Xt.device)
            return TensorSource(Xt, X_host, sw, sw_host), Xt, names
        from .sources.distributed import rank_source

        def validate():
            # each rank holds a part of the data: the sample-count rules apply to all of
            # it (checked by the source)
            X_host, names = self._validate_fit_X(Xt.cpu().numpy(), min_samples=1)
            sw = check_sample_weight(to_numpy(sample_weight), X_host.shape[0], X_host.dtype, allow_zero_sum=True)
            return X_host, names, sw

        source, names = rank_source(Xt, validate, group, settings, self.random_state)
        return source, Xt, names

    def _warm(self) -> bool:
        return bool(self.warm_start and hasattr(self, "converged_"))

    def _run_em(self, source, settings, names):
        """The EM driver over ``source``; the fitted attributes are set together at the
        end, from the kept run."""
        warm = None
        if self._warm():
            warm = WarmStart(self._fitted_params(), self.lower_bound_, getattr(self, "reg_covar_", self.reg_covar))
        inits = self._checked_inits(source.n_features)
        random_state = check_random_state(self.random_state)
        checkpoint = None if self.checkpoint is None else Checkpoint(self.checkpoint, self.checkpoint_every)
        result = driver.fit(
            settings, source, random_state, inits, warm_start=warm, monitor=self._monitor(), checkpoint=checkpoint
        )
        # the fitted attributes, all at once: an interrupted or failed fit leaves the
        # estimator as it was
        self._reset_online()  # a new fit ends online EM
        self._set_features(source.n_features, names)
        self._set_attributes(source.attributes(result.params))
        self.converged_ = result.converged
        self.n_iter_ = result.n_iter
        self.lower_bound_ = result.lower_bound
        self.lower_bounds_ = result.lower_bounds
        self.reg_covar_ = result.reg_covar
        self.n_reseeds_ = result.n_reseeds

    # ------------------------------------------------------------ data beyond one array

    def fit_chunks(self, chunks, y=None, *, init_size=None):
        """Exact EM over data given as chunks of rows, one pass over the chunks per
        iteration: memory is one chunk plus the initialisation sample, whatever the
        number of rows.

        Each iteration sums the statistics (:func:`gmmfast.ops.em_stats`) of every chunk
        and runs one M-step, so the result is the in-memory fit of the concatenated
        chunks (up to the order of floating-point sums) from the same initial mixture.

        Parameters
        ----------
        chunks : sequence, callable or iterable
            The data, chunk by chunk: a list/tuple of arrays (n_i, n_features) or of
            pairs ``(X_i, sample_weight_i)``; or a function with no arguments returning a
            new iterator over them on every call (a generator function, or
            :func:`gmmfast.streaming.row_chunks` over a memory-mapped array). Every pass
            must give the same rows in the same order. All chunks have the same dtype
            (float32 chunks are fitted in float32).
        y : ignored
        init_size : int, default=None
            Rows of the initialisation sample (default: 100 000, at most 64 MiB of rows,
            at least 50 per component).

        Returns
        -------
        self

        Notes
        -----
        Initialisation: a first pass validates every chunk (shape, dtype, finite
        values, weights) and draws a uniform random sample of ``init_size`` rows
        (reservoir sampling, Li's Algorithm L). ``init_params`` then works on that
        sample: 'kmeans' runs k-means on it and labels every row of the data by its
        nearest centre (one more pass);
        'k-means++' and 'random_from_data' pick their rows from it; 'random' draws
        scikit-learn's random responsibilities for every row. Data of at most
        ``init_size`` rows are their own sample (no random number is drawn for it), so
        the fit then equals ``fit`` of the concatenated chunks. Given ``weights_init``,
        ``means_init`` and ``precisions_init`` the sample only serves recovery='reseed',
        which restarts a collapsed component at the worst-explained row of the sample.
        """
        settings = self._check_params()
        chunks = Chunks(chunks)
        if not chunks.reiterable:
            raise TypeError(
                "chunks is a one-shot iterator (a generator object): EM needs one pass per "
                "iteration; pass a list of arrays or a function that returns a new iterator, "
                "e.g. `gm.fit_chunks(lambda: my_chunks())`"
            )
        if init_size is not None:
            check_int("init_size", init_size, 1)
        source = self._chunked_source(chunks, init_size, settings)
        self._run_em(source, settings, source.feature_names)
        return self

    def partial_fit(self, X, y=None, sample_weight=None):
        """One step of online (stepwise) EM on a chunk of data.

        The model keeps running statistics s (per-sample averages of em_stats' sums,
        centred at the current means) and updates them with the chunk's statistics ŝ
        under the current mixture: s ← (1 − η_t) s + η_t ŝ, then runs the M-step, for
        the t-th chunk with η_t = (learning_offset + t)^(−learning_decay) (Cappé &
        Moulines 2009; Liang & Klein 2009). When the M-step moves the means, s is
        re-centred exactly at them.

        The first call initialises the mixture from its chunk as ``fit`` would
        (``init_params`` on the chunk, or the given *_init; the chunk needs at least
        n_components rows) and starts s at the statistics of that mixture; on a fitted
        model (after ``fit``, ``fit_chunks`` or :func:`gmmfast.load`) it starts from the
        fitted mixture, and a model fitted by online EM (``n_batch_iter_`` set, also after
        save and load) continues its step schedule at t = ``n_batch_iter_`` + 1. ``fit``
        ends online EM and removes ``n_batch_iter_``; ``n_init`` does not apply.

        The fitted attributes are updated after every call; ``lower_bound_`` is the
        chunk's mean log-likelihood under the mixture before the step, and
        ``n_batch_iter_`` counts the chunks. Runs on the CPU kernels (tensors are copied
        to the host).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self
        """
        settings = self._check_params()
        if is_tensor(X):
            X = X.detach().cpu().numpy()
        online = self.__dict__.get("_online")
        features = None
        if online is None:
            online, batch, features = self._start_online(settings, X, sample_weight)
        else:
            batch = self._online_batch(X, sample_weight, online.dtype)
        # a failed step leaves the model (and the online state) of the previous step
        run = online.run(lambda: (batch,), max_iter=1)
        self._end_online(online, features, run.lower_bounds, False)
        return self

    def fit_minibatch(self, X, y=None, sample_weight=None, *, batch_size=None, max_epochs=10, shuffle=True):
        """Mini-batch EM: online EM (see :meth:`partial_fit`) over the data in batches,
        for several epochs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or chunks
            An array (a memory-mapped one is read batch by batch, never whole), or
            chunks as for :meth:`fit_chunks` (a list of arrays or ``(X, weights)``
            pairs, or a function returning a new iterator of them; a one-shot iterator
            allows one epoch).
        y : ignored
        sample_weight : array-like of shape (n_samples,), default=None
            Only with an array X (chunks carry their own weights).
        batch_size : int, default=None
            Rows per batch: an array is cut into blocks of ``batch_size`` consecutive
            rows; chunks larger than it are cut too. Default: 10 000 rows, or
            100 per component if more, for arrays; the chunks as given.
        max_epochs : int, default=10
            Passes over the data. EM stops earlier when the mean log-likelihood of an
            epoch (accumulated over its batches, under the mixture of each batch)
            changes by less than ``tol`` from the previous epoch.
        shuffle : bool, default=True
            Visit the blocks of an array in a new random order every epoch
            (``random_state``); rows inside a block stay together, so shuffle sorted
            data beforehand. Chunks are visited in their order.

        The mixture is initialised from the first batch as by :meth:`partial_fit`
        (k-means on it, or the given *_init), or continues from the fitted one with
        ``warm_start=True``. ``n_iter_`` counts epochs, ``lower_bounds_`` holds the
        epoch means, ``n_batch_iter_`` the batches.

        Returns
        -------
        self
        """
        settings = self._check_params()
        check_int("max_epochs", max_epochs, 1)
        if batch_size is not None:
            check_int("batch_size", batch_size, 1)
        from_fitted = bool(self.warm_start and hasattr(self, "means_"))
        if self.checkpoint is not None:
            warnings.warn("checkpoint is not used by mini-batch (online) EM", UserWarning)
        random_state = check_random_state(self.random_state)
        if is_tensor(X):
            X = X.detach().cpu().numpy()
        default_size = max(10_000, 100 * self.n_components)
        batches, names = minibatches(X, sample_weight, batch_size, default_size, shuffle, random_state, max_epochs)
        # a new run of online EM replaces the current one only when it succeeds
        online = self.__dict__.get("_online") if from_fitted else None
        features = None  # (n_features, names) of a new model, set at the end

        def sources(raw):
            for Xb, wb in raw:
                yield self._online_batch(Xb, wb, online.dtype, features)

        first_epoch = []
        if online is None:
            # the first batch initialises online EM (as partial_fit's first call does)
            # and is the first step of the first epoch
            raw = batches()
            first = next(raw, None)
            if first is None:
                raise ValueError("X gave no data")
            online, batch, features = self._start_online(settings, first[0], first[1], random_state, from_fitted)
            first_epoch.append(itertools.chain([batch], sources(raw)))
        run = online.run(
            lambda: first_epoch.pop() if first_epoch else sources(batches()),
            max_iter=max_epochs,
            monitor=self._monitor(),
        )
        if names is not None:
            features = (online.params.means.shape[1], names)
        self._end_online(online, features, run.lower_bounds, run.converged)
        if not run.converged:
            warnings.warn(
                f"Mini-batch EM did not converge in max_epochs={max_epochs} epoch(s) (the mean "
                "log-likelihood of the last epochs changed by tol or more). Increase "
                "max_epochs or tol.",
                ConvergenceWarning,
            )
        return self

    # online EM internals: _online holds a _driver.OnlineEM

    def _reset_online(self):
        """A batch fit ends online EM: its state and its step count go."""
        self.__dict__.pop("_online", None)
        self.__dict__.pop("n_batch_iter_", None)

    def _start_online(self, settings, X, sample_weight, random_state=None, from_fitted=None):
        """A new OnlineEM, its first batch and the new model's (n_features, names)
        (None when it continues the fitted model); nothing is set on the estimator."""
        features = None
        if from_fitted is None:
            from_fitted = hasattr(self, "means_")
        if from_fitted:
            # continue from the fitted mixture; a model fitted by online EM (also one
            # saved and loaded again) continues its step schedule where it stopped
            # instead of restarting with large steps
            dtype = np.dtype(to_numpy(self.means_).dtype)
            batch = self._online_batch(X, sample_weight, dtype)
            online = driver.OnlineEM.from_fitted(
                settings,
                self._fitted_params(),
                dtype,
                getattr(self, "reg_covar_", self.reg_covar),
                batch.X.shape[0],
                t=int(getattr(self, "n_batch_iter_", 0)),
            )
        else:
            X, names = self._validate_fit_X(X, min_samples=1)
            features = (X.shape[1], names)
            batch = ArraySource(X, self._fit_weights(X, sample_weight))
            rs = check_random_state(self.random_state) if random_state is None else random_state
            online = driver.OnlineEM.from_data(settings, batch, rs, self._checked_inits(X.shape[1]))
        return online, batch, features

    def _online_batch(self, X, sample_weight, dtype, features=None) -> ArraySource:
        X = self._validate_X(X, features)
        if X.dtype != dtype:
            X = X.astype(dtype)
        return ArraySource(X, check_sample_weight(to_numpy(sample_weight), X.shape[0], X.dtype))

    def _end_online(self, online, features, lower_bounds, converged):
        """Sets the fitted attributes of a successful online step or run together."""
        p, dt = online.params, online.dtype
        self._online = online
        if features is not None:
            self._set_features(*features)
        self._set_attributes(
            {
                "weights_": p.weights.astype(dt),
                "means_": p.means.astype(dt),
                "covariances_": p.covariances.astype(dt),
                "precisions_cholesky_": p.precisions_cholesky.astype(dt),
            }
        )
        self.n_batch_iter_ = online.t
        self.n_iter_ = len(lower_bounds)
        self.lower_bound_ = float(lower_bounds[-1])
        self.lower_bounds_ = [float(v) for v in lower_bounds]
        self.converged_ = bool(converged)
        self.reg_covar_ = online.state.reg_covar
        self.n_reseeds_ = online.state.reseeds

    # ----------------------------------------------------------------------- prediction

    def _mixture(self) -> scoring.Mixture:
        return scoring.Mixture(
            self.weights_, self.means_, self.precisions_cholesky_, self.covariance_type, self.n_threads
        )

    def _labels(self, X):
        return scoring.labels(self._mixture(), X)

    def _log_prob(self, X, output):
        """log_prob of validated X under the fitted mixture, in X's kind of array and on
        its device (gmmfast._scoring)."""
        return scoring.log_prob(self._mixture(), X, output)

    def _validate_input(self, X):
        """X for predict/score: NumPy through scikit-learn's checks, a Dask array or a
        torch tensor checked where it lives."""
        checked = scoring.check_input(X, self.n_features_in_)
        return self._validate_X(X) if checked is None else checked

    def predict(self, X):
        """Component labels of the samples in X (a tensor on X's device for tensor X)."""
        self._check_is_fitted()
        return self._labels(self._validate_input(X))

    def predict_proba(self, X):
        """Posterior probability of each component for each sample, (n_samples, n_components)."""
        self._check_is_fitted()
        X = self._validate_input(X)
        lr = self._log_prob(X, "log_resp")
        return lr.exp() if is_tensor(lr) else np.exp(lr)  # (np.exp keeps a dask array lazy)

    def score_samples(self, X):
        """Log-likelihood of each sample under the model."""
        self._check_is_fitted()
        return self._log_prob(self._validate_input(X), "sample")

    def score(self, X, y=None, sample_weight=None):
        """Mean (weighted) log-likelihood of X under the model."""
        self._check_is_fitted()
        X = self._validate_input(X)
        ll = to_numpy(self._log_prob(X, "sample")).astype(np.float64)
        if is_dask_array(ll):
            if sample_weight is None:
                return float(ll.mean().compute())
            if is_dask_array(sample_weight):
                sw = sample_weight.astype(np.float64)
            else:
                sw = np.asarray(sample_weight, np.float64)
            return float(((ll * sw).sum() / sw.sum()).compute())
        sw = check_sample_weight(to_numpy(sample_weight), X.shape[0], np.float64)
        return float(ll.mean() if sw is None else np.dot(sw, ll) / sw.sum())

    def sample(self, n_samples=1):
        """Draw samples from the fitted model (scikit-learn's algorithm and random stream).

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,), the component of each sample
        """
        self._check_is_fitted()
        if not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(
                "Invalid value for 'n_samples': %s . The sampling requires at least one sample."
                % n_samples
            )
        mix = self._mixture()
        return scoring.sample(mix, self.covariances_, n_samples, check_random_state(self.random_state))

    # -------------------------------------------------------------- information criteria

    def _n_parameters(self) -> int:
        _, n_features = self.means_.shape
        K = self.n_components
        cov_params = {
            "full": K * n_features * (n_features + 1) / 2.0,
            "diag": K * n_features,
            "tied": n_features * (n_features + 1) / 2.0,
            "spherical": K,
        }[self.covariance_type]
        return int(cov_params + n_features * K + K - 1)

    def _n_effective(self, X, sample_weight) -> float:
        n_rows = X.shape[0] if is_tensor(X) else np.asarray(X).shape[0]
        if sample_weight is None:
            return float(n_rows)
        return float(check_sample_weight(to_numpy(sample_weight), n_rows, np.float64).sum())

    def bic(self, X, sample_weight=None):
        """Bayesian information criterion (lower is better); weights count as repetitions."""
        n = self._n_effective(X, sample_weight)
        return -2 * self.score(X, sample_weight=sample_weight) * n + self._n_parameters() * math.log(n)

    def aic(self, X, sample_weight=None):
        """Akaike information criterion (lower is better); weights count as repetitions."""
        n = self._n_effective(X, sample_weight)
        return -2 * self.score(X, sample_weight=sample_weight) * n + 2 * self._n_parameters()

    # ---------------------------------------------------------------------- persistence

    def save(self, path):
        """Write the fitted model to ``path`` (.npz arrays + JSON metadata; no pickle).

        Load it back with :func:`gmmfast.load`.
        """
        self._check_is_fitted()
        save_model(
            FittedModel(
                params=self.get_params(deep=False),
                **{name: getattr(self, attr) for name, attr in _SAVED},
                feature_names_in=getattr(self, "feature_names_in_", None),
                reg_covar_used=getattr(self, "reg_covar_", None),
                n_reseeds=getattr(self, "n_reseeds_", 0),
                n_batch_iter=getattr(self, "n_batch_iter_", None),
            ),
            path,
        )

    @classmethod
    def _from_fitted_model(cls, m: FittedModel) -> "GaussianMixture":
        model = cls(**m.params)
        for name, attr in _SAVED + (("precisions", "precisions_"), ("n_reseeds", "n_reseeds_")):
            setattr(model, attr, getattr(m, name))
        if m.feature_names_in is not None:
            model.feature_names_in_ = np.asarray(m.feature_names_in, dtype=object)
        model.lower_bounds_ = list(m.lower_bounds)
        model.reg_covar_ = m.reg_covar_used
        if m.n_batch_iter is not None:
            model.n_batch_iter_ = m.n_batch_iter
        return model

    # ------------------------------------------------------------------------- helpers

    def _fitted_params(self) -> MixtureParams:
        return MixtureParams(
            self.covariance_type,
            *(
                to_numpy(a).astype(np.float64)
                for a in (self.weights_, self.means_, self.covariances_, self.precisions_cholesky_)
            ),
        )

    def _set_attributes(self, attrs: dict):
        """Sets weights_, means_, covariances_, precisions_cholesky_ (NumPy arrays or
        tensors, in the data's dtype) and precisions_ in the same kind of array."""
        for name, value in attrs.items():
            setattr(self, name, value)
        # from the stored (dtype-rounded) factor, in float64: gmmfast.load recomputes
        # precisions_ the same way and gets the same numbers
        U = to_numpy(self.precisions_cholesky_)
        precisions = precisions_from_cholesky(U.astype(np.float64), self.covariance_type).astype(U.dtype)
        self.precisions_ = as_tensor(precisions, self.means_.device) if is_tensor(self.means_) else precisions

    # progress: the EM driver reports to a monitor, which calls these hooks

    def _monitor(self) -> driver.Monitor:
        return EstimatorMonitor(self)

    def _on_iteration(self, n_iter, lower_bound, change):
        self._verbose_iter_end(n_iter, change)

    # scikit-learn's verbose output, word for word (_verbose.py)
    def _verbose_state(self) -> VerboseOutput:
        if "_verbose_output" not in self.__dict__:
            self._verbose_output = VerboseOutput()
        return self._verbose_output

    def _verbose_init_begin(self, n_init):
        self._verbose_state().init_begin(self.verbose, n_init)

    def _verbose_iter_end(self, n_iter, diff_ll):
        self._verbose_state().iter_end(self.verbose, self.verbose_interval, n_iter, diff_ll)

    def _verbose_init_end(self, lb, converged):
        self._verbose_state().init_end(self.verbose, lb, converged)


def load(path) -> GaussianMixture:
    """A fitted estimator from a model file written by :meth:`GaussianMixture.save`.

    The file is read and checked by :func:`gmmfast.io.read_model`: FileNotFoundError
    when ``path`` does not exist, :class:`gmmfast.ModelFileError` (a ValueError) saying
    what is wrong with anything that is not a valid model file.
    """
    return GaussianMixture._from_fitted_model(read_model(path))
