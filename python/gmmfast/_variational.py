"""Variational inference of a Bayesian Gaussian mixture (scikit-learn's
BayesianGaussianMixture) as a model of the EM driver.

The variational E-step is the EM E-step with other per-component constants: the
expected log-density of component k is the Gaussian log-density with the fitted
``precisions_cholesky_`` plus ``−½·D·log ν_k + ½(log Λ̃_k − D/β_k)``, and the expected
log-weight is E[log π_k]. All of these are per-component constants, so they are passed
to the fused ``em_stats`` kernel as its log-weights (``MixtureParams.log_weights``):
one pass over X per iteration, nothing of size n_samples × n_components, whatever the
data source. The M-step (:func:`m_step`: the Dirichlet / stick-breaking, Gaussian and
Wishart updates, Bishop 2006 §10.2 with scikit-learn's normalisations) works on the
summed statistics N_k, x̄_k, S_k on the host (K·D² work): for a tensor on a GPU the
statistics come back to the host once per iteration.

The lower bound is scikit-learn's: a total over the rows (not a mean) without the
constant terms,
``−Σ r log r − Σ log B(Wishart) − log C(weights) − ½·D·Σ log β_k``. The entropy of the
responsibilities comes from the same statistics, with no second pass: with
``log r_nk = log N(x_n | μ_k, Λ_k) + w̃_k − log p_n`` (w̃ the E-step's log-weights),

    Σ_n r_nk log r_nk = Σ_k [N_k (c_k + w̃_k) − ½ tr(Λ_k S_k)] − Σ_n log p_n

with ``c_k = −½·D·log 2π + log det U_k`` the Gaussian's constant and S_k the scatter
about the E-step's means (what em_stats returns). With sample weights g_n every sum is
weighted, so integer weights are repeated rows.

The priors' data-dependent defaults (``mean_prior`` = the mean of X, ``covariance_prior``
= its covariance with ddof=1) come from one pass of em_stats with a single component
(:func:`data_moments`), so they too work on every data source; with sample weights they
are the weighted mean and the frequency-weighted covariance (divided by Σ g − 1).

No SciPy at run time: digamma, log-gamma and log-beta are here (:func:`digamma` is
checked against scipy.special in the tests).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

import numpy as np

from . import ops
from ._compat import InvalidParameterError
from ._settings import PARAM_DEFAULTS
from ._stats import recentre_stats
from ._types import EMStats, MixtureParams

__all__ = ["BAYES_PARAM_DEFAULTS", "VariationalParams", "Priors", "VariationalModel", "check_prior_params", "data_moments"]

PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")

#: the defaults of BayesianGaussianMixture's scalar parameters (its signature repeats
#: them; a test checks that the two agree). Model files read without a parameter get its
#: default. mean_prior and covariance_prior (array-like) are not here.
BAYES_PARAM_DEFAULTS = {
    **{k: PARAM_DEFAULTS[k] for k in ("n_components", "covariance_type", "tol", "reg_covar", "max_iter", "n_init",
                                      "init_params")},
    "weight_concentration_prior_type": "dirichlet_process",
    "weight_concentration_prior": None,
    "mean_precision_prior": None,
    "degrees_of_freedom_prior": None,
    **{k: PARAM_DEFAULTS[k] for k in ("random_state", "warm_start", "verbose", "verbose_interval", "n_threads")},
}
_LOG_2PI = math.log(2.0 * math.pi)

# --------------------------------------------------------------------- special functions


def digamma(x) -> np.ndarray:
    """ψ(x) for x > 0 (float64): the recurrence ψ(x) = ψ(x + 1) − 1/x up to x ≥ 10, then
    the asymptotic series to x⁻¹² (error below 1e-16 relative there)."""
    x = np.array(x, dtype=np.float64, copy=True)
    out = np.zeros_like(x)
    small = x < 10.0
    while np.any(small):
        out[small] -= 1.0 / x[small]
        x[small] += 1.0
        small = x < 10.0
    inv2 = 1.0 / (x * x)
    series = inv2 * (
        1.0 / 12 - inv2 * (1.0 / 120 - inv2 * (1.0 / 252 - inv2 * (1.0 / 240 - inv2 * (1.0 / 132 - inv2 * 691.0 / 32760))))
    )
    return out + np.log(x) - 0.5 / x - series


_lgamma = np.frompyfunc(math.lgamma, 1, 1)


def gammaln(x) -> np.ndarray:
    """log Γ(x) (float64), elementwise with math.lgamma."""
    return np.asarray(_lgamma(np.asarray(x, dtype=np.float64)), dtype=np.float64)


def betaln(a, b) -> np.ndarray:
    return gammaln(a) + gammaln(b) - gammaln(np.asarray(a, dtype=np.float64) + b)


# ------------------------------------------------------------------------- parameters


def _bad(name, what, value, owner):
    return InvalidParameterError(f"The {name!r} parameter of {owner} must be {what}. Got {value!r} instead.")


def _positive_or_none(value) -> bool:
    return value is None or (
        isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def check_prior_params(p: dict, owner: str = "BayesianGaussianMixture") -> None:
    """scikit-learn's constraints on the prior parameters (InvalidParameterError with
    its text); shapes and values that depend on the data are checked by
    :meth:`Priors.resolve`."""
    if p.get("weight_concentration_prior_type", PRIOR_TYPES[0]) not in PRIOR_TYPES:
        raise _bad(
            "weight_concentration_prior_type", "a str among {'dirichlet_distribution', 'dirichlet_process'}",
            p["weight_concentration_prior_type"], owner,
        )
    for name in ("weight_concentration_prior", "mean_precision_prior", "degrees_of_freedom_prior"):
        if not _positive_or_none(p.get(name)):
            raise _bad(name, "None or a float in the range (0.0, inf)", p[name], owner)
    mean_prior = p.get("mean_prior")
    if mean_prior is not None and not _is_array_like(mean_prior):
        raise _bad("mean_prior", "None or an array-like", mean_prior, owner)
    cov = p.get("covariance_prior")
    if not (_is_array_like(cov) or _positive_or_none(cov)):
        raise _bad("covariance_prior", "None, an array-like or a float in the range (0.0, inf)", cov, owner)


def _is_array_like(x) -> bool:
    return (hasattr(x, "__len__") or hasattr(x, "shape") or hasattr(x, "__array__")) and not np.isscalar(x) and not isinstance(x, str)


def _as_float_array(value, name) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"The parameter {name!r} must be an array of numbers ({exc})") from None
    if not np.all(np.isfinite(a)):
        raise ValueError(f"The parameter {name!r} contains NaN or infinity.")
    return a


def _check_shape(a, shape, name):
    # scikit-learn's text, naming the parameter
    if a.shape != shape:
        raise ValueError(f"The parameter {name!r} should have the shape of {shape}, but got {a.shape}")


@dataclass(frozen=True)
class Priors:
    """The resolved priors (scikit-learn's ``*_prior_`` attributes), float64."""

    weight_concentration_prior_type: str
    weight_concentration: float
    mean_precision: float
    mean: np.ndarray
    degrees_of_freedom: float
    covariance: object  # (D, D) full / tied, (D,) diag, float spherical

    @classmethod
    def resolve(cls, p: dict, covariance_type: str, n_components: int, n_features: int, moments) -> "Priors":
        """The priors of the estimator's parameters ``p`` for data of ``n_features``
        columns; ``moments()`` gives (mean, covariance in the covariance type's form) of
        the data, computed only when a default needs it. Raises scikit-learn's
        ValueError (naming the parameter) for a wrong shape, a non-finite value, a
        non-positive-definite covariance_prior or too few degrees of freedom."""
        D = n_features
        wcp = p.get("weight_concentration_prior")
        mpp = p.get("mean_precision_prior")
        dof = p.get("degrees_of_freedom_prior")
        if dof is None:
            dof = float(D)
        elif not dof > D - 1.0:
            raise ValueError(
                "The parameter 'degrees_of_freedom_prior' should be greater than %d, but got %.3f." % (D - 1, dof)
            )
        data = None
        if p.get("mean_prior") is None or p.get("covariance_prior") is None:
            data = moments()
        if p.get("mean_prior") is None:
            mean = data[0]
        else:
            mean = _as_float_array(p["mean_prior"], "mean_prior")
            _check_shape(mean, (D,), "mean_prior")
        cov = p.get("covariance_prior")
        t = covariance_type
        if cov is None:
            cov = data[1]
        elif t in ("full", "tied"):
            cov = _as_float_array(cov, "covariance_prior")
            _check_shape(cov, (D, D), f"{t} covariance_prior")
            if not (np.allclose(cov, cov.T) and np.all(np.linalg.eigvalsh(cov) > 0.0)):
                raise ValueError(
                    f"The parameter 'covariance_prior' ({t} covariance_type) should be symmetric, positive-definite"
                )
        elif t == "diag":
            cov = _as_float_array(cov, "covariance_prior")
            _check_shape(cov, (D,), f"{t} covariance_prior")
            if np.any(cov <= 0.0):
                raise ValueError("The parameter 'covariance_prior' (diag covariance_type) should be positive")
        else:
            if _is_array_like(cov):
                raise ValueError(
                    "The parameter 'covariance_prior' must be a float in the range (0.0, inf) for "
                    f"covariance_type='spherical', got an array of shape {np.shape(cov)}"
                )
            cov = float(cov)
        return cls(
            p.get("weight_concentration_prior_type") or PRIOR_TYPES[0],
            1.0 / n_components if wcp is None else float(wcp),
            1.0 if mpp is None else float(mpp),
            np.asarray(mean, dtype=np.float64),
            float(dof),
            cov,
        )


def data_moments(source, settings, covariance_type: str) -> tuple:
    """(mean, covariance) of all the rows of ``source`` (weighted; ddof=1 in units of
    weight, np.cov's frequency weights) in the covariance type's form, from one
    em_stats pass with a single component: full / tied (D, D), diag (D,), spherical
    the mean variance."""
    D = source.n_features
    form = "full" if covariance_type in ("full", "tied") else "diag"
    centre = np.asarray(source.column_means(), dtype=np.float64)[None]
    U = np.eye(D)[None] if form == "full" else np.ones((1, D))
    one = MixtureParams(form, np.ones(1), centre, None, U, log_weights=np.zeros(1))
    st = source.host_stats(
        source.em_stats(source.to_device(one), dataclasses.replace(settings, n_components=1, covariance_type=form))
    )
    W = float(st.nk[0])
    if not W > 1.0:
        raise ValueError(
            "The sample weights sum to %.6g: the default mean_prior and covariance_prior (the data's covariance, "
            "with frequency weights) need a weight sum above 1; give covariance_prior, or scale sample_weight." % W
        )
    mean = st.centres[0] + st.s1[0] / W
    scatter = recentre_stats(st, mean[None]).s2[0]
    cov = scatter / (W - 1.0)
    if covariance_type == "spherical":
        cov = float(np.mean(cov))
    return mean, cov


@dataclass
class VariationalParams(MixtureParams):
    """The variational posterior (scikit-learn's fitted attributes, float64, host): the
    mixture (weights, means, covariances, precisions_cholesky, log_det_cholesky; and
    ``log_weights``, the E-step's per-component constants) plus
    ``weight_concentration`` ((2, K): the Beta parameters of the stick-breaking
    process; (K,): the Dirichlet's), ``mean_precision`` (K,) and
    ``degrees_of_freedom`` ((K,), or () for tied)."""

    weight_concentration: np.ndarray = None
    mean_precision: np.ndarray = None
    degrees_of_freedom: np.ndarray = None

    #: the arrays that describe the posterior (saved in checkpoints and model files)
    ARRAYS = ("weights", "means", "covariances", "precisions_cholesky", "weight_concentration",
              "mean_precision", "degrees_of_freedom")


# ------------------------------------------------------------------------- the updates


def expected_log_weights(wc: np.ndarray, prior_type: str) -> np.ndarray:
    """E[log π_k] under the posterior of the weights."""
    if prior_type == "dirichlet_process":
        a, b = wc
        dsum = digamma(a + b)
        return digamma(a) - dsum + np.concatenate(([0.0], np.cumsum(digamma(b) - dsum)[:-1]))
    return digamma(wc) - digamma(np.sum(wc))


def _log_lambda(dof, D) -> np.ndarray:
    """log Λ̃_k − D log ν_k... in scikit-learn's form: D log 2 + Σ_i ψ((ν − i)/2)."""
    dof = np.asarray(dof, dtype=np.float64)
    return D * math.log(2.0) + np.sum(digamma(0.5 * (dof[..., None] - np.arange(D))), axis=-1)


def _log_det_cholesky(U, t, D) -> np.ndarray:
    if t == "full":
        return np.sum(np.log(np.diagonal(U, axis1=1, axis2=2)), axis=1)
    if t == "tied":
        return np.asarray(np.sum(np.log(np.diag(U))))
    if t == "diag":
        return np.sum(np.log(U), axis=1)
    return D * np.log(U)


def _log_wishart_norm(dof, log_det_chol, D):
    return -(dof * log_det_chol + dof * D * 0.5 * math.log(2.0)
             + np.sum(gammaln(0.5 * (np.asarray(dof)[..., None] - np.arange(D))), axis=-1))


def _trace_precision_scatter(U, s2, t) -> np.ndarray:
    """tr(Λ_k S_k) per component (a 0-d array for tied: Σ_k S_k and the shared Λ)."""
    if t == "full":
        return np.einsum("kij,kil,klj->k", U, s2, U)  # tr(Uᵀ S U)
    if t == "tied":
        return np.asarray(np.einsum("ij,il,lj->", U, s2, U))
    if t == "diag":
        return np.sum(U * U * s2, axis=1)
    return U * U * s2


class VariationalModel:
    """The driver's model for the Bayesian mixture (see :class:`gmmfast._driver.MaximumLikelihood`
    for the protocol): parameters are a :class:`VariationalParams` on the host, the
    step is em_stats with the expected log-densities then the variational M-step, and the
    lower bound is scikit-learn's total."""

    op = "BayesianGaussianMixture.fit"
    params_type = VariationalParams

    def __init__(self, priors, covariance_type: str, n_components: int, dtype):
        # ``priors``: the Priors, or a function giving them (called once, when the fit
        # first needs them: after the driver's memory check, since data-dependent
        # defaults take a pass over the data)
        self._priors = priors
        self.covariance_type = covariance_type
        self.n_components = n_components
        self.dtype = np.dtype(dtype)

    @property
    def priors(self) -> Priors:
        if callable(self._priors):
            self._priors = self._priors()
        return self._priors

    # -------------------------------------------------------------- driver protocol

    def initial_params(self, settings, source, random_state, inits, state) -> VariationalParams:
        stats = source.initial_stats(settings, random_state)
        # the initial responsibilities are in the data's dtype (scikit-learn's 10·eps)
        return self.m_step(stats, settings.reg_covar, 10.0 * float(np.finfo(self.dtype).eps))

    def to_device(self, source, params):
        return params  # the posterior stays on the host; step() sends the E-step's mixture

    def to_host(self, source, params):
        return params

    def step(self, settings, batch, params: VariationalParams, state, schedule):
        e = self.e_step_mixture(params)
        stats = batch.host_stats(batch.em_stats(batch.to_device(e), settings))
        if not math.isfinite(stats.log_likelihood):
            raise ValueError(
                "The log-likelihood of the data is not finite under the current mixture "
                f"({self.dtype} arithmetic overflowed): scale the data, or pass float64 data."
            )
        # after the first M-step scikit-learn's responsibilities are float64 (its
        # parameters are), whatever the data's dtype
        new = self.m_step(stats, settings.reg_covar, 10.0 * float(np.finfo(np.float64).eps))
        return new, self.lower_bound_of(stats, e, new), stats.weight_sum, False

    def lower_bound(self, contribution: float, weight: float) -> float:
        return contribution  # a total, as scikit-learn's

    def fingerprint(self) -> dict:
        """The resolved priors, exactly: a checkpoint of a fit with other priors is
        another fit's."""
        pr = self.priors

        def exact(v):
            return [float(x).hex() for x in np.ravel(v)]

        return {
            "prior_type": pr.weight_concentration_prior_type,
            **{name: exact(getattr(pr, name)) for name in (
                "weight_concentration", "mean_precision", "mean", "degrees_of_freedom", "covariance")},
        }

    # ------------------------------------------------------------------- the updates

    def e_step_mixture(self, params: VariationalParams) -> MixtureParams:
        """The E-step's mixture, rounded to the data's dtype as the kernels see it
        (float64 arrays): means, precision Cholesky factors and the per-component
        log-weights E[log π_k] − ½·D·log ν_k + ½(log Λ̃_k − D/β_k)."""
        lw = posterior_log_weights(params, self.priors.weight_concentration_prior_type)
        dt = self.dtype

        def rounded(a):
            return np.asarray(a, dtype=np.float64).astype(dt).astype(np.float64)

        return MixtureParams(
            self.covariance_type, params.weights, rounded(params.means), None,
            rounded(params.precisions_cholesky), log_weights=rounded(lw),
        )

    def m_step(self, stats: EMStats, reg_covar: float, nk_eps: float) -> VariationalParams:
        """The variational M-step from summed statistics (scikit-learn's
        ``_estimate_weights``, ``_estimate_means``, ``_estimate_wishart_*`` on N_k, x̄_k
        and S_k + reg_covar·I); raises scikit-learn's error when a posterior covariance
        is not positive definite."""
        t, pr, K = self.covariance_type, self.priors, self.n_components
        D = stats.s1.shape[1]
        nk = stats.nk + nk_eps
        xk = (stats.s1 + stats.nk[:, None] * stats.centres) / nk[:, None]
        scatter = recentre_stats(stats, xk).s2  # Σ r (x − x̄_k)(x − x̄_k)ᵀ, exactly
        # weights: the Beta parameters of the sticks, or the Dirichlet's
        if pr.weight_concentration_prior_type == "dirichlet_process":
            wc = np.stack([1.0 + nk, pr.weight_concentration + np.concatenate((np.cumsum(nk[::-1])[-2::-1], [0.0]))])
            total = wc[0] + wc[1]
            weights = wc[0] / total * np.concatenate(([1.0], np.cumprod(wc[1] / total)[:-1]))
        else:
            wc = pr.weight_concentration + nk
            weights = wc.copy()
        weights = weights / np.sum(weights)
        # means
        beta = pr.mean_precision + nk
        means = (pr.mean_precision * pr.mean + nk[:, None] * xk) / beta[:, None]
        # Wishart: degrees of freedom and the normalised scale (the covariances)
        diff = xk - pr.mean
        shrink = pr.mean_precision / beta  # β0 / β_k
        if t == "full":
            sk = scatter / nk[:, None, None] + reg_covar * np.eye(D)
            dof = pr.degrees_of_freedom + nk
            cov = (pr.covariance + nk[:, None, None] * sk
                   + (nk * shrink)[:, None, None] * diff[:, :, None] * diff[:, None, :]) / dof[:, None, None]
        elif t == "tied":
            sk = scatter / np.sum(nk) + reg_covar * np.eye(D)
            dof = np.asarray(pr.degrees_of_freedom + np.sum(nk) / K)
            cov = (pr.covariance + sk * np.sum(nk) / K
                   + pr.mean_precision / K * ((nk / beta) * diff.T) @ diff) / dof
        elif t == "diag":
            sk = scatter / nk[:, None] + reg_covar
            dof = pr.degrees_of_freedom + nk
            cov = (pr.covariance + nk[:, None] * (sk + shrink[:, None] * diff * diff)) / dof[:, None]
        else:
            sk = scatter / nk / D + reg_covar
            dof = pr.degrees_of_freedom + nk
            cov = (pr.covariance + nk * (sk + shrink * np.mean(diff * diff, axis=1))) / dof
        prec_chol, log_det = ops.precision_cholesky(cov, t, n_features=D)
        return VariationalParams(
            t, weights, means, cov, prec_chol, log_det,
            weight_concentration=wc, mean_precision=beta, degrees_of_freedom=dof,
        )

    def lower_bound_of(self, stats: EMStats, e: MixtureParams, new: VariationalParams) -> float:
        """scikit-learn's lower bound after the M-step: the entropy of the E-step's
        responsibilities (from ``stats``, see the module docstring) and the
        normalisers of the new posterior. The entropy uses the E-step's mixture as the
        kernels saw it (rounded to the data's dtype), so that only the per-sample
        rounding of the float32 passes separates it from the exact value."""
        t, pr, K = self.covariance_type, self.priors, self.n_components
        D = stats.s1.shape[1]
        U = e.precisions_cholesky
        # the kernels' per-component constant, rounded to the data's dtype as they round
        # it: in float32 a constant's rounding would otherwise bias the sum by N_k·δ_k
        const = (e.log_weights + _log_det_cholesky(U, t, D) - 0.5 * D * _LOG_2PI).astype(self.dtype)
        trace = _trace_precision_scatter(U, stats.s2, t)
        # Σ_n Σ_k r_nk log r_nk from the statistics
        resp_log_resp = float(np.sum(stats.nk * const) - 0.5 * np.sum(trace) - stats.log_likelihood)
        dof = new.degrees_of_freedom
        log_det = new.log_det_cholesky - 0.5 * D * np.log(dof)
        wishart = _log_wishart_norm(dof, log_det, D)
        log_wishart = K * float(wishart) if t == "tied" else float(np.sum(wishart))
        wc = new.weight_concentration
        if pr.weight_concentration_prior_type == "dirichlet_process":
            log_norm_weight = -float(np.sum(betaln(wc[0], wc[1])))
        else:
            log_norm_weight = float(gammaln(np.sum(wc)) - np.sum(gammaln(wc)))
        return (-resp_log_resp - log_wishart - log_norm_weight
                - 0.5 * D * float(np.sum(np.log(new.mean_precision))))


def posterior_log_weights(params: VariationalParams, prior_type: str) -> np.ndarray:
    """The per-component terms added to the Gaussian log-densities of a posterior, in
    the E-step and in scikit-learn's predict / score_samples (float64):
    E[log π_k] − ½·D·log ν_k + ½(log Λ̃_k − D/β_k)."""
    D = params.means.shape[1]
    return (
        expected_log_weights(params.weight_concentration, prior_type)
        - 0.5 * D * np.log(params.degrees_of_freedom)
        + 0.5 * (_log_lambda(params.degrees_of_freedom, D) - D / params.mean_precision)
    )
