"""Saving and loading fitted models without pickle.

A model file is a NumPy ``.npz`` archive holding the fitted arrays (``weights``,
``means``, ``covariances``, ``precisions_cholesky``) and ``metadata``: a JSON document
with the format name and version, the gmmfast version that wrote it, the estimator's
parameters and the scalar fitted attributes. It is read with ``allow_pickle=False``, so
loading never executes code, and every field is checked: a truncated, corrupted,
wrong-version or inconsistent file raises :class:`ModelFileError` (a ValueError) that
says what is wrong.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from ._types import COVARIANCE_TYPES, param_shape

FORMAT_NAME = "gmmfast.GaussianMixture"
FORMAT_VERSION = 1
_ARRAYS = ("weights", "means", "covariances", "precisions_cholesky")
# Parameters stored in the file; array-valued *_init parameters are not (they only
# matter for a new fit) and a RandomState instance is stored as None.
_SCALAR_PARAMS = (
    "n_components",
    "covariance_type",
    "tol",
    "reg_covar",
    "max_iter",
    "n_init",
    "init_params",
    "random_state",
    "warm_start",
    "verbose",
    "verbose_interval",
    "recovery",
    "n_threads",
)
# An upper bound on what a model file may declare, so that a malicious header cannot
# make load() allocate without limit before the checks run.
_MAX_ELEMENTS = 1 << 31


class ModelFileError(ValueError):
    """A model file is not a valid gmmfast model (corrupt, truncated, wrong version...)."""


def _json_scalar(value):
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return None


def save_model(model, path) -> None:
    """Write a fitted GaussianMixture to ``path`` (see the module docstring)."""
    params = model.get_params()
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "gmmfast_version": _version(),
        "dtype": str(model.means_.dtype),
        "params": {k: _json_scalar(params[k]) for k in _SCALAR_PARAMS},
        "n_features_in": int(model.n_features_in_),
        "feature_names_in": (
            [str(n) for n in model.feature_names_in_] if hasattr(model, "feature_names_in_") else None
        ),
        "converged": bool(model.converged_),
        "n_iter": int(model.n_iter_),
        "lower_bound": float(model.lower_bound_),
        "lower_bounds": [float(v) for v in model.lower_bounds_],
        "reg_covar_used": float(getattr(model, "reg_covar_", model.reg_covar)),
        "n_reseeds": int(getattr(model, "n_reseeds_", 0)),
    }
    arrays = {name: np.ascontiguousarray(getattr(model, name + "_")) for name in _ARRAYS}
    path = os.fspath(path)
    # np.savez appends .npz to names without it; write to the exact path the user gave
    with open(path, "wb") as fh:
        np.savez(fh, metadata=np.array(json.dumps(meta)), **arrays)


def _version() -> str:
    from . import __version__

    return __version__


def _fail(path, why) -> "ModelFileError":
    return ModelFileError(f"{path}: not a valid gmmfast model file: {why}")


def load_model(path):
    """Read a model written by :meth:`GaussianMixture.save`; returns a fitted estimator."""
    from .mixture import GaussianMixture, _precisions_from_cholesky

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise _fail(path, f"cannot be read as an .npz archive ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _fail(path, "it is a single .npy array, not an .npz archive")
    with archive:
        names = set(archive.files)
        missing = [n for n in ("metadata",) + _ARRAYS if n not in names]
        if missing:
            raise _fail(path, f"missing entries {missing}")
        meta = _read_metadata(archive, path)
        arrays = {}
        for name in _ARRAYS:
            arrays[name] = _read_array(archive, name, path)
    return _build(meta, arrays, path, GaussianMixture, _precisions_from_cholesky)


def _read_metadata(archive, path) -> dict:
    try:
        raw = archive["metadata"]
    except Exception as exc:  # corrupted member: zlib/format errors of several kinds
        raise _fail(path, f"metadata cannot be read ({exc})") from exc
    if raw.dtype.kind != "U" or raw.ndim != 0:
        raise _fail(path, "metadata is not a JSON string")
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise _fail(path, f"metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise _fail(path, f"format is {meta.get('format') if isinstance(meta, dict) else meta!r}, expected {FORMAT_NAME!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise _fail(path, f"format_version {version!r} is not a positive integer")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written with model format version {version} "
            f"(gmmfast {meta.get('gmmfast_version', '?')}), but this gmmfast "
            f"({_version()}) reads version {FORMAT_VERSION} at most: upgrade gmmfast"
        )
    return meta


def _read_array(archive, name, path) -> np.ndarray:
    try:
        a = archive[name]
    except Exception as exc:
        raise _fail(path, f"array {name!r} cannot be read ({exc})") from exc
    if a.dtype not in (np.float32, np.float64):
        raise _fail(path, f"array {name!r} has dtype {a.dtype}, expected float32 or float64")
    if a.size > _MAX_ELEMENTS:
        raise _fail(path, f"array {name!r} is implausibly large ({a.size} elements)")
    if not np.all(np.isfinite(a)):
        raise _fail(path, f"array {name!r} contains NaN or infinity")
    return a


def _get_int(meta, key, path) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, f"metadata field {key!r} is {value!r}, expected an integer")
    return value


def _build(meta, arrays, path, GaussianMixture, precisions_from_cholesky):
    params = meta.get("params")
    if not isinstance(params, dict):
        raise _fail(path, "metadata has no 'params' object")
    unknown = set(params) - set(_SCALAR_PARAMS)
    if unknown:
        raise _fail(path, f"unknown parameters {sorted(unknown)}")
    model = GaussianMixture()
    try:
        model.set_params(**params)
        model._check_params()
    except (TypeError, ValueError) as exc:
        raise _fail(path, f"invalid parameters ({exc})") from exc
    K = model.n_components
    t = model.covariance_type
    if t not in COVARIANCE_TYPES:
        raise _fail(path, f"covariance_type {t!r}")
    D = _get_int(meta, "n_features_in", path)
    if D < 1:
        raise _fail(path, f"n_features_in is {D}")
    dtype = meta.get("dtype")
    if dtype not in ("float32", "float64"):
        raise _fail(path, f"dtype {dtype!r}")
    expected = {
        "weights": (K,),
        "means": (K, D),
        "covariances": param_shape(t, K, D),
        "precisions_cholesky": param_shape(t, K, D),
    }
    for name, shape in expected.items():
        a = arrays[name]
        if a.shape != shape:
            raise _fail(path, f"array {name!r} has shape {a.shape}, expected {shape}")
        if str(a.dtype) != dtype:
            raise _fail(path, f"array {name!r} is {a.dtype} but the model is {dtype}")
    w = arrays["weights"].astype(np.float64)
    if np.any(w < 0) or not np.isclose(w.sum(), 1.0, atol=1e-5):
        raise _fail(path, "weights are not a probability vector")
    U = arrays["precisions_cholesky"].astype(np.float64)
    if t in ("full", "tied"):
        mats = U if t == "full" else U[None]
        if np.any(np.tril(mats, -1) != 0) or np.any(np.diagonal(mats, axis1=1, axis2=2) <= 0):
            raise _fail(path, "precisions_cholesky is not upper triangular with a positive diagonal")
    elif np.any(U <= 0):
        raise _fail(path, "precisions_cholesky must be positive")
    names = meta.get("feature_names_in")
    if names is not None and (
        not isinstance(names, list) or len(names) != D or not all(isinstance(n, str) for n in names)
    ):
        raise _fail(path, "feature_names_in must be a list of n_features strings")
    lower_bounds = meta.get("lower_bounds", [])
    if not isinstance(lower_bounds, list) or not all(isinstance(v, (int, float)) for v in lower_bounds):
        raise _fail(path, "lower_bounds must be a list of numbers")

    model.weights_ = arrays["weights"]
    model.means_ = arrays["means"]
    model.covariances_ = arrays["covariances"]
    model.precisions_cholesky_ = arrays["precisions_cholesky"]
    model.precisions_ = precisions_from_cholesky(U, t).astype(dtype)
    model.n_features_in_ = D
    if names is not None:
        model.feature_names_in_ = np.asarray(names, dtype=object)
    model.converged_ = bool(meta.get("converged", False))
    model.n_iter_ = _get_int(meta, "n_iter", path)
    lb = meta.get("lower_bound")
    if not isinstance(lb, (int, float)):
        raise _fail(path, f"lower_bound is {lb!r}")
    model.lower_bound_ = float(lb)
    model.lower_bounds_ = [float(v) for v in lower_bounds]
    model.reg_covar_ = float(meta.get("reg_covar_used", model.reg_covar))
    model.n_reseeds_ = int(meta.get("n_reseeds", 0))
    return model
