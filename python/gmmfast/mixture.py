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

This module holds GaussianMixture's parameters, online EM and information criteria; the
scikit-learn shell it shares with the other mixture estimators (validation, choosing the
data source, fitted attributes, scoring, save, verbose output) is
:class:`gmmfast._estimator.MixtureEstimator`. Each fit picks a data source
(:mod:`gmmfast.sources`) and hands it to the EM driver (:mod:`gmmfast._driver`); see
docs/architecture.md.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np

from . import _driver as driver
from ._compat import ConvergenceWarning
from ._estimator import MixtureEstimator
from ._settings import EMSettings, check_int
from ._validation import check_random_state, check_sample_weight, is_tensor, to_numpy
from .io import read_model
from .sources.array import ArraySource
from .sources.chunks import minibatches

__all__ = ["GaussianMixture", "load"]

# ------------------------------------------------------------------------------- estimator


class GaussianMixture(MixtureEstimator):
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
    missing : {'error', 'em'}, default='error'
        What a NaN in X means. 'error': scikit-learn's ValueError. 'em': a missing
        entry (missing at random), fitted by exact EM over the observed-data likelihood
        (Ghahramani & Jordan 1994): each row's E-step uses its observed entries (the
        marginal of each component), the M-step the conditional expectations of the
        missing entries and their conditional covariances. Rows are grouped by
        missingness pattern (see docs/missing.md for the cost). Works with ``fit`` on
        arrays in memory or memory-mapped, ``fit_chunks``, ``partial_fit`` and
        ``fit_minibatch``, with sample_weight and every covariance_type;
        ``score_samples``, ``score``, ``predict`` and ``predict_proba`` of rows with NaN
        use the marginal over their observed entries, and :meth:`impute` fills NaN with
        their conditional expectations. A row with every entry missing, a column
        missing in every row, and an infinity are errors. Without NaN, the fit is exactly
        that of missing='error'. NumPy data only (Dask arrays and tensors keep the NaN
        error).

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
        missing="error",
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
        self.missing = missing

    # ------------------------------------------------------------------ parameter checks

    def _check_params(self) -> EMSettings:
        """scikit-learn's parameter constraints (InvalidParameterError with its text),
        plus gmmfast's recovery, n_threads and online-EM parameters; returns the
        settings of the EM driver."""
        return EMSettings.from_params(self.get_params(deep=False))

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
            batch = self._rows_source(X, self._fit_weights(X, sample_weight), names)
            rs = check_random_state(self.random_state) if random_state is None else random_state
            online = driver.OnlineEM.from_data(settings, batch, rs, self._checked_inits(X.shape[1]))
        return online, batch, features

    def _online_batch(self, X, sample_weight, dtype, features=None) -> ArraySource:
        X = self._validate_X(X, features)
        if X.dtype != dtype:
            X = X.astype(dtype)
        return self._rows_source(X, check_sample_weight(to_numpy(sample_weight), X.shape[0], X.dtype))

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


def load(path):
    """A fitted estimator from a model file written by ``save`` of a
    :class:`GaussianMixture` or a :class:`gmmfast.BayesianGaussianMixture` (the class
    the file says).

    The file is read and checked by :func:`gmmfast.io.read_model`: FileNotFoundError
    when ``path`` does not exist, :class:`gmmfast.ModelFileError` (a ValueError) saying
    what is wrong with anything that is not a valid model file.
    """
    model = read_model(path)
    if model.kind == "BayesianGaussianMixture":
        from .bayesian import BayesianGaussianMixture

        return BayesianGaussianMixture._from_fitted_model(model)
    return GaussianMixture._from_fitted_model(model)
