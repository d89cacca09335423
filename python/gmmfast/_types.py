"""Plain data containers shared by the native ops and the NumPy reference."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")

#: scikit-learn's message for a covariance that is not positive definite; kept word for
#: word so that users who search for it find the existing answers.
ILL_DEFINED_COVARIANCE = (
    "Fitting the mixture model failed because some components have "
    "ill-defined empirical covariance (for instance caused by singleton "
    "or collapsed samples). Try to decrease the number of components, "
    "increase reg_covar, or scale the input data."
)
ILL_DEFINED_COVARIANCE_FLOAT32 = (
    " The numerical accuracy can also be improved by passing float64"
    " data instead of float32."
)


def ill_defined_covariance_message(dtype) -> str:
    """scikit-learn's error text for an ill-defined covariance in this dtype."""
    msg = ILL_DEFINED_COVARIANCE
    if np.dtype(dtype) == np.float32:
        msg += ILL_DEFINED_COVARIANCE_FLOAT32
    return msg


def param_shape(covariance_type: str, n_components: int, n_features: int) -> tuple:
    """Shape of covariances / precisions / precisions_cholesky for a covariance type."""
    return {
        "full": (n_components, n_features, n_features),
        "tied": (n_features, n_features),
        "diag": (n_components, n_features),
        "spherical": (n_components,),
    }[covariance_type]


@dataclass
class EMStats:
    """Sufficient statistics of one EM pass, float64, centred at ``centres``.

    With ``r_ik = g_i p(k | x_i)`` (``g`` the sample weights, ones by default):

    - ``log_likelihood`` = Σ_i g_i log p(x_i) (0.0 when responsibilities were given
      instead of computed),
    - ``weight_sum`` = Σ_i g_i,
    - ``nk[k]`` = Σ_i r_ik,
    - ``s1[k]`` = Σ_i r_ik (x_i - c_k),
    - ``s2`` = Σ_i r_ik (x_i - c_k)(x_i - c_k)ᵀ in the covariance type's form:
      full (K, D, D), tied (D, D) summed over k, diag (K, D), spherical (K,) the trace.

    Statistics computed with the same centres add up: the statistics of two chunks of
    rows, summed with ``+``, equal those of the concatenated rows. ``dtype`` is the data's
    floating dtype, which sets scikit-learn's epsilon in :func:`gmmfast.ops.finalize`.
    """

    covariance_type: str
    centres: np.ndarray
    log_likelihood: float
    weight_sum: float
    nk: np.ndarray
    s1: np.ndarray
    s2: np.ndarray
    dtype: str = "float64"

    def __add__(self, other: "EMStats") -> "EMStats":
        if not isinstance(other, EMStats):
            return NotImplemented
        if other.covariance_type != self.covariance_type:
            raise ValueError(
                "cannot add EMStats of covariance types "
                f"{self.covariance_type!r} and {other.covariance_type!r}"
            )
        if other.centres.shape != self.centres.shape or not np.array_equal(
            other.centres, self.centres
        ):
            raise ValueError("cannot add EMStats computed with different centres")
        if other.dtype != self.dtype:
            raise ValueError(f"cannot add EMStats of {self.dtype} and {other.dtype} data")
        return EMStats(
            self.covariance_type,
            self.centres,
            self.log_likelihood + other.log_likelihood,
            self.weight_sum + other.weight_sum,
            self.nk + other.nk,
            self.s1 + other.s1,
            self.s2 + other.s2,
            self.dtype,
        )

    @property
    def n_components(self) -> int:
        return self.nk.shape[0]

    @property
    def mean_log_likelihood(self) -> float:
        """Σ g_i log p(x_i) / Σ g_i: scikit-learn's lower bound for EM."""
        return self.log_likelihood / self.weight_sum


@dataclass
class MixtureParams:
    """Parameters of a Gaussian mixture in scikit-learn's conventions.

    ``precisions_cholesky`` holds upper-triangular U with precision U Uᵀ (full, tied) or
    1/σ (diag, spherical); ``log_det_cholesky[k]`` = Σ_j log U_k[j, j].

    ``log_weights``, when set, are the per-component terms the E-step adds to the
    Gaussian log-densities instead of log(weights): variational inference's E[log π_k]
    plus its expected log-density's constants (gmmfast._variational), which for pruned
    components are −hundreds and must not go through exp and log.
    """

    covariance_type: str
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray
    log_det_cholesky: np.ndarray = field(default=None)
    log_weights: np.ndarray = field(default=None)

    @property
    def n_components(self) -> int:
        return self.weights.shape[0]

    @property
    def n_features(self) -> int:
        return self.means.shape[1]

    def astype(self, dtype) -> "MixtureParams":
        dtype = np.dtype(dtype)
        return MixtureParams(
            self.covariance_type,
            self.weights.astype(dtype),
            self.means.astype(dtype),
            self.covariances.astype(dtype),
            self.precisions_cholesky.astype(dtype),
            None if self.log_det_cholesky is None else self.log_det_cholesky.astype(np.float64),
            None if self.log_weights is None else self.log_weights.astype(np.float64),
        )


@dataclass
class EMResult:
    """Outcome of an EM run (:func:`gmmfast.ops.em` and :func:`gmmfast.reference.em`)."""

    params: MixtureParams
    lower_bound: float
    lower_bounds: list
    n_iter: int
    converged: bool
