"""Input conversion and checks shared by every layer: the functional ops, the data
sources, the EM driver, model files and the estimator.

The lowest module of the package after ``_types`` (it imports only ``_core`` and
``_types``), so that anything may import it. The estimator-facing checks reproduce
scikit-learn's ``check_array`` / ``_check_sample_weight`` / feature-name errors word for
word, so that users who search for a message find the existing answers.""" 

from __future__ import annotations

import numbers
import pickle
import sys
from typing import Optional

import numpy as np

from . import _core
from ._types import COVARIANCE_TYPES, param_shape


def check_covariance_type(covariance_type) -> str:
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {', '.join(map(repr, COVARIANCE_TYPES))}, "
            f"got {covariance_type!r}"
        )
    return covariance_type


def as_data(X, name: str = "X", dtype=None) -> np.ndarray:
    """X as a 2-D float32/float64 array; other real numeric input becomes float64.

    A C-contiguous float32/float64 array is returned as is (no copy); the native layer
    converts other layouts once.
    """
    X = np.asarray(X)
    if X.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be a real numeric array, got dtype {X.dtype}")
    if dtype is not None:
        X = X.astype(dtype, copy=False)
    elif X.dtype.kind == "f" and X.dtype.itemsize in (4, 8) and not X.dtype.isnative:
        X = X.astype(X.dtype.newbyteorder("="))  # big-endian float32 stays float32
    elif X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float64)
    if X.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array of shape (n_samples, n_features), got {X.ndim} "
            f"dimension(s); reshape 1-D data with X.reshape(-1, 1) for a single feature"
        )
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"{name} must be non-empty, got shape {X.shape}")
    return X


def as_param(a, name: str, dtype) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be a real numeric array, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)


def n_threads_arg(n_threads) -> int:
    if n_threads is None:
        return 0
    if not isinstance(n_threads, numbers.Integral) or n_threads < 0:
        raise ValueError(f"n_threads must be None or an integer >= 0, got {n_threads!r}")
    if n_threads > 2**31 - 1:  # the native int; larger requests are capped there anyway
        raise ValueError(f"n_threads must be at most 2**31 - 1, got {n_threads!r}")
    return int(n_threads)


def check_random_state(random_state) -> np.random.RandomState:
    """scikit-learn's convention: None, an int, a RandomState or a Generator."""
    if random_state is None or random_state is np.random:
        return np.random.mtrand._rand
    if isinstance(random_state, numbers.Integral):
        return np.random.RandomState(int(random_state))
    if isinstance(random_state, (np.random.RandomState, np.random.Generator)):
        return random_state
    raise ValueError(
        f"random_state must be None, an int, a numpy RandomState or Generator, got {random_state!r}"
    )


def rng_state_bytes(rs) -> bytes:
    """The full state of a RandomState or Generator, as bytes that compare equal exactly
    when the two generators would draw the same numbers."""
    state = rs.bit_generator.state if isinstance(rs, np.random.Generator) else rs.get_state()
    return pickle.dumps(state)


def set_rng_state(dst, src) -> None:
    """Moves generator ``dst`` to the state of ``src`` (both RandomState or both Generator)."""
    if isinstance(dst, np.random.Generator):
        dst.bit_generator.state = src.bit_generator.state
    else:
        dst.set_state(src.get_state())


def seed_from(random_state) -> int:
    """A 63-bit seed for the native generator, drawn from random_state."""
    rs = check_random_state(random_state)
    if isinstance(rs, np.random.Generator):
        return int(rs.integers(0, 2**63 - 1))
    return int(rs.randint(0, 2**63 - 1, dtype=np.int64))

# ------------------------------------------------------------------ kinds of array


def is_tensor(x) -> bool:
    """True for a torch.Tensor, without importing torch when it is not loaded."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def to_numpy(a):
    """NumPy view/copy of a tensor (host), anything else unchanged."""
    if is_tensor(a):
        return a.detach().cpu().numpy()
    return a


def as_tensor(a, device):
    import torch

    if is_tensor(a):
        return a.to(device)
    return torch.as_tensor(np.asarray(a), device=device)


def torch_dtype(a):
    import torch

    if is_tensor(a):
        return a.dtype
    return torch.float32 if np.asarray(a).dtype == np.float32 else torch.float64


# ------------------------------------------------- estimator input (scikit-learn's errors)


def is_arraylike_not_scalar(x) -> bool:
    """scikit-learn's "array-like" parameter constraint."""
    arraylike = hasattr(x, "__len__") or hasattr(x, "shape") or hasattr(x, "__array__")
    return arraylike and not np.isscalar(x)


