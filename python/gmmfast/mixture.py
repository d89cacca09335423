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
"""

from __future__ import annotations

import math
import numbers
import warnings
from time import time
from typing import Optional

import numpy as np

from . import _core, ops
from ._engines import NumpyEngine, TorchEngine, is_tensor
from ._compat import (
    BaseEstimator,
    ConvergenceWarning,
    DensityMixin,
    InvalidParameterError,
    NotFittedError,
)
from ._types import COVARIANCE_TYPES, EMStats, MixtureParams, param_shape
from ._validation import check_random_state, seed_from

__all__ = ["GaussianMixture"]

_INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")
_RECOVERY = (None, "reg_covar", "reseed")


# ------------------------------------------------------------------------------ validation


def _interval_error(name, what, value):
    # scikit-learn's InvalidParameterError (a ValueError and a TypeError) and its text
    return InvalidParameterError(
        f"The {name!r} parameter of GaussianMixture must be {what}. Got {value!r} instead."
    )


def _check_int(name, value, low, also=""):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise _interval_error(name, f"an int in the range [{low}, inf){also}", value)


def _check_real(name, value, low):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not np.isfinite(value)
        or value < low
    ):
        raise _interval_error(name, f"a float in the range [{low}, inf)", value)


def _is_arraylike_not_scalar(x) -> bool:
    """scikit-learn's "array-like" parameter constraint."""
    arraylike = hasattr(x, "__len__") or hasattr(x, "shape") or hasattr(x, "__array__")
    return arraylike and not np.isscalar(x)


def _is_sparse(X) -> bool:
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover
        return False
    return sp.issparse(X)


def _feature_names(X):
    """Column names of a DataFrame-like X when they are all strings (scikit-learn's rule:
    None for non-string names, a TypeError for a mix of strings and other types)."""
    cols = getattr(X, "columns", None)
    if cols is None or not hasattr(X, "shape"):
        return None
    names = np.asarray(list(cols), dtype=object)
    if len(names) == 0:
        return None
    types = sorted(t.__qualname__ for t in set(type(v) for v in names))
    if len(types) > 1 and "str" in types:
        raise TypeError(
            "Feature names are only supported if all input features have string names, "
            f"but your input has {types} as feature name / column name types. "
            "If you want feature names to be stored and validated, you must convert "
            "them all to strings, by using X.columns = X.columns.astype(str) for "
            "example. Otherwise you can remove feature / column names from your input "
            "data, or convert them all to a non-string data type."
        )
    if types == ["str"]:
        return names
    return None


def _feature_names_mismatch(fitted, names) -> str:
    """scikit-learn's message for feature names that differ from those seen in fit."""
    message = "The feature names should match those that were passed during fit.\n"
    unexpected = sorted(set(names) - set(fitted))
    missing = sorted(set(fitted) - set(names))

    def listing(items):
        out = ""
        for i, name in enumerate(items):
            if i >= 5:
                out += "- ...\n"
                break
            out += f"- {name}\n"
        return out

    if unexpected:
        message += "Feature names unseen at fit time:\n" + listing(unexpected)
    if missing:
        message += "Feature names seen at fit time, yet now missing:\n" + listing(missing)
    if not missing and not unexpected:
        message += "Feature names must be in the same order as they were in fit.\n"
    return message


def _canonical_float(arr: np.ndarray) -> np.ndarray:
    # An unpickled or memory-mapped array can carry a float64 dtype object that equals,
    # but is not, NumPy's float64 singleton, and the native layer dispatches on identity:
    # a view with the canonical dtype is free and reads the same memory.
    canonical = np.dtype(np.float32) if arr.dtype == np.float32 else np.dtype(np.float64)
    if arr.dtype is not canonical:
        arr = arr.view(canonical)
    return arr


def _as_2d_float(X, context: str = " by GaussianMixture") -> np.ndarray:
    """X as a 2-D float32/float64 array, with scikit-learn's check_array errors."""
    if _is_sparse(X):
        raise TypeError(
            "Sparse data was passed for X, but dense data is required. Use '.toarray()' "
            "to convert to a dense numpy array."
        )
    # a list converts straight to float64, as in check_array (NumPy's errors for strings
    # or complex numbers in it); arrays and data frames keep float32
    arr = np.asarray(X, dtype=np.float64) if isinstance(X, (list, tuple)) else np.asarray(X)
    if arr.dtype.kind == "c":
        raise ValueError(f"Complex data not supported\n{arr}\n")
    if arr.ndim == 0:
        raise ValueError(
            f"Expected 2D array, got scalar array instead:\narray={arr}.\n"
            "Reshape your data either using array.reshape(-1, 1) if "
            "your data has a single feature or array.reshape(1, -1) "
            "if it contains a single sample."
        )
    if arr.dtype.kind in "OUSV":
        # numbers stored as objects or strings convert (as scikit-learn does); anything
        # else raises NumPy's own TypeError / ValueError, which scikit-learn lets through
        arr = arr.astype(np.float64)
    if arr.ndim == 1:
        raise ValueError(
            f"Expected 2D array, got 1D array instead:\narray={arr}.\n"
            "Reshape your data either using array.reshape(-1, 1) if "
            "your data has a single feature or array.reshape(1, -1) "
            "if it contains a single sample."
        )
    if arr.ndim >= 3:
        raise ValueError(f"Found array with dim {arr.ndim}, while dim <= 2 is required{context}.")
    if not (arr.dtype == np.float32 or arr.dtype == np.float64):
        arr = arr.astype(np.float64)
    return _canonical_float(arr)


def _check_finite(X: np.ndarray, name: str = "X"):
    row = _core.first_nonfinite_row(X) if X.size else -1
    if row >= 0:
        if np.isnan(X[row]).any():
            raise ValueError(f"Input {name} contains NaN (first at row {row}).")
        raise ValueError(
            f"Input {name} contains infinity or a value too large for {X.dtype!r} "
            f"(first at row {row})."
        )


