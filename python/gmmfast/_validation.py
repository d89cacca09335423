"""Input conversion and checks shared by the functional ops and the estimator."""

from __future__ import annotations

import numbers
import pickle

import numpy as np

from ._types import COVARIANCE_TYPES


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
