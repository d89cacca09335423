"""gmmfast.BayesianGaussianMixture: scikit-learn's variational Bayesian Gaussian mixture
on gmmfast's native kernels.

Same constructor, methods, fitted attributes and semantics as
``sklearn.mixture.BayesianGaussianMixture`` (1.9), plus what gmmfast's GaussianMixture
offers beyond scikit-learn: ``sample_weight`` (exact weighted variational updates:
integer weights give the fit of repeated rows), memory-mapped and Dask arrays,
``fit_chunks``, torch tensors (CPU or CUDA), ``n_threads``, checkpoints, and
``save`` / :func:`gmmfast.load`.

The estimator is the shared scikit-learn shell (:class:`gmmfast._estimator.MixtureEstimator`)
with its own parameters; the fit is the one EM driver (:mod:`gmmfast._driver`) with the
variational model of :mod:`gmmfast._variational` instead of maximum likelihood: each
iteration is one fused pass of the em_stats kernel over the data and a small host
M-step. See docs/architecture.md.
"""

from __future__ import annotations

import numpy as np

from . import _scoring as scoring
from ._estimator import MixtureEstimator
from ._settings import EMSettings
from ._validation import as_tensor, to_numpy
from ._variational import (
    Priors,
    VariationalModel,
    VariationalParams,
    check_prior_params,
    data_moments,
    posterior_log_weights,
)

__all__ = ["BayesianGaussianMixture", "EFFECTIVE_WEIGHT"]

#: a component counts as effective (used by the data) when its weight is above this;
#: :attr:`BayesianGaussianMixture.n_effective_components_` and
#: :func:`gmmfast.select_model` report the count
EFFECTIVE_WEIGHT = 1e-2

# the parameters of the driver's settings (the rest are the priors)
_SETTINGS = ("n_components", "covariance_type", "tol", "reg_covar", "max_iter", "n_init", "init_params",
             "random_state", "warm_start", "verbose", "verbose_interval", "n_threads", "checkpoint",
             "checkpoint_every")