def _check_sample_weight(sample_weight, n_samples: int, dtype, allow_zero_sum=False) -> Optional[np.ndarray]:
    """scikit-learn's _check_sample_weight, plus 'finite' and 'not all zero' (unless
    ``allow_zero_sum``: one part of distributed data may carry no weight)."""
    if sample_weight is None:
        return None
    if isinstance(sample_weight, numbers.Number):
        sw = np.full(n_samples, sample_weight, dtype=dtype)
    else:
        sw = np.asarray(sample_weight)
        if sw.dtype.kind not in "fiub":
            raise ValueError(f"sample_weight must be numeric, got dtype {sw.dtype}")
        sw = sw.astype(dtype)
        if sw.ndim != 1:
            raise ValueError("Sample weights must be 1D array or scalar")
        if sw.shape != (n_samples,):
            raise ValueError(f"sample_weight.shape == {sw.shape}, expected {(n_samples,)}!")
    if not np.all(np.isfinite(sw)):
        raise ValueError("sample_weight must be finite")
    if np.any(sw < 0):
        raise ValueError("Negative values in data passed to `sample_weight`")
    if not allow_zero_sum and not sw.sum() > 0:
        raise ValueError("sample_weight must not sum to zero")
    return np.ascontiguousarray(sw)


def _is_dask_array(X) -> bool:
    """True for a dask.array.Array, without importing dask when it is not loaded."""
    import sys

    da = sys.modules.get("dask.array")
    return da is not None and isinstance(X, getattr(da, "Array", ()))


def _is_memory_mapped(X) -> bool:
    import mmap

    base = X
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap):
            return True
        base = base.base
    return isinstance(base, mmap.mmap)


def _needs_blockwise_conversion(X) -> bool:
    """A 2-D memory-mapped array that fit could only use after converting all of it
    (another dtype or byte order, or not C-contiguous)."""
    if not isinstance(X, np.ndarray) or X.ndim != 2 or X.dtype.kind not in "fiub":
        return False
    if not _is_memory_mapped(X):
        return False
    native = X.dtype == np.float32 or X.dtype == np.float64
    return not (native and X.flags.c_contiguous)


def _check_shape(param, shape, name):
    if param.shape != shape:
        raise ValueError(
            "The parameter '%s' should have the shape of %s, but got %s" % (name, shape, param.shape)
        )


def _init_array(value, allow_nd=False) -> np.ndarray:
    """A user-given initial parameter as float32/float64, with the errors of
    scikit-learn's check_array(dtype=[float64, float32], ensure_2d=False)."""
    # like check_array: a sequence converts straight to float64 (NumPy's errors for
    # strings or complex numbers in it); an array keeps float32
    arr = np.asarray(value) if hasattr(value, "dtype") else np.asarray(value, dtype=np.float64)
    if arr.dtype.kind == "c":
        raise ValueError(f"Complex data not supported\n{arr}\n")
    if not (arr.dtype == np.float32 or arr.dtype == np.float64):
        arr = arr.astype(np.float64)
    if arr.ndim == 0:
        raise ValueError(
            "Input should have at least 1 dimension i.e. satisfy `len(x.shape) > 0`, "
            f"got scalar `{arr!r}` instead."
        )
    if arr.ndim >= 3 and not allow_nd:
        raise ValueError(f"Found array with dim {arr.ndim}, while dim <= 2 is required.")
    if np.isnan(arr).any():
        raise ValueError("Input contains NaN.")
    if not np.isfinite(arr).all():
        raise ValueError(f"Input contains infinity or a value too large for {arr.dtype!r}.")
    return _canonical_float(arr)


def _check_weights_init(weights, n_components):
    weights = _init_array(weights)
    _check_shape(weights, (n_components,), "weights")
    if np.any(weights < 0.0) or np.any(weights > 1.0):
        # scikit-learn 1.9 prints min(weights) as "max value" and max as "min value";
        # we keep its words but put the right numbers after them
        raise ValueError(
            "The parameter 'weights' should be in the range [0, 1], but got max value "
            "%.5f, min value %.5f" % (np.max(weights), np.min(weights))
        )
    atol = 1e-6 if weights.dtype == np.float32 else 1e-8
    if not np.allclose(float(abs(1.0 - np.sum(weights))), 0.0, atol=atol):
        raise ValueError(
            "The parameter 'weights' should be normalized, but got sum(weights) = %.5f"
            % np.sum(weights)
        )
    return weights.astype(np.float64)


def _check_means_init(means, n_components, n_features):
    means = _init_array(means)
    _check_shape(means, (n_components, n_features), "means")
    return means.astype(np.float64)


def _check_precisions_init(precisions, covariance_type, n_components, n_features):
    precisions = _init_array(precisions, allow_nd=covariance_type == "full")
    _check_shape(
        precisions,
        param_shape(covariance_type, n_components, n_features),
        "%s precision" % covariance_type,
    )
    precisions = precisions.astype(np.float64)
    if covariance_type in ("diag", "spherical"):
        if np.any(precisions <= 0.0):
            raise ValueError("'%s precision' should be positive" % covariance_type)
        return precisions
    mats = precisions if covariance_type == "full" else precisions[None]
    for p in mats:
        if not (np.allclose(p, p.T) and np.all(np.linalg.eigvalsh(p) > 0.0)):
            raise ValueError("'%s precision' should be symmetric, positive-definite" % covariance_type)
    return precisions


def _precision_cholesky_from_precisions(precisions, covariance_type):
    """Upper-triangular U with Λ = U Uᵀ (scikit-learn's reverse-order Cholesky)."""
    if covariance_type in ("diag", "spherical"):
        return np.sqrt(precisions)
    mats = precisions if covariance_type == "full" else precisions[None]
    # J Λ J = L Lᵀ with J the exchange matrix  =>  Λ = (J L J)(J L J)ᵀ, J L J upper.
    flipped = np.linalg.cholesky(mats[:, ::-1, ::-1])
    U = np.ascontiguousarray(flipped[:, ::-1, ::-1])
    return U if covariance_type == "full" else U[0]


def _covariances_from_precisions(precisions, covariance_type):
    if covariance_type in ("diag", "spherical"):
        return 1.0 / precisions
    return np.linalg.inv(precisions)


