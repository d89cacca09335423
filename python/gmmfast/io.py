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
        "dtype": str(_host(model.means_).dtype),
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
    # a model fitted on torch tensors is saved like any other (loading gives NumPy arrays)
    arrays = {name: np.ascontiguousarray(_host(getattr(model, name + "_"))) for name in _ARRAYS}
    path = os.fspath(path)
    # np.savez appends .npz to names without it; write to the exact path the user gave
    with open(path, "wb") as fh:
        np.savez(fh, metadata=np.array(json.dumps(meta)), **arrays)


def _host(a):
    from ._engines import is_tensor

    return a.detach().cpu().numpy() if is_tensor(a) else a


def _version() -> str:
    from . import __version__

    return __version__


def _fail(path, why) -> "ModelFileError":
    return ModelFileError(f"{path}: not a valid gmmfast model file: {why}")


def load_model(path):
    """Read a model written by :meth:`GaussianMixture.save`; returns a fitted estimator.

    Raises
    ------
    FileNotFoundError
        when ``path`` does not exist.
    ModelFileError
        (a ValueError) for anything else that is not a valid model file, saying what.
    """
    from .mixture import GaussianMixture, _precisions_from_cholesky

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # zipfile, zlib, OSError, ValueError (pickles), ...
        raise _fail(path, f"cannot be read as an .npz archive ({exc})") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise _fail(path, "it is a single .npy array, not an .npz archive")
    with archive:
        names = set(archive.files)
        missing = [n for n in ("metadata",) + _ARRAYS if n not in names]
        if missing:
            raise _fail(path, f"missing entries {missing}")
        meta = _read_metadata(archive, path)
        model, expected, dtype = _model_from_metadata(meta, path, GaussianMixture)
        arrays = {}
        for name in _ARRAYS:
            # shape and dtype come from the member's header, checked before any
            # allocation: a forged header cannot make load() allocate without limit
            _check_header(archive, name, expected[name], dtype, path)
            arrays[name] = _read_array(archive, name, path)
    return _set_fitted(model, meta, arrays, dtype, path, _precisions_from_cholesky)


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
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise _fail(path, f"format is {found!r}, expected {FORMAT_NAME!r}")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _fail(path, f"format_version {version!r} is not a positive integer")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written with model format version {version} "
            f"(gmmfast {meta.get('gmmfast_version', '?')}), but this gmmfast "
            f"({_version()}) reads version {FORMAT_VERSION} at most: upgrade gmmfast"
        )
    return meta


def _check_header(archive, name, shape, dtype, path):
    try:
        with archive.zip.open(name + ".npy") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                got_shape, _, got_dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                got_shape, _, got_dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
    except Exception as exc:
        raise _fail(path, f"array {name!r} cannot be read ({exc})") from exc
    if got_dtype != np.dtype(dtype):
        raise _fail(path, f"array {name!r} has dtype {got_dtype}, expected {dtype}")
    if tuple(got_shape) != tuple(shape):
        raise _fail(path, f"array {name!r} has shape {tuple(got_shape)}, expected {shape}")


def _read_array(archive, name, path) -> np.ndarray:
    try:
        a = archive[name]
    except Exception as exc:
        raise _fail(path, f"array {name!r} cannot be read ({exc})") from exc
    if not np.all(np.isfinite(a)):
        raise _fail(path, f"array {name!r} contains NaN or infinity")
    return a


def _get_int(meta, key, path, low=0) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _fail(path, f"metadata field {key!r} is {value!r}, expected an integer >= {low}")
    return value


def _get_number(meta, key, path, default=None, allow=lambda v: np.isfinite(v)) -> float:
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not allow(float(value)):
        raise _fail(path, f"metadata field {key!r} is {value!r}")
    return float(value)