def is_sparse(X) -> bool:
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover
        return False
    return sp.issparse(X)


def feature_names(X):
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


def feature_names_mismatch(fitted, names) -> str:
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


def canonical_float(arr: np.ndarray) -> np.ndarray:
    # An unpickled or memory-mapped array can carry a float64 dtype object that equals,
    # but is not, NumPy's float64 singleton, and the native layer dispatches on identity:
    # a view with the canonical dtype is free and reads the same memory.
    canonical = np.dtype(np.float32) if arr.dtype == np.float32 else np.dtype(np.float64)
    if arr.dtype is not canonical:
        arr = arr.view(canonical)
    return arr


def as_2d_float(X, context: str = " by GaussianMixture") -> np.ndarray:
    """X as a 2-D float32/float64 array, with scikit-learn's check_array errors."""
    if is_sparse(X):
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
    return canonical_float(arr)


def check_n_features(n_features, expected) -> None:
    """scikit-learn's error for X with another number of features than in fit."""
    if n_features != expected:
        raise ValueError(
            f"X has {n_features} features, but GaussianMixture is expecting {expected} features as input."
        )


def check_finite(X: np.ndarray, name: str = "X"):
    row = _core.first_nonfinite_row(X) if X.size else -1
    if row >= 0:
        if np.isnan(X[row]).any():
            raise ValueError(f"Input {name} contains NaN (first at row {row}).")
        raise ValueError(
            f"Input {name} contains infinity or a value too large for {X.dtype!r} "
            f"(first at row {row})."
        )


def check_no_infinity(X: np.ndarray, name: str = "X"):
    """scikit-learn's error for an infinity in X; NaN entries pass (missing values)."""
    if X.size and not (np.isfinite(np.fmax.reduce(X, axis=None)) and np.isfinite(np.fmin.reduce(X, axis=None))):
        rows = np.flatnonzero(np.isinf(X).any(axis=1))
        if rows.size:
            raise ValueError(
                f"Input {name} contains infinity or a value too large for {X.dtype!r} (first at row {rows[0]})."
            )


def check_sample_weight(sample_weight, n_samples: int, dtype, allow_zero_sum=False) -> Optional[np.ndarray]:
    """scikit-learn's check_sample_weight, plus 'finite' and 'not all zero' (unless
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


def is_dask_array(X) -> bool:
    """True for a dask.array.Array, without importing dask when it is not loaded."""
    da = sys.modules.get("dask.array")
    return da is not None and isinstance(X, getattr(da, "Array", ()))


def is_memory_mapped(X) -> bool:
    import mmap

    base = X
    while isinstance(base, np.ndarray):
        if isinstance(base, np.memmap):
            return True
        base = base.base
    return isinstance(base, mmap.mmap)


def needs_blockwise_conversion(X) -> bool:
    """A 2-D memory-mapped array that fit could only use after converting all of it
    (another dtype or byte order, or not C-contiguous)."""
    if not isinstance(X, np.ndarray) or X.ndim != 2 or X.dtype.kind not in "fiub":
        return False
    if not is_memory_mapped(X):
        return False
    native = X.dtype == np.float32 or X.dtype == np.float64
    return not (native and X.flags.c_contiguous)


def check_shape(param, shape, name):
    if param.shape != shape:
        raise ValueError(
            "The parameter '%s' should have the shape of %s, but got %s" % (name, shape, param.shape)
        )


def init_array(value, allow_nd=False) -> np.ndarray:
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
    return canonical_float(arr)


def check_weights_init(weights, n_components):
    weights = init_array(weights)
    check_shape(weights, (n_components,), "weights")
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


def check_means_init(means, n_components, n_features):
    means = init_array(means)
    check_shape(means, (n_components, n_features), "means")
    return means.astype(np.float64)


def check_precisions_init(precisions, covariance_type, n_components, n_features):
    precisions = init_array(precisions, allow_nd=covariance_type == "full")
    check_shape(
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