def _precisions_from_cholesky(prec_chol, covariance_type):
    if covariance_type == "full":
        return np.matmul(prec_chol, np.swapaxes(prec_chol, 1, 2))
    if covariance_type == "tied":
        return prec_chol @ prec_chol.T
    return prec_chol**2


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

    # ------------------------------------------------------------------ parameter checks

    def _check_params(self):
        """scikit-learn's parameter constraints (InvalidParameterError with its text),
        plus gmmfast's recovery and n_threads."""
        _check_int("n_components", self.n_components, 1)
        if self.covariance_type not in COVARIANCE_TYPES:
            raise _interval_error(
                "covariance_type", f"a str among {set(COVARIANCE_TYPES)}", self.covariance_type
            )
        _check_real("tol", self.tol, 0.0)
        _check_real("reg_covar", self.reg_covar, 0.0)
        _check_int("max_iter", self.max_iter, 0)
        _check_int("n_init", self.n_init, 1)
        if not isinstance(self.init_params, str) or self.init_params not in _INIT_PARAMS:
            raise _interval_error("init_params", f"a str among {set(_INIT_PARAMS)}", self.init_params)
        for name in ("weights_init", "means_init", "precisions_init"):
            value = getattr(self, name)
            if value is not None and not _is_arraylike_not_scalar(value):
                raise _interval_error(name, "an array-like or None", value)
        rs = self.random_state
        if not (
            rs is None
            or isinstance(rs, (np.random.RandomState, np.random.Generator))
            or (
                isinstance(rs, numbers.Integral)
                and not isinstance(rs, bool)
                and 0 <= rs <= 2**32 - 1
            )
        ):
            # a Generator is accepted too (an extension of scikit-learn's constraint)
            raise _interval_error(
                "random_state",
                "an int in the range [0, 4294967295], an instance of "
                "'numpy.random.mtrand.RandomState' or None",
                rs,
            )
        if not isinstance(self.warm_start, (bool, np.bool_)):
            raise _interval_error(
                "warm_start", "an instance of 'bool' or an instance of 'numpy.bool'", self.warm_start
            )
        if not isinstance(self.verbose, (bool, np.bool_)):
            _check_int(
                "verbose",
                self.verbose,
                0,
                also=", an instance of 'bool' or an instance of 'numpy.bool'",
            )
        _check_int("verbose_interval", self.verbose_interval, 1)
        if not (self.recovery is None or (isinstance(self.recovery, str) and self.recovery in _RECOVERY)):
            raise _interval_error("recovery", "None, 'reg_covar' or 'reseed'", self.recovery)
        if self.n_threads is not None:
            _check_int("n_threads", self.n_threads, 1)
        kappa = self.learning_decay
        if (
            isinstance(kappa, bool)
            or not isinstance(kappa, numbers.Real)
            or not (0.5 < kappa <= 1.0)
        ):
            raise _interval_error("learning_decay", "a float in the range (0.5, 1.0]", kappa)
        _check_real("learning_offset", self.learning_offset, 0.0)

    def _validate_X(self, X, *, reset: bool, min_samples: int = 1) -> np.ndarray:
        # scikit-learn's validate_data order: feature names, check_array, n_features
        names = _feature_names(X)
        if not reset:
            fitted = getattr(self, "feature_names_in_", None)
            if fitted is not None and names is None:
                warnings.warn(
                    "X does not have valid feature names, but GaussianMixture was fitted "
                    "with feature names",
                    UserWarning,
                )
            elif fitted is None and names is not None:
                warnings.warn(
                    "X has feature names, but GaussianMixture was fitted without feature names",
                    UserWarning,
                )
            elif fitted is not None and (
                len(fitted) != len(names) or np.any(fitted != names)
            ):
                raise ValueError(_feature_names_mismatch(fitted, names))
        arr = _as_2d_float(X)
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
        _check_finite(arr)
        if reset:
            self.n_features_in_ = arr.shape[1]
            if names is not None:
                self.feature_names_in_ = names
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif arr.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {arr.shape[1]} features, but GaussianMixture is expecting "
                f"{self.n_features_in_} features as input."
            )
        return arr

    def _check_is_fitted(self):
        if not hasattr(self, "means_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator."
            )

    def __sklearn_is_fitted__(self):
        return hasattr(self, "means_")

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

    def _fit(self, X, sample_weight):
        """Validate, run EM, set the fitted attributes; returns the validated X (NumPy, or
        a tensor on its device when X is a torch tensor)."""
        self._check_params()
        self._reset_online()  # a new fit ends online EM
        if is_tensor(X):
            return self._fit_tensor(X, sample_weight)
        if _is_dask_array(X):
            from .dask import _fit_dask

            return _fit_dask(self, X, sample_weight)
        if _needs_blockwise_conversion(X):
            # a memory-mapped array that is not C-contiguous float32/float64: converting
            # it would copy all of it, so it is streamed by blocks of rows instead
            return self._fit_memmap_by_blocks(X, sample_weight)
        X = self._validate_X(X, reset=True, min_samples=2)
        # one C-contiguous copy of a Fortran-ordered (or strided) X, instead of one per
        # native call; it also makes NumPy's column means, whose rounding depends on the
        # layout, the same as for the C-ordered array, so a fit does not depend on layout
        X = np.ascontiguousarray(X)
        sw = self._fit_weights(X, sample_weight)
        self._run_em(NumpyEngine(self, X, sw))
        return X

    def _fit_memmap_by_blocks(self, X, sample_weight):
        from .streaming import row_chunks

        if sample_weight is not None:
            sample_weight = np.asarray(sample_weight)
            if sample_weight.shape != (X.shape[0],):
                raise ValueError(
                    f"sample_weight.shape == {sample_weight.shape}, expected {(X.shape[0],)}!"
                )
        dtype = np.float32 if X.dtype.kind == "f" and X.dtype.itemsize == 4 else np.float64
        rows = max(1024, (1 << 18) // max(1, X.shape[1]))  # blocks of ~256k values
        self._fit_stream(row_chunks(X, rows, sample_weight, dtype=dtype), None, name="X")
        return X

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
        from .streaming import ChunkSource

        self._check_params()
        self._reset_online()
        source = ChunkSource(chunks)
        if not source.reiterable:
            raise TypeError(
                "chunks is a one-shot iterator (a generator object): EM needs one pass per "
                "iteration; pass a list of arrays or a function that returns a new iterator, "
                "e.g. `gm.fit_chunks(lambda: my_chunks())`"
            )
        if init_size is not None:
            _check_int("init_size", init_size, 1)
        self._fit_stream(source, init_size)
        return self

    def _fit_stream(self, chunks, init_size, name="chunks"):
        from .streaming import ChunkData, ChunkSource, StatsEngine

        source = chunks if isinstance(chunks, ChunkSource) else ChunkSource(chunks, name)
        data = ChunkData(
            source, self.n_components, init_size, check_random_state(self.random_state), self.n_threads, name
        )
        self.n_features_in_ = data.n_features
        if data.feature_names is not None:
            self.feature_names_in_ = data.feature_names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self._run_em(StatsEngine(self, data))

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
        self._check_params()
        if is_tensor(X):
            X = X.detach().cpu().numpy()
        online = self.__dict__.get("_online")
        if online is None:
            online, X, sw = self._start_online(X, sample_weight)
        else:
            X, sw = self._online_chunk(X, sample_weight, online)
        ll, W = self._online_step(online, X, sw)
        self._end_online(online, [ll / W], False)
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
        from .streaming import ChunkSource, is_chunk_source

        self._check_params()
        _check_int("max_epochs", max_epochs, 1)
        if batch_size is not None:
            _check_int("batch_size", batch_size, 1)
        from_fitted = bool(self.warm_start and hasattr(self, "means_"))
        if not from_fitted:
            self._reset_online()
        names = None
        random_state = check_random_state(self.random_state)
        if is_chunk_source(X):
            if sample_weight is not None:
                raise ValueError("sample_weight must be None when X is chunks: pass (X, weights) pairs")
            source = ChunkSource(X, "X")
            if max_epochs > 1 and not source.reiterable:
                raise TypeError(
                    "X is a one-shot iterator (a generator object), which allows one epoch: "
                    "pass max_epochs=1, or a function that returns a new iterator"
                )

            def batches():
                for item in source:
                    Xc, wc = item if isinstance(item, tuple) else (item, None)
                    n = len(Xc)
                    step = n if batch_size is None else batch_size
                    for start in range(0, n, max(step, 1)):
                        yield Xc[start : start + step], (None if wc is None else wc[start : start + step])

        else:
            if is_tensor(X):
                X = X.detach().cpu().numpy()
            if not isinstance(X, np.ndarray):
                names = _feature_names(X)  # lists, data frames: converted once
                X = _as_2d_float(X)
            elif X.ndim != 2:
                _as_2d_float(X)  # scikit-learn's error for the wrong number of dimensions
            sw_all = None
            if sample_weight is not None:
                sw_all = np.asarray(sample_weight)
                if sw_all.shape != (X.shape[0],):
                    raise ValueError(f"sample_weight.shape == {sw_all.shape}, expected {(X.shape[0],)}!")
            size = batch_size or max(10_000, 100 * self.n_components)
            starts = np.arange(0, X.shape[0], size)

            def batches():
                order = random_state.permutation(starts.size) if shuffle else np.arange(starts.size)
                for j in order:
                    a = starts[j]
                    yield X[a : a + size], (None if sw_all is None else sw_all[a : a + size])

        lower_bounds = []
        converged = False
        online = self.__dict__.get("_online")
        for epoch in range(max_epochs):
            total_ll = total_w = 0.0
            for Xb, wb in batches():
                if online is None:
                    online, Xb, wb = self._start_online(Xb, wb, random_state, from_fitted)
                else:
                    Xb, wb = self._online_chunk(Xb, wb, online)
                ll, W = self._online_step(online, Xb, wb)
                total_ll += ll
                total_w += W
            if online is None:
                raise ValueError("X gave no data")
            lower_bounds.append(total_ll / total_w)
            if epoch > 0 and abs(lower_bounds[-1] - lower_bounds[-2]) < self.tol:
                converged = True
                break
        self._end_online(online, lower_bounds, converged)
        if names is not None:
            self.feature_names_in_ = names
        if not converged:
            warnings.warn(
                f"Mini-batch EM did not converge in max_epochs={max_epochs} epoch(s) (the mean "
                "log-likelihood of the last epochs changed by tol or more). Increase "
                "max_epochs or tol.",
                ConvergenceWarning,
            )
        return self

    # online EM internals: _online holds a streaming.OnlineState

    def _reset_online(self):
        """A batch fit ends online EM: its state and its step count go."""
        self.__dict__.pop("_online", None)
        self.__dict__.pop("n_batch_iter_", None)

    def _start_online(self, X, sample_weight, random_state=None, from_fitted=None):
        from .streaming import OnlineState, implied_stats

        if from_fitted is None:
            from_fitted = hasattr(self, "means_")
        if from_fitted:
            # continue from the fitted mixture
            X, sw = self._online_chunk(X, sample_weight, None)
            params = self._fitted_params()
            dtype = np.dtype(_to_numpy(self.means_).dtype)
            state = _RunState(getattr(self, "reg_covar_", self.reg_covar), X.shape[0])
            state.reseeds = 0
        else:
            X = self._validate_X(X, reset=True, min_samples=1)
            sw = self._fit_weights(X, sample_weight)
            dtype = X.dtype
            state = _RunState(self.reg_covar, X.shape[0] if sw is None else int(np.count_nonzero(sw)))
            rs = check_random_state(self.random_state) if random_state is None else random_state
            inits = self._checked_inits(X.shape[1])
            params = self._initial_params(X, sw, rs, inits, state)
        stats = implied_stats(params, state.reg_covar, dtype)
        # a model fitted by online EM (also one saved and loaded again) continues its step
        # schedule where it stopped instead of restarting with large steps
        t = int(getattr(self, "n_batch_iter_", 0)) if from_fitted else 0
        online = OnlineState(params, stats, dtype, state, t=t)
        self._online = online
        return online, X, sw

    def _online_chunk(self, X, sample_weight, online):
        X = self._validate_X(X, reset=False)
        dtype = np.dtype(_to_numpy(self.means_).dtype) if online is None else online.dtype
        if X.dtype != dtype:
            X = X.astype(dtype)
        sw = _check_sample_weight(_to_numpy(sample_weight), X.shape[0], X.dtype)
        return X, sw

    def _online_step(self, online, X, sw):
        from .streaming import online_update

        return online_update(self, online, X, sw)

    def _end_online(self, online, lower_bounds, converged):
        p, dt = online.params, online.dtype
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
        self.reg_covar_ = online.run_state.reg_covar
        self.n_reseeds_ = online.run_state.reseeds

    def _fit_tensor(self, X, sample_weight):
        """EM on a torch tensor, on its device (CPU or CUDA), through the gmmfast:: ops.

        The initialisation (k-means or the other init_params) runs on the CPU kernels,
        on a host copy of X when X is on a GPU, so a CUDA fit starts exactly where a CPU
        fit does; every EM iteration then runs on X's device with one host
        synchronisation. The fitted attributes are tensors on X's device.
        """
        import torch

        if X.is_complex():
            raise ValueError("Complex data not supported")
        Xt = X.detach()
        if Xt.dtype not in (torch.float32, torch.float64):
            Xt = Xt.to(torch.float64)
        Xt = Xt.contiguous()
        from ._engines import distributed_group

        group = distributed_group()
        if group is None:
            X_host = self._validate_X(Xt.cpu().numpy(), reset=True, min_samples=2)
            sw_host = self._fit_weights(X_host, _to_numpy(sample_weight))
            engine = TorchEngine(self, Xt, X_host, None, sw_host)
        else:
            # each rank holds a part of the data: the sample-count rules apply to all of
            # it (checked by the engine), and an error on one rank is raised on all
            from .torch.distributed import raise_together

            error = None
            try:
                X_host = self._validate_X(Xt.cpu().numpy(), reset=True, min_samples=1)
                sw_host = _check_sample_weight(
                    _to_numpy(sample_weight), X_host.shape[0], X_host.dtype, allow_zero_sum=True
                )
            except ValueError as exc:
                error = exc
            raise_together(error, group)
            try:
                engine = TorchEngine(self, Xt, X_host, None, sw_host, group=group)
                error = None
            except ValueError as exc:
                error = exc
            raise_together(error, group)
        if sw_host is not None:
            engine.sw = torch.as_tensor(sw_host, device=Xt.device)
        self._run_em(engine)
        return Xt

    def _fit_weights(self, X, sample_weight):
        n_samples = X.shape[0]
        if n_samples < self.n_components:
            raise ValueError(
                "Expected n_samples >= n_components "
                f"but got n_components = {self.n_components}, n_samples = {n_samples}"
            )
        return _check_sample_weight(sample_weight, n_samples, X.dtype)

    def _run_em(self, engine):
        """scikit-learn's fit loop (n_init runs, warm start, convergence on the change of
        the mean log-likelihood, ConvergenceWarning) around the engine's iterations.
        The engine (see _engines.py) holds the data, computes the initial parameters and
        runs the iterations."""
        inits = self._checked_inits(engine.n_features)

        do_init = not (self.warm_start and hasattr(self, "converged_"))
        n_init = self.n_init if do_init else 1
        start_reg = float(self.reg_covar)
        if not do_init and self.recovery == "reg_covar":
            # a warm start goes on with the regularisation the previous fit ended with
            start_reg = max(start_reg, float(getattr(self, "reg_covar_", start_reg)))
        random_state = check_random_state(self.random_state)
        # the collapse rule counts samples that carry weight (zero weight = absent row)
        n_rows = engine.n_rows
        max_lower_bound = -np.inf
        best_lower_bounds = []
        best = best_state = None
        self.converged_ = False
        for init in range(n_init):
            self._verbose_init_begin(init)
            state = _RunState(start_reg, n_rows)
            if do_init:
                params = engine.to_device(engine.initial_params(random_state, inits, state))
            else:
                params = engine.to_device(self._fitted_params())
            lower_bound = -np.inf if do_init else self.lower_bound_
            if self.max_iter == 0:
                best, best_n_iter, best_state = params, 0, state
                continue
            current = []
            converged = False
            restarted = False
            for n_iter in range(1, self.max_iter + 1):
                # after a restart the objective changed: no convergence test against it
                prev = -np.inf if restarted else lower_bound
                lower_bound, params, restarted = engine.step(params, state)
                current.append(lower_bound)
                change = lower_bound - prev
                self._verbose_iter_end(n_iter, change)
                if not restarted and abs(change) < self.tol:
                    converged = True
                    break
            self._verbose_init_end(lower_bound, converged)
            if lower_bound > max_lower_bound or max_lower_bound == -np.inf:
                max_lower_bound = lower_bound
                best = params
                best_n_iter = n_iter
                best_lower_bounds = current
                best_state = state
                self.converged_ = converged
        if not self.converged_ and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. "
                "Try different init parameters, or increase max_iter, "
                "tol, or check for degenerate data.",
                ConvergenceWarning,
            )
        # the recovery record of the kept run (the other runs' models are discarded)
        self.reg_covar_ = best_state.reg_covar
        self.n_reseeds_ = best_state.reseeds
        if self.n_reseeds_ or self.reg_covar_ > self.reg_covar:
            done = []
            if self.n_reseeds_:
                done.append(f"{self.n_reseeds_} component restart(s)")
            if self.reg_covar_ > self.reg_covar:
                done.append(f"reg_covar raised to {self.reg_covar_:.3g}")
            warnings.warn(
                f"recovery={self.recovery!r}: {' and '.join(done)}, because components "
                "collapsed or had ill-defined (not positive definite) covariances.",
                RuntimeWarning,
            )
        self._set_attributes(engine.attributes(best))
        self.n_iter_ = best_n_iter
        self.lower_bound_ = max_lower_bound
        self.lower_bounds_ = best_lower_bounds

    def _checked_inits(self, n_features):
        K, t = self.n_components, self.covariance_type
        return (
            None if self.weights_init is None else _check_weights_init(self.weights_init, K),
            None if self.means_init is None else _check_means_init(self.means_init, K, n_features),
            None
            if self.precisions_init is None
            else _check_precisions_init(self.precisions_init, t, K, n_features),
        )

    def _initial_params(self, X, sw, random_state, inits, state, initial_stats=None) -> MixtureParams:
        """The initial mixture: the given *_init, the rest from the M-step of the
        initial responsibilities. X and sw serve the recovery policy (and set the
        dtype); ``initial_stats()`` computes the statistics of the initial
        responsibilities where X is not all of the data (streamed or distributed)."""
        weights_init, means_init, precisions_init = inits
        t = self.covariance_type
        params = None
        if weights_init is None or means_init is None or precisions_init is None:
            if initial_stats is None:
                stats = self._initial_stats(X, sw, random_state)
            else:
                stats = initial_stats()
            if precisions_init is None:
                # the M-step of the initial responsibilities, under the recovery policy
                params, _ = self._m_step(stats, X, sw, None, state)
            else:
                # scikit-learn computes no covariance when precisions_init is given, so
                # a degenerate initial cluster must not fail here
                weights_k, means_k = _weights_and_means(stats, X.dtype)
                params = MixtureParams(t, weights_k, means_k, None, None)
        weights = params.weights if weights_init is None else weights_init
        means = params.means if means_init is None else means_init
        if precisions_init is None:
            covariances, prec_chol = params.covariances, params.precisions_cholesky
        else:
            prec_chol = _precision_cholesky_from_precisions(precisions_init, t)
            covariances = _covariances_from_precisions(precisions_init, t)
        return MixtureParams(t, weights, means, covariances, prec_chol)

    def _initial_stats(self, X, sw, random_state) -> EMStats:
        """The statistics of the initial responsibilities.

        The same computation and random draws as :func:`gmmfast.ops.initial_params`
        (whose result is ``ops.finalize`` of these statistics), stopped before the last
        M-step so that the recovery policy applies to it, and with the first pass's means
        taken without its covariances: those could fail where the second pass's do not.
        """
        N, D = X.shape
        K, t = self.n_components, self.covariance_type
        resp = labels = None
        if self.init_params in ("k-means++", "random_from_data"):
            # responsibility one at K rows and zero elsewhere: the statistics of those
            # K rows alone (no n_samples × n_components array; X may be memory-mapped)
            if self.init_params == "k-means++":
                _, idx = ops.kmeans_plusplus(
                    X, K, random_state=random_state, sample_weight=sw, n_threads=self.n_threads
                )
            else:
                # gmmfast's own stream (not scikit-learn's permutation of all N rows):
                # the chunked, Dask and torch.distributed fits draw the same rows
                rs = np.random.default_rng(seed_from(random_state))
                idx = rs.choice(N, size=K, replace=False)
            return self._one_hot_initial_stats(X, sw, np.asarray(idx))
        if self.init_params == "kmeans":
            labels = ops.kmeans(
                X, K, random_state=random_state, sample_weight=sw, n_threads=self.n_threads
            ).labels
        else:  # random
            # gmmfast's own stream, which can jump to any row: the chunked, Dask and
            # torch.distributed fits draw the same numbers block by block in parallel
            seed = seed_from(random_state)
        shape_only = dict(
            log_weights=np.zeros(K),
            means=np.zeros((K, D)),
            precisions_cholesky=np.ones(param_shape(t, K, D)),
            covariance_type=t,
            n_threads=self.n_threads,
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
        _, means = _weights_and_means(first, X.dtype)
        return stats(means)

    def _one_hot_initial_stats(self, X, sw, idx) -> EMStats:
        """Statistics of responsibilities one-hot at rows ``idx`` (component k at row
        idx[k]), two passes as in _initial_stats; Σ g_i is that of all the rows."""
        from .streaming import one_hot_stats

        K = self.n_components
        rows = np.ascontiguousarray(X[idx])
        w = None if sw is None else np.ascontiguousarray(sw[idx])
        weight_sum = float(X.shape[0]) if sw is None else float(np.sum(sw, dtype=np.float64))
        centre = np.mean(X, axis=0, dtype=np.float64)
        first = one_hot_stats(rows, w, np.tile(centre, (K, 1)), weight_sum, self.covariance_type, self.n_threads)
        _, means = _weights_and_means(first, X.dtype)
        return one_hot_stats(rows, w, means, weight_sum, self.covariance_type, self.n_threads)

    def _m_step(self, stats: EMStats, X, sw, prev: Optional[MixtureParams], state: "_RunState"):
        """finalize, with the recovery policy for ill-defined or collapsed components.

        ``prev`` is the mixture of the E-step (None for the initial M-step). Returns
        (params, restarted) where restarted tells that components were reseeded.
        """
        try:
            params = ops.finalize(stats, state.reg_covar, X.dtype)
        except ValueError:
            if self.recovery is None:
                raise
            if self.recovery == "reg_covar" or self.covariance_type == "tied":
                # a tied covariance is shared: no single component to restart
                return self._escalate_reg_covar(stats, X, state), False
            failed = self._failed_components(stats, X.dtype, state.reg_covar)
            return self._reseed(stats, X, sw, prev, state, failed)
        if self.recovery == "reseed":
            collapsed = self._collapsed(stats, state.n_rows)
            if collapsed.size:
                return self._reseed(stats, X, sw, prev, state, collapsed, params=params)
        return params, False

    def _escalate_reg_covar(self, stats, X, state):
        """finalize with reg_covar raised tenfold until every covariance is positive
        definite (from 1e-12 of the data's variance up to 1e6 of it, at most)."""
        scale = float(np.mean(_diag_of(stats, self.covariance_type)))
        if not np.isfinite(scale):
            # non-finite statistics: no regularisation helps; raise finalize's error
            return ops.finalize(stats, state.reg_covar, X.dtype)
        # the centred statistics of a zero variance hold rounding noise of ~eps·|c|²
        scale = max(scale, 16.0 * float(np.finfo(np.float64).eps) * float(np.mean(stats.centres**2)))
        if scale <= 0.0:
            scale = 1.0  # every sample sits at the origin: any scale works
        # float32 kernels square U(x - μ) in float32: start where that cannot overflow
        start = 1e-12 if X.dtype == np.float64 else 1e-5
        reg = max(state.reg_covar * 10.0, start * scale)
        error = None
        for _ in range(64):  # bounded whatever the numbers
            try:
                params = ops.finalize(stats, reg, X.dtype)
            except ValueError as exc:
                error = exc
                if reg > 1e6 * scale:
                    break
                reg *= 10.0
                continue
            state.reg_covar = reg
            return params
        raise error

    @staticmethod
    def _collapsed(stats: EMStats, n_rows: int) -> np.ndarray:
        # Fewer than two average samples' worth of responsibility: a covariance cannot
        # be estimated from it (scale-free: weights may be normalised).
        threshold = 2.0 * stats.weight_sum / max(n_rows, 1)
        return np.flatnonzero(stats.nk < threshold)

    def _reseed(self, stats, X, sw, prev, state, failed, params=None):
        """Restart failed (``params`` None: their covariance is not positive definite) or
        collapsed (``params`` given: the M-step's result) components at the samples the
        mixture explains worst, with the mean covariance of the healthy components."""
        K, t = self.n_components, self.covariance_type
        budget = state.max_reseeds(K) - state.reseeds
        healthy = np.setdiff1d(np.arange(K), failed)
        if params is None:
            if failed.size == 0 or healthy.size == 0 or failed.size > budget:
                # nothing to restart from, or too many restarts already: regularise
                return self._escalate_reg_covar(stats, X, state), False
            # finalize the healthy components; the failed ones are replaced below
            params = ops.finalize(
                _with_components_neutralised(stats, failed), state.reg_covar, X.dtype
            )
        else:
            failed = failed[: max(budget, 0)]
            if failed.size == 0 or healthy.size == 0:
                return params, False
        if prev is None:
            # the initial M-step: the worst-explained samples under the healthy part
            w = params.weights[healthy]
            prev = MixtureParams(
                t,
                w / w.sum(),
                params.means[healthy],
                None,
                params.precisions_cholesky if t == "tied" else params.precisions_cholesky[healthy],
            )
        ll = ops.log_prob(
            X,
            _log_weights(prev.weights).astype(X.dtype),
            prev.means.astype(X.dtype),
            prev.precisions_cholesky.astype(X.dtype),
            t,
            "sample",
            n_threads=self.n_threads,
        )
        if sw is not None:
            ll = np.where(sw > 0, ll, np.inf)  # never seed at a zero-weight sample
        order = np.argsort(ll, kind="stable")
        weights = params.weights.copy()
        means = params.means.copy()
        covariances = params.covariances.copy()
        if t != "tied":
            mean_cov = covariances[healthy].mean(axis=0)
        for j, k in enumerate(failed):
            means[k] = X[order[j]]
            weights[k] = 1.0 / K
            if t != "tied":
                covariances[k] = mean_cov
        weights /= weights.sum()
        try:
            prec_chol, log_det = ops.precision_cholesky(covariances, t, n_features=X.shape[1])
        except ValueError:
            # the healthy covariances are so ill-conditioned that their rounded mean is
            # not positive definite: regularise instead of restarting
            return self._escalate_reg_covar(stats, X, state), False
        state.reseeds += failed.size
        return MixtureParams(t, weights, means, covariances, prec_chol, log_det), True

    def _failed_components(self, stats: EMStats, dtype, reg) -> np.ndarray:
        failed = []
        for k in range(stats.n_components):
            single = _component_stats(stats, k)
            try:
                ops.finalize(single, reg, dtype)
            except ValueError:
                failed.append(k)
        return np.asarray(failed, dtype=np.int64)

    # ----------------------------------------------------------------------- prediction

    def _labels(self, X):
        # argmax of the weighted log-densities, in row blocks so that memory stays
        # O(block · n_components) whatever n_samples
        block = max(1, (1 << 22) // max(self.n_components, 1))
        if _is_dask_array(X):  # lazily, block by block where the blocks are
            return X.map_blocks(
                lambda b: self._labels(np.asarray(b)), drop_axis=1, dtype=np.int64, meta=np.empty((0,), np.int64)
            )
        if is_tensor(X):
            import torch

            return torch.cat(
                [
                    torch.argmax(self._log_prob(X[start : start + block], "weighted"), dim=1)
                    for start in range(0, X.shape[0], block)
                ]
            )
        out = np.empty(X.shape[0], dtype=np.int64)
        for start in range(0, X.shape[0], block):
            w = self._log_prob(X[start : start + block], "weighted")
            out[start : start + block] = np.argmax(w, axis=1)
        return out

    def _log_prob(self, X, output):
        """log_prob of validated X under the fitted mixture, in X's kind of array and on
        its device. scikit-learn computes in the promoted dtype of X and the parameters:
        float32 data under a float64 model are scored in float64."""
        if _is_dask_array(X):
            dt = np.result_type(X.dtype, _to_numpy(self.means_).dtype)
            if output == "sample":
                return X.map_blocks(
                    lambda b: self._log_prob(np.asarray(b), output), drop_axis=1, dtype=dt, meta=np.empty((0,), dt)
                )
            K = self.n_components
            return X.map_blocks(
                lambda b: self._log_prob(np.asarray(b), output), chunks=(X.chunks[0], (K,)), dtype=dt,
                meta=np.empty((0, 0), dt),
            )
        if is_tensor(X):
            import torch

            from . import torch as gt

            dt = torch.promote_types(X.dtype, _torch_dtype(self.means_))

            def param(a):
                return _as_tensor(a, X.device).to(dt)

            return gt.log_prob(
                X.to(dt),
                # log in float64, then rounded: as the NumPy path does
                torch.log(_as_tensor(self.weights_, X.device).double()).to(dt),
                param(self.means_),
                param(self.precisions_cholesky_),
                self.covariance_type,
                output,
            )
        means = _to_numpy(self.means_)
        dt = np.result_type(X.dtype, means.dtype)
        if dt != X.dtype:
            X = X.astype(dt)
        return ops.log_prob(
            X,
            _log_weights(_to_numpy(self.weights_)).astype(dt),
            means.astype(dt),
            _to_numpy(self.precisions_cholesky_).astype(dt),
            self.covariance_type,
            output,
            n_threads=self.n_threads,
        )

    def _validate_input(self, X):
        """X for predict/score: NumPy through scikit-learn's checks, or a torch tensor
        checked on its device (shape, dtype, finite values)."""
        if _is_dask_array(X):
            if X.ndim != 2:
                raise ValueError(f"Expected 2D array, got {X.ndim}D dask array instead.")
            if X.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {X.shape[1]} features, but GaussianMixture is expecting "
                    f"{self.n_features_in_} features as input."
                )
            if not (X.dtype == np.float32 or X.dtype == np.float64):
                X = X.astype(np.float64)
            return X.rechunk({1: -1}) if X.numblocks[1] > 1 else X
        if not is_tensor(X):
            return self._validate_X(X, reset=False)
        import torch

        if X.is_complex():
            raise ValueError("Complex data not supported")
        X = X.detach()
        if X.dtype not in (torch.float32, torch.float64):
            X = X.to(torch.float64)
        if X.dim() != 2:
            raise ValueError(f"Expected 2D tensor of shape (n_samples, n_features), got {X.dim()}D")
        if X.shape[0] < 1:
            raise ValueError(f"Found tensor with 0 sample(s) (shape={tuple(X.shape)}) while a minimum of 1 is required.")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but GaussianMixture is expecting "
                f"{self.n_features_in_} features as input."
            )
        if not bool(torch.isfinite(X).all()):
            raise ValueError("Input X contains NaN or infinity.")
        return X

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
        ll = _to_numpy(self._log_prob(X, "sample")).astype(np.float64)
        if _is_dask_array(ll):
            if sample_weight is None:
                return float(ll.mean().compute())
            if _is_dask_array(sample_weight):
                sw = sample_weight.astype(np.float64)
            else:
                sw = np.asarray(sample_weight, np.float64)
            return float(((ll * sw).sum() / sw.sum()).compute())
        sw = _check_sample_weight(_to_numpy(sample_weight), X.shape[0], np.float64)
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
        n_features = int(self.means_.shape[1])
        rng = check_random_state(self.random_state)
        if isinstance(rng, np.random.Generator):
            rng = np.random.RandomState(int(rng.integers(2**31 - 1)))
        # scikit-learn's draws, number for number: the fitted arrays as they are (float32
        # stays float32, so np.sqrt rounds the same way) and the weights unnormalised;
        # only weights whose first K-1 sum past 1 (which NumPy rejects) are normalised
        weights, means, cov = (_to_numpy(a) for a in (self.weights_, self.means_, self.covariances_))
        pvals = weights
        if float(np.sum(pvals[:-1], dtype=np.float64)) > 1.0 + 1e-12:
            pvals = pvals.astype(np.float64) / np.sum(pvals, dtype=np.float64)
        counts = rng.multinomial(n_samples, pvals)
        if self.covariance_type == "full":
            X = np.vstack([rng.multivariate_normal(m, c, int(s)) for m, c, s in zip(means, cov, counts)])
        elif self.covariance_type == "tied":
            X = np.vstack([rng.multivariate_normal(m, cov, int(s)) for m, s in zip(means, counts)])
        else:
            X = np.vstack(
                [
                    m + rng.standard_normal(size=(s, n_features)) * np.sqrt(c)
                    for m, c, s in zip(means, cov, counts)
                ]
            )
        X = X.astype(np.float64, copy=False)
        y = np.concatenate([np.full(int(s), k, dtype=np.int64) for k, s in enumerate(counts)])
        if is_tensor(self.means_):  # fitted on tensors: tensors on the same device
            import torch

            device = self.means_.device
            return torch.as_tensor(X, device=device), torch.as_tensor(y, device=device)
        return X, y

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
        return float(_check_sample_weight(_to_numpy(sample_weight), n_rows, np.float64).sum())

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
        from .io import save_model

        self._check_is_fitted()
        save_model(self, path)

    # ------------------------------------------------------------------------- helpers

    def _fitted_params(self) -> MixtureParams:
        return MixtureParams(
            self.covariance_type,
            *(
                _to_numpy(a).astype(np.float64)
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
        U = _to_numpy(self.precisions_cholesky_)
        precisions = _precisions_from_cholesky(U.astype(np.float64), self.covariance_type).astype(U.dtype)
        self.precisions_ = _as_tensor(precisions, self.means_.device) if is_tensor(self.means_) else precisions

    # scikit-learn's verbose output, word for word
    def _verbose_init_begin(self, n_init):
        if self.verbose >= 1:
            print("Initialization %d" % n_init)
        if self.verbose >= 2:
            self._init_prev_time = time()
            self._iter_prev_time = self._init_prev_time

    def _verbose_iter_end(self, n_iter, diff_ll):
        if n_iter % self.verbose_interval == 0:
            if self.verbose == 1:
                print("  Iteration %d" % n_iter)
            elif self.verbose >= 2:
                cur_time = time()
                print(
                    "  Iteration %d\t time lapse %.5fs\t ll change %.5f"
                    % (n_iter, cur_time - self._iter_prev_time, diff_ll)
                )
                self._iter_prev_time = cur_time

    def _verbose_init_end(self, lb, converged):
        msg = "converged" if converged else "did not converge"
        if self.verbose == 1:
            print(f"Initialization {msg}.")
        elif self.verbose >= 2:
            t = time() - self._init_prev_time
            print(f"Initialization {msg}. time lapse {t:.5f}s\t lower bound {lb:.5f}.")


def _to_numpy(a):
    """NumPy view/copy of a tensor (host), anything else unchanged."""
    if is_tensor(a):
        return a.detach().cpu().numpy()
    return a


def _as_tensor(a, device):
    import torch

    if is_tensor(a):
        return a.to(device)
    return torch.as_tensor(np.asarray(a), device=device)


def _torch_dtype(a):
    import torch

    if is_tensor(a):
        return a.dtype
    return torch.float32 if np.asarray(a).dtype == np.float32 else torch.float64


class _RunState:
    """Recovery bookkeeping for one EM run."""

    def __init__(self, reg_covar, n_rows):
        self.reg_covar = float(reg_covar)
        self.n_rows = n_rows
        self.reseeds = 0

    @staticmethod
    def max_reseeds(n_components):
        return max(10, n_components)


def _log_weights(weights):
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(weights, dtype=np.float64))


def _diag_of(stats: EMStats, covariance_type):
    """Per-feature second moments (for scaling reg_covar escalation)."""
    total = max(stats.weight_sum, 1e-300)
    if covariance_type == "full":
        return np.einsum("kii->i", stats.s2) / total
    if covariance_type == "tied":
        return np.diag(stats.s2) / total
    if covariance_type == "diag":
        return stats.s2.sum(axis=0) / total
    return np.atleast_1d(stats.s2.sum() / total / stats.s1.shape[1])


def _component_stats(stats: EMStats, k: int) -> EMStats:
    s2 = stats.s2 if stats.covariance_type == "tied" else stats.s2[k : k + 1]
    return EMStats(
        stats.covariance_type,
        stats.centres[k : k + 1],
        0.0,
        stats.weight_sum,
        stats.nk[k : k + 1],
        stats.s1[k : k + 1],
        s2,
        stats.dtype,
    )


def _weights_and_means(stats: EMStats, dtype):
    """finalize's weights and means of the statistics, never its covariance error.

    Weights and means depend on nk, s1 and the centres only, so finalize runs on s2 = 0
    with a reg_covar that dominates the rest of every covariance it computes: with
    δ_k = μ_k - c_k that rest is -(s1 δᵀ + δ s1ᵀ - nk δ δᵀ)/n_k (summed over k and
    divided by Σ n_k for tied), of norm at most (2‖s1‖‖δ‖ + nk‖δ‖²)/n_k, so reg·I plus it
    is positive definite. The covariances are discarded.
    """
    nk_eps = 10.0 * float(np.finfo(np.dtype(dtype)).eps)
    n_k = stats.nk + nk_eps
    delta = np.linalg.norm((stats.s1 - nk_eps * stats.centres) / n_k[:, None], axis=1)
    s1 = np.linalg.norm(stats.s1, axis=1)
    rest = 2.0 * s1 * delta + stats.nk * delta * delta
    reg = 1.0 + 2.0 * max(float(np.max(rest / n_k)), float(np.sum(rest) / np.sum(n_k)))
    t = stats.covariance_type
    K, D = stats.s1.shape
    s2 = np.zeros(param_shape(t, K, D))
    params = ops.finalize(
        EMStats(t, stats.centres, stats.log_likelihood, stats.weight_sum, stats.nk, stats.s1, s2, stats.dtype),
        reg,
        dtype,
    )
    return params.weights, params.means


def _with_components_neutralised(stats: EMStats, failed) -> EMStats:
    """Statistics where the failed components look like a unit-variance blob, so that
    finalize succeeds for the others (the failed ones are replaced afterwards)."""
    nk = stats.nk.copy()
    s1 = stats.s1.copy()
    s2 = stats.s2.copy()
    D = s1.shape[1]
    for k in failed:
        nk[k] = 1.0
        s1[k] = 0.0
        if stats.covariance_type == "full":
            s2[k] = np.eye(D)
        elif stats.covariance_type == "diag":
            s2[k] = 1.0
        elif stats.covariance_type == "spherical":
            s2[k] = D
    return EMStats(stats.covariance_type, stats.centres, 0.0, stats.weight_sum, nk, s1, s2, stats.dtype)