def _model_from_metadata(meta, path, GaussianMixture):
    """The estimator with its parameters, and the expected array shapes and dtype."""
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
    if K > _MAX_ELEMENTS:
        raise _fail(path, f"n_components is implausibly large ({K})")
    D = _get_int(meta, "n_features_in", path, low=1)
    if D > _MAX_ELEMENTS or K * D * (D if t == "full" else 1) > _MAX_ELEMENTS:
        raise _fail(path, f"the model is implausibly large ({K} components, {D} features)")
    dtype = meta.get("dtype")
    if dtype not in ("float32", "float64"):
        raise _fail(path, f"dtype {dtype!r}")
    expected = {
        "weights": (K,),
        "means": (K, D),
        "covariances": param_shape(t, K, D),
        "precisions_cholesky": param_shape(t, K, D),
    }
    return model, expected, dtype


def _set_fitted(model, meta, arrays, dtype, path, precisions_from_cholesky):
    t = model.covariance_type
    D = arrays["means"].shape[1]
    w = arrays["weights"].astype(np.float64)
    if np.any(w < 0) or not np.isclose(w.sum(), 1.0, atol=1e-5):
        raise _fail(path, "weights are not a probability vector")
    U = arrays["precisions_cholesky"].astype(np.float64)
    cov = arrays["covariances"].astype(np.float64)
    if t in ("full", "tied"):
        mats = U if t == "full" else U[None]
        if np.any(np.tril(mats, -1) != 0) or np.any(np.diagonal(mats, axis1=1, axis2=2) <= 0):
            raise _fail(path, "precisions_cholesky is not upper triangular with a positive diagonal")
        cmats = cov if t == "full" else cov[None]
        scale = np.abs(cmats).max(axis=(1, 2), keepdims=True)
        if np.any(np.abs(cmats - np.swapaxes(cmats, 1, 2)) > 1e-5 * scale):
            raise _fail(path, "covariances are not symmetric")
        # positive definite up to the rounding of the stored dtype (an ill-conditioned
        # float32 covariance may lose definiteness in its last bits only)
        eig = np.linalg.eigvalsh(0.5 * (cmats + np.swapaxes(cmats, 1, 2)))
        slack = 100.0 * float(np.finfo(np.dtype(dtype)).eps) * cmats.shape[-1]
        if np.any(eig[:, -1] <= 0) or np.any(eig[:, 0] < -slack * eig[:, -1]):
            raise _fail(path, "covariances are not positive definite")
    elif np.any(U <= 0):
        raise _fail(path, "precisions_cholesky must be positive")
    elif np.any(cov <= 0):
        raise _fail(path, "covariances must be positive")
    names = meta.get("feature_names_in")
    if names is not None and (
        not isinstance(names, list) or len(names) != D or not all(isinstance(n, str) for n in names)
    ):
        raise _fail(path, "feature_names_in must be a list of n_features strings")
    lower_bounds = meta.get("lower_bounds", [])
    if not isinstance(lower_bounds, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in lower_bounds
    ):
        raise _fail(path, "lower_bounds must be a list of numbers")
    converged = meta.get("converged")
    if not isinstance(converged, bool):
        raise _fail(path, f"metadata field 'converged' is {converged!r}, expected true or false")

    model.weights_ = arrays["weights"]
    model.means_ = arrays["means"]
    model.covariances_ = arrays["covariances"]
    model.precisions_cholesky_ = arrays["precisions_cholesky"]
    model.precisions_ = precisions_from_cholesky(U, t).astype(dtype)
    model.n_features_in_ = D
    if names is not None:
        model.feature_names_in_ = np.asarray(names, dtype=object)
    model.converged_ = converged
    model.n_iter_ = _get_int(meta, "n_iter", path)
    # -inf after max_iter=0, as in scikit-learn
    model.lower_bound_ = _get_number(meta, "lower_bound", path, allow=lambda v: not np.isnan(v) and v < np.inf)
    model.lower_bounds_ = [float(v) for v in lower_bounds]
    model.reg_covar_ = _get_number(
        meta, "reg_covar_used", path, default=model.reg_covar, allow=lambda v: np.isfinite(v) and v >= 0
    )
    model.n_reseeds_ = _get_int(meta, "n_reseeds", path) if "n_reseeds" in meta else 0
    return model