class BayesianGaussianMixture(MixtureEstimator):
    """Variational Bayesian estimation of a Gaussian mixture, on gmmfast's native kernels.

    A drop-in replacement for :class:`sklearn.mixture.BayesianGaussianMixture`: the
    parameters, methods, fitted attributes and results are scikit-learn's (see its
    documentation); only the extras are described here. With a small
    ``weight_concentration_prior`` the posterior switches surplus components off (their
    weights go to ~0): ``n_effective_components_`` counts those with weight above
    :data:`EFFECTIVE_WEIGHT`.

    Parameters
    ----------
    n_components : int, default=1
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
    tol : float, default=1e-3
        Convergence threshold on the change of the lower bound (a total over the
        samples, as in scikit-learn).
    reg_covar : float, default=1e-6
    max_iter : int, default=100
    n_init : int, default=1
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}, default='kmeans'
        gmmfast's k-means draws scikit-learn's random numbers, so the same
        random_state gives the same initial responsibilities.
    weight_concentration_prior_type : {'dirichlet_process', 'dirichlet_distribution'}, default='dirichlet_process'
    weight_concentration_prior : float > 0 or None, default=None (1 / n_components)
    mean_precision_prior : float > 0 or None, default=None (1)
    mean_prior : array-like of shape (n_features,), default=None (the mean of X)
    degrees_of_freedom_prior : float > n_features - 1 or None, default=None (n_features)
    covariance_prior : float or array-like, default=None (the covariance of X)
        (n_features, n_features) for 'full' and 'tied', (n_features,) for 'diag', a
        float for 'spherical'. With sample weights the defaults are the weighted mean
        and the covariance with frequency weights (divided by Σ weights − 1).
    random_state : int, RandomState instance or None, default=None
    warm_start : bool, default=False
    verbose : int, default=0
    verbose_interval : int, default=10
    n_threads : int, default=None
        Threads of the OpenMP kernels (default: all).
    checkpoint : str or path-like, default=None
        As for :class:`gmmfast.GaussianMixture`: the fit's state every
        ``checkpoint_every`` iterations; a fit finding a checkpoint of itself resumes.
    checkpoint_every : int >= 1, default=10

    Attributes
    ----------
    weights_, means_, covariances_, precisions_, precisions_cholesky_ : ndarray (float64)
    weight_concentration_ : tuple of two arrays ('dirichlet_process') or ndarray
    mean_precision_, degrees_of_freedom_ : ndarray (a float for degrees_of_freedom_ with 'tied')
    weight_concentration_prior_, mean_precision_prior_, mean_prior_,
    degrees_of_freedom_prior_, covariance_prior_ : the priors in effect
    converged_ : bool
    n_iter_ : int
    lower_bound_ : float
        scikit-learn's lower bound on the evidence (a total over the samples).
    lower_bounds_ : list of float
    n_features_in_, feature_names_in_
    n_effective_components_ : int
        Components with weight above :data:`EFFECTIVE_WEIGHT`.

    Notes
    -----
    The fitted parameters are float64 for float32 data too, as scikit-learn's are; the
    passes over float32 data run in float32 (statistics accumulated in float64). For a
    torch tensor the fitted arrays are float64 tensors on its device, and the
    statistics come to the host once per iteration for the variational M-step.
    """

    def __init__(
        self,
        *,
        n_components=1,
        covariance_type="full",
        tol=1e-3,
        reg_covar=1e-6,
        max_iter=100,
        n_init=1,
        init_params="kmeans",
        weight_concentration_prior_type="dirichlet_process",
        weight_concentration_prior=None,
        mean_precision_prior=None,
        mean_prior=None,
        degrees_of_freedom_prior=None,
        covariance_prior=None,
        random_state=None,
        warm_start=False,
        verbose=0,
        verbose_interval=10,
        n_threads=None,
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
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.n_threads = n_threads
        self.checkpoint = checkpoint
        self.checkpoint_every = checkpoint_every

    # ------------------------------------------------------------------ the shell's hooks

    def _check_params(self) -> EMSettings:
        """scikit-learn's parameter constraints (InvalidParameterError with its text);
        the data-dependent checks of the priors run when the fit resolves them."""
        params = self.get_params(deep=False)
        settings = EMSettings.from_params({k: params[k] for k in _SETTINGS}, owner=type(self).__name__)
        check_prior_params(params, type(self).__name__)
        return settings

    def _model(self, source, settings):
        params = self.get_params(deep=False)
        t, K = settings.covariance_type, settings.n_components

        def priors():
            return Priors.resolve(params, t, K, source.n_features, lambda: data_moments(source, settings, t))

        return VariationalModel(priors, t, K, source.dtype)

    def _fitted_attributes(self, source, params: VariationalParams, model=None) -> dict:
        pr = model.priors  # the priors in effect become attributes too
        device = None if isinstance(source.device, str) else source.device

        def out(a):
            a = np.asarray(a, dtype=np.float64)
            return a if device is None else as_tensor(a, device)

        wc = params.weight_concentration
        attrs = {
            name: out(getattr(params, field))
            for name, field in (("weights_", "weights"), ("means_", "means"), ("covariances_", "covariances"),
                                ("precisions_cholesky_", "precisions_cholesky"), ("mean_precision_", "mean_precision"))
        }
        dof = np.asarray(params.degrees_of_freedom, dtype=np.float64)
        attrs.update(
            weight_concentration_=(out(wc[0]), out(wc[1])) if wc.ndim == 2 else out(wc),
            degrees_of_freedom_=np.float64(dof) if dof.ndim == 0 else out(dof),
            weight_concentration_prior_=pr.weight_concentration,
            mean_precision_prior_=pr.mean_precision,
            mean_prior_=pr.mean,
            degrees_of_freedom_prior_=pr.degrees_of_freedom,
            covariance_prior_=pr.covariance,
        )
        return attrs

    def _set_attributes(self, attrs: dict):
        super()._set_attributes(attrs)
        self.n_effective_components_ = int(np.sum(to_numpy(self.weights_) > EFFECTIVE_WEIGHT))

    def _model_file_extras(self) -> dict:
        wc = self.weight_concentration_
        return dict(
            kind="BayesianGaussianMixture",
            bayes={
                "weight_concentration": np.stack([to_numpy(w) for w in wc]) if isinstance(wc, tuple) else wc,
                "mean_precision": self.mean_precision_,
                "degrees_of_freedom": self.degrees_of_freedom_,
                "mean_prior": self.mean_prior_,
                "covariance_prior": self.covariance_prior_,
                "weight_concentration_prior_": self.weight_concentration_prior_,
                "mean_precision_prior_": self.mean_precision_prior_,
                "degrees_of_freedom_prior_": self.degrees_of_freedom_prior_,
                "mean_prior_given": self.mean_prior is not None,
                "covariance_prior_given": self.covariance_prior is not None,
            },
        )

    def _load_extras(self, m) -> None:
        b = m.bayes
        wc = b["weight_concentration"]
        self.weight_concentration_ = (wc[0].copy(), wc[1].copy()) if wc.ndim == 2 else wc
        self.mean_precision_ = b["mean_precision"]
        dof = b["degrees_of_freedom"]
        self.degrees_of_freedom_ = np.float64(dof) if dof.ndim == 0 else dof
        self.mean_prior_ = b["mean_prior"]
        cov = b["covariance_prior"]
        self.covariance_prior_ = float(cov) if cov.ndim == 0 else cov
        for name in ("weight_concentration_prior_", "mean_precision_prior_", "degrees_of_freedom_prior_"):
            setattr(self, name, b[name])
        # array-valued priors that were given are the priors in effect
        if b["mean_prior_given"]:
            self.mean_prior = self.mean_prior_.copy()
        if b["covariance_prior_given"]:
            self.covariance_prior = self.covariance_prior_ if cov.ndim == 0 else self.covariance_prior_.copy()
        self.n_effective_components_ = int(np.sum(to_numpy(self.weights_) > EFFECTIVE_WEIGHT))

    def _fitted_params(self) -> VariationalParams:
        """The fitted posterior (host, float64): a warm start continues from it."""

        def host(a):
            return np.asarray(to_numpy(a), dtype=np.float64)

        wc = self.weight_concentration_
        wc = np.stack([host(wc[0]), host(wc[1])]) if isinstance(wc, tuple) else host(wc)
        return VariationalParams(
            self.covariance_type,
            *(host(a) for a in (self.weights_, self.means_, self.covariances_, self.precisions_cholesky_)),
            weight_concentration=wc,
            mean_precision=host(self.mean_precision_),
            degrees_of_freedom=host(self.degrees_of_freedom_),
        )

    def _mixture(self) -> scoring.Mixture:
        # scikit-learn scores with the expected log-weights and log-density constants
        log_weights = posterior_log_weights(self._fitted_params(), self.weight_concentration_prior_type)
        return scoring.Mixture(
            self.weights_, self.means_, self.precisions_cholesky_, self.covariance_type, self.n_threads,
            log_weights=log_weights,
        )
