"""The scikit-learn shell that gmmfast's mixture estimators share.

:class:`MixtureEstimator` is everything of a mixture estimator that does not depend on
what is estimated: input validation with scikit-learn's messages, choosing the data
source for what ``fit`` is given (an array, a memory-mapped or Dask array, a tensor,
torch.distributed ranks, chunks), calling the EM driver, setting the fitted attributes
together at the end of a fit, prediction and scoring of the fitted mixture
(:mod:`gmmfast._scoring`), save / load through :mod:`gmmfast.io`, and the verbose output
(:mod:`gmmfast._verbose`) through the driver's monitor.

A subclass gives its constructor parameters and ``_check_params`` (the driver's
settings); :class:`gmmfast.GaussianMixture` adds online EM and the information criteria.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from . import _driver as driver
from . import _scoring as scoring
from ._checkpoint import Checkpoint
from ._compat import BaseEstimator, DensityMixin, NotFittedError
from ._driver import WarmStart
from ._params import precisions_from_cholesky
from ._settings import EMSettings, check_int
from ._types import MixtureParams
from ._missing import has_missing
from ._validation import (
    as_2d_float,
    as_tensor,
    check_finite,
    check_no_infinity,
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
from .io import FittedModel, save_model
from .sources.array import ArraySource
from .sources.chunks import Chunks, ChunkedSource, row_chunks
from .sources.missing import MissingArraySource, MissingChunkedSource

__all__ = ["MixtureEstimator"]

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


class MixtureEstimator(DensityMixin, BaseEstimator):
    """The shared shell of gmmfast's mixture estimators (see the module docstring).
    Not an estimator by itself: a subclass defines ``__init__`` and ``_check_params``."""

    def _check_params(self) -> EMSettings:
        """The EM driver's settings from the constructor parameters, with
        scikit-learn's errors for invalid ones."""
        raise NotImplementedError

    def _reset_online(self):
        """A batch fit ends online EM (a subclass with online EM drops its state)."""

    def _missing_em(self) -> bool:
        """Whether NaN entries are missing values fitted by EM (``missing='em'``, a
        parameter of the subclasses that support it) rather than an error."""
        return getattr(self, "missing", "error") == "em"

    def _model(self, source, settings):
        """What the EM driver estimates (None: maximum likelihood, GaussianMixture's;
        the Bayesian mixture gives its variational model)."""
        return None

    def _fitted_attributes(self, source, params, model=None) -> dict:
        """The fitted arrays of the driver's result (set together by _set_attributes);
        ``model`` is what :meth:`_model` gave the driver."""
        return source.attributes(params)

    # ------------------------------------------------------------------ input checks

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
                f"X does not have valid feature names, but {type(self).__name__} was fitted with feature names",
                UserWarning,
            )
        elif fitted is None and names is not None:
            warnings.warn(
                f"X has feature names, but {type(self).__name__} was fitted without feature names", UserWarning
            )
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
                "%s." % (arr.shape[0], arr.shape, min_samples, type(self).__name__)
            )
        if arr.shape[1] < 1:
            raise ValueError(
                "Found array with %d feature(s) (shape=%s) while a minimum of 1 is required by "
                "%s." % (arr.shape[1], arr.shape, type(self).__name__)
            )
        if self._missing_em():
            check_no_infinity(arr)  # NaN are missing entries (each row, column: checked later)
        else:
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

    def _given_inits(self) -> tuple:
        """(weights_init, means_init, precisions_init) as given (None for an estimator
        without them)."""
        return tuple(getattr(self, name, None) for name in ("weights_init", "means_init", "precisions_init"))

    def _checked_inits(self, n_features):
        K, t = self.n_components, self.covariance_type
        if all(v is None for v in self._given_inits()):
            return None, None, None
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

            initialise = not (self._warm() or all(v is not None for v in self._given_inits()))
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
            source = self._rows_source(X, self._fit_weights(X, sample_weight), names)
        self._run_em(source, settings, names)
        return X

    def _array_source(self, X, sample_weight):
        """The data source of an in-memory fit (model selection overrides it to share
        one k-means between covariance types)."""
        return ArraySource(X, sample_weight)

    def _rows_source(self, X, sample_weight, names=None):
        """The source of validated rows in memory: with missing='em' and NaN in X, the
        missing-value source (rows grouped by pattern); otherwise ``_array_source``."""
        if self._missing_em() and has_missing(X):
            return MissingArraySource(X, sample_weight, feature_names=names)
        return self._array_source(X, sample_weight)

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
        kind = MissingChunkedSource if self._missing_em() else ChunkedSource
        return kind(chunks, settings.n_components, init_size, rs, settings.n_threads, chunks.name, settings)

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
        path = getattr(self, "checkpoint", None)
        checkpoint = None if path is None else Checkpoint(path, self.checkpoint_every)
        model = self._model(source, settings)
        result = driver.fit(
            settings, source, random_state, inits, warm_start=warm, monitor=self._monitor(), checkpoint=checkpoint,
            model=model,
        )
        # the fitted attributes, all at once: an interrupted or failed fit leaves the
        # estimator as it was
        self._reset_online()  # a new fit ends online EM
        self._set_features(source.n_features, names)
        self._set_attributes(self._fitted_attributes(source, result.params, model))
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

    # ----------------------------------------------------------------------- prediction

    def _mixture(self) -> scoring.Mixture:
        return scoring.Mixture(
            self.weights_, self.means_, self.precisions_cholesky_, self.covariance_type, self.n_threads,
            missing=self._missing_em(),
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

    def impute(self, X):
        """X with each missing entry (NaN) replaced by its conditional expectation under
        the fitted mixture, E[x_M | x_O] = Σ_k p(k | x_O) E[x_M | x_O, k] (needs
        missing='em'; NumPy input). Observed entries are returned as they are.

        Returns
        -------
        ndarray of shape (n_samples, n_features), in the promoted dtype of X and the model
        """
        self._check_is_fitted()
        if not self._missing_em():
            raise ValueError(f"impute needs missing='em'; this {type(self).__name__} has missing={self.missing!r}")
        return scoring.impute(self._mixture(), self._validate_X(X))

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
                **self._model_file_extras(),
            ),
            path,
        )

    def _model_file_extras(self) -> dict:
        """What a subclass adds to its model file (io.FittedModel's ``kind`` and its
        fields); read back by :meth:`_load_extras`."""
        return {}

    def _load_extras(self, m: FittedModel) -> None:
        """Sets what :meth:`_model_file_extras` saved, on a model being loaded."""

    @classmethod
    def _from_fitted_model(cls, m: FittedModel) -> "MixtureEstimator":
        model = cls(**m.params)
        for name, attr in _SAVED + (("precisions", "precisions_"), ("n_reseeds", "n_reseeds_")):
            setattr(model, attr, getattr(m, name))
        if m.feature_names_in is not None:
            model.feature_names_in_ = np.asarray(m.feature_names_in, dtype=object)
        model.lower_bounds_ = list(m.lower_bounds)
        model.reg_covar_ = m.reg_covar_used
        if m.n_batch_iter is not None:
            model.n_batch_iter_ = m.n_batch_iter
        model._load_extras(m)
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
