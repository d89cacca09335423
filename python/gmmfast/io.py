"""Saving and loading fitted models without pickle.

A model file is a NumPy ``.npz`` archive holding the fitted arrays (``weights``,
``means``, ``covariances``, ``precisions_cholesky``) and ``metadata``: a JSON document
with the format name and version, the gmmfast version that wrote it, the estimator's
parameters and the scalar fitted attributes. It is read with ``allow_pickle=False``, so
loading never executes code, and every field is checked: a truncated, corrupted,
wrong-version or inconsistent file raises :class:`ModelFileError` (a ValueError) that
says what is wrong.

This module knows nothing of the estimator: it reads and writes a :class:`FittedModel`,
a plain container of the parameters and fitted attributes
(``GaussianMixture.save`` builds one, :func:`gmmfast.load` turns one into an estimator).

Two kinds of model share the format: ``gmmfast.GaussianMixture`` files (format version
1, unchanged) and ``gmmfast.BayesianGaussianMixture`` files, which add the variational
posterior's arrays (``weight_concentration``, ``mean_precision``,
``degrees_of_freedom``) and the priors in effect (``mean_prior``, ``covariance_prior``
arrays, the scalar priors in the metadata); :attr:`FittedModel.kind` says which.

Adversarial files (issue 8): only regular files are opened (a FIFO or device would block
or never end; symlinks are followed to their target); every member's size is bounded
before it is read (a forged header, a zip bomb or a huge metadata string cannot make
load() allocate without limit); arrays are read only after their declared shape and
dtype match the metadata, and a model too large for the available memory raises
:class:`ModelFileTooLarge` (a ModelFileError and a MemoryError). Saving writes a
temporary file next to the target and renames it over the target, so an interrupted
save never leaves a truncated model in place of a good one.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import _core
from ._params import precisions_from_cholesky
from ._settings import PARAM_DEFAULTS, check_params
from ._types import param_shape
from ._validation import n_threads_arg, to_numpy
from ._variational import BAYES_PARAM_DEFAULTS, check_prior_params

FORMAT_NAME = "gmmfast.GaussianMixture"
BAYES_FORMAT_NAME = "gmmfast.BayesianGaussianMixture"
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
    "learning_decay",
    "learning_offset",
    "missing",
)
# the Bayesian mixture's scalar parameters (mean_prior and covariance_prior, array-like,
# are stored as the arrays of the priors in effect)
_BAYES_ARRAYS = ("weight_concentration", "mean_precision", "degrees_of_freedom", "mean_prior", "covariance_prior")
_BAYES_SCALARS = ("weight_concentration_prior_", "mean_precision_prior_", "degrees_of_freedom_prior_",
                  "mean_prior_given", "covariance_prior_given")
# An upper bound on what a model file may declare, so that a malicious header cannot
# make load() allocate without limit before the checks run.
_MAX_ELEMENTS = 1 << 31
# The metadata JSON is a few kB; 16 Mi characters leave room for long feature-name lists.
_MAX_METADATA_CHARS = 1 << 24
# save_model stores members uncompressed; a compressed member expanding more than this
# (beyond 1 MiB) is a zip bomb, not model parameters (floats compress ~1-2x).
_MAX_COMPRESSION_RATIO = 100


class ModelFileError(ValueError):
    """A model file is not a valid gmmfast model (corrupt, truncated, wrong version...)."""


class ModelFileTooLarge(ModelFileError, MemoryError):
    """The arrays a model file declares do not fit in the available memory."""


@dataclass
class FittedModel:
    """What a model file holds: the estimator's scalar parameters, the fitted arrays
    (NumPy, in the fitted dtype) and the scalar fitted attributes. ``precisions`` is
    filled in by :func:`read_model` (U Uᵀ of the stored factor, in the stored dtype)."""

    params: dict
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray
    n_features_in: int
    converged: bool
    n_iter: int
    lower_bound: float
    lower_bounds: list = field(default_factory=list)
    feature_names_in: Optional[list] = None
    reg_covar_used: Optional[float] = None
    n_reseeds: int = 0
    n_batch_iter: Optional[int] = None
    precisions: Optional[np.ndarray] = None
    #: "GaussianMixture" or "BayesianGaussianMixture"
    kind: str = "GaussianMixture"
    #: the Bayesian mixture's posterior and prior arrays (_BAYES_ARRAYS, float64) and
    #: scalar priors (_BAYES_SCALARS); None for a GaussianMixture
    bayes: Optional[dict] = None


def _json_scalar(value):
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    return None


def save_model(model: FittedModel, path) -> None:
    """Write a fitted model to ``path`` (see the module docstring)."""
    bayes = model.kind == "BayesianGaussianMixture"
    defaults = BAYES_PARAM_DEFAULTS if bayes else PARAM_DEFAULTS
    meta = {
        "format": BAYES_FORMAT_NAME if bayes else FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "gmmfast_version": _core.__version__,
        "dtype": str(to_numpy(model.means).dtype),
        # 'missing' (newer than format version 1) only when set, so that files of models
        # without it stay readable by gmmfast versions that do not know it
        "params": {
            k: _json_scalar(model.params.get(k, defaults[k]))
            for k in defaults
            if k != "missing" or model.params.get(k, defaults[k]) != defaults[k]
        },
        "n_features_in": int(model.n_features_in),
        "feature_names_in": (
            [str(n) for n in model.feature_names_in] if model.feature_names_in is not None else None
        ),
        "converged": bool(model.converged),
        "n_iter": int(model.n_iter),
        "lower_bound": float(model.lower_bound),
        "lower_bounds": [float(v) for v in model.lower_bounds],
        "reg_covar_used": float(
            model.params.get("reg_covar", PARAM_DEFAULTS["reg_covar"])
            if model.reg_covar_used is None
            else model.reg_covar_used
        ),
        "n_reseeds": int(model.n_reseeds),
    }
    if model.n_batch_iter is not None:  # fitted by online EM: partial_fit resumes its steps
        meta["n_batch_iter"] = int(model.n_batch_iter)
    # a model fitted on torch tensors is saved like any other (loading gives NumPy arrays)
    arrays = {name: np.ascontiguousarray(to_numpy(getattr(model, name))) for name in _ARRAYS}
    if bayes:
        meta["bayes"] = {k: _json_scalar(model.bayes[k]) for k in _BAYES_SCALARS}
        # np.array, not ascontiguousarray: that makes a 0-d array (tied degrees of
        # freedom, a spherical covariance_prior) 1-d
        arrays.update({k: np.array(to_numpy(model.bayes[k]), dtype=np.float64, order="C") for k in _BAYES_ARRAYS})
    write_npz_atomically(path, {"metadata": np.array(json.dumps(meta)), **arrays})


def write_npz_atomically(path, arrays: dict) -> None:
    """``np.savez`` of ``arrays`` to exactly ``path`` (np.savez would append .npz),
    atomically: into a temporary file beside the target (through a symlink: beside its
    target), fsync'ed, then renamed over it, so that a failure, Ctrl-C or kill -9
    half-way never replaces a good file with a truncated one.

    The temporary file's name says which file, host and process it belongs to
    (``.<name>.gmmfast-<host>-<pid>-<random>.tmp``): a writer killed half-way leaves one
    behind, and the next save to the same path removes those whose process on this host
    is gone (never a live writer's; files of other hosts sharing the folder are left to
    their own next save).
    """
    target = os.path.realpath(os.fspath(path))
    folder, name = os.path.split(target)
    _remove_stale_temporaries(folder, name)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(name) + f"{os.getpid()}-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        try:  # keep an existing file's permissions (mkstemp creates 0600)
            mode = stat.S_IMODE(os.stat(target).st_mode)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _temporary_prefix(name: str) -> str:
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:64] or "host"
    return f".{name}.gmmfast-{host}-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _remove_stale_temporaries(folder: str, name: str) -> None:
    """Removes temporary files of earlier saves to ``name`` by processes of this host
    that no longer exist."""
    prefix = _temporary_prefix(name)
    try:
        entries = os.listdir(folder or ".")
    except OSError:
        return
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(".tmp")):
            continue
        pid_text = entry[len(prefix) :].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _process_alive(int(pid_text)):
            continue
        try:
            os.unlink(os.path.join(folder, entry))
        except OSError:  # removed meanwhile, or not ours to remove
            pass


def _fail(path, why) -> "ModelFileError":
    return ModelFileError(f"{path}: not a valid gmmfast model file: {why}")


def read_model(path) -> FittedModel:
    """Read a model written by :meth:`GaussianMixture.save`, every field checked.

    Raises
    ------
    FileNotFoundError
        when ``path`` does not exist.
    ModelFileError
        (a ValueError) for anything else that is not a valid model file, saying what.
    """
    path = os.fspath(path)
    with _open_regular_file(path) as fh:
        magic = fh.read(4)
        fh.seek(0)
        if magic[:2] != b"PK" and magic != b"\x93NUM":
            # np.load would call any other bytes "pickled (object) data"
            raise _fail(path, "cannot be read as an .npz archive: it does not start with the zip signature")
        try:
            archive = np.load(fh, allow_pickle=False)
        except Exception as exc:  # zipfile, zlib, OSError, ValueError (pickles), ...
            raise _fail(path, f"cannot be read as an .npz archive ({exc})") from exc
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise _fail(path, "it is a single .npy array, not an .npz archive")
        with archive:
            names = set(archive.files)
            missing = [n for n in ("metadata",) + _ARRAYS if n not in names]
            if missing:
                raise _fail(path, f"missing entries {missing}")
            _check_member_size(archive, "metadata", path)
            meta = _read_metadata(archive, path)
            bayes = meta["format"] == BAYES_FORMAT_NAME
            members = _ARRAYS + (_BAYES_ARRAYS if bayes else ())
            missing = [n for n in members if n not in names]
            if missing:
                raise _fail(path, f"missing entries {missing}")
            for name in members:
                _check_member_size(archive, name, path)
            params, expected, dtype = _params_from_metadata(meta, path)
            _check_memory(expected, dtype, path)
            arrays = {}
            for name in members:
                # shape and dtype come from the member's header, checked before any
                # allocation: a forged header cannot make load() allocate without limit
                _check_header(archive, name, expected[name], dtype if name in _ARRAYS else "float64", path)
                arrays[name] = _read_array(archive, name, path)
    model = _fitted_model(params, meta, arrays, dtype, path)
    if bayes:
        model.kind = "BayesianGaussianMixture"
        model.bayes = _bayes_fields(meta, arrays, params, path)
    return model


def _open_regular_file(path):
    """``path`` opened for reading, if it is a regular file (after symlinks). Opened
    non-blocking and checked on the descriptor: a FIFO would block load() forever, a
    device (/dev/zero) never ends, and a check before opening could be raced."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model file")
    if os.path.isdir(path):
        raise _fail(path, "cannot be read: it is a directory")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such model file") from None
    except OSError as exc:
        raise _fail(path, f"cannot be opened ({exc})") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _fail(path, "cannot be read: it is not a regular file (a FIFO, socket or device)")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_member_size(archive, name, path):
    """Bounds a member's uncompressed size (from the zip directory) before reading it."""
    try:
        info = archive.zip.getinfo(name + ".npy")
    except KeyError as exc:
        raise _fail(path, f"missing entry {name!r}") from exc
    if name == "metadata" and info.file_size > 4 * _MAX_METADATA_CHARS + 4096:
        raise _fail(path, f"metadata is implausibly large ({info.file_size} bytes)")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > max(
        1 << 20, _MAX_COMPRESSION_RATIO * info.compress_size
    ):
        raise _fail(
            path,
            f"entry {name!r} expands from {info.compress_size} to {info.file_size} bytes "
            "(a zip bomb?); gmmfast writes model files uncompressed",
        )


def _check_memory(expected, dtype, path):
    """The declared arrays, and the float64 copies the checks make, must fit in memory."""
    count = sum(float(np.prod(shape, dtype=np.float64)) for shape in expected.values())
    try:
        _core.check_memory(
            "load",
            [("model arrays and their float64 copies for the checks",
              count * (np.dtype(dtype).itemsize + 3 * 8))],
            "The model is too large for this machine.",
        )
    except MemoryError as exc:
        raise ModelFileTooLarge(f"{path}: {exc}") from None


def _read_metadata(archive, path) -> dict:
    # the header first: a forged one (shape (10**9,), dtype <U10**8) would make reading
    # allocate without limit
    shape, dtype = _read_header(archive, "metadata", path)
    if dtype.kind != "U" or shape != ():
        raise _fail(path, "metadata is not a JSON string")
    if dtype.itemsize > 4 * _MAX_METADATA_CHARS:
        raise _fail(path, f"metadata is implausibly large ({dtype.itemsize // 4} characters)")
    try:
        raw = archive["metadata"]
    except Exception as exc:  # corrupted member: zlib/format errors of several kinds
        raise _fail(path, f"metadata cannot be read ({exc})") from exc
    if raw.dtype.kind != "U" or raw.ndim != 0:
        raise _fail(path, "metadata is not a JSON string")
    try:
        meta = json.loads(str(raw))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit, nesting
        raise _fail(path, f"metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") not in (FORMAT_NAME, BAYES_FORMAT_NAME):
        found = meta.get("format") if isinstance(meta, dict) else meta
        raise _fail(path, f"format is {found!r}, expected {FORMAT_NAME!r} or {BAYES_FORMAT_NAME!r}")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _fail(path, f"format_version {version!r} is not a positive integer")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written with model format version {version} "
            f"(gmmfast {meta.get('gmmfast_version', '?')}), but this gmmfast "
            f"({_core.__version__}) reads version {FORMAT_VERSION} at most: upgrade gmmfast"
        )
    return meta


def _read_header(archive, name, path):
    """(shape, dtype) from a member's .npy header, without reading its data."""
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
        what = "metadata" if name == "metadata" else f"array {name!r}"
        raise _fail(path, f"{what} cannot be read ({exc})") from exc
    return tuple(got_shape), got_dtype


def _check_header(archive, name, shape, dtype, path):
    got_shape, got_dtype = _read_header(archive, name, path)
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


def _get_int(meta, key, path, low=0, high=1 << 62) -> int:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(path, f"metadata field {key!r} is {_short(value)}, expected an integer in [{low}, {high}]")
    return value


def _as_float(value):
    """float(value) for a JSON number, None for anything else (bools, huge ints)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range
        return None


def _get_number(meta, key, path, default=None, allow=lambda v: np.isfinite(v)) -> float:
    value = meta.get(key, default)
    number = _as_float(value)
    if number is None or not allow(number):
        raise _fail(path, f"metadata field {key!r} is {_short(value)}")
    return number


def _short(value, limit=80) -> str:
    text = repr(value) if not isinstance(value, int) or value.bit_length() < 128 else "a huge integer"
    return text if len(text) <= limit else text[:limit] + "..."


def _params_from_metadata(meta, path):
    """The estimator's parameters (checked as the estimator checks them), the expected
    array shapes and dtype."""
    params = meta.get("params")
    if not isinstance(params, dict):
        raise _fail(path, "metadata has no 'params' object")
    bayes = meta["format"] == BAYES_FORMAT_NAME
    defaults = BAYES_PARAM_DEFAULTS if bayes else PARAM_DEFAULTS
    unknown = set(params) - set(defaults)
    if unknown:
        raise _fail(path, f"unknown parameters {sorted(unknown)[:10]}")
    for key, value in params.items():
        # save_model writes JSON scalars only; a list or object would reach the estimator
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise _fail(path, f"parameter {key!r} is {type(value).__name__}, expected a number, string or null")
    params = {**defaults, **params}
    try:
        check_params(params)
        if bayes:
            check_prior_params(params)
        n_threads_arg(params["n_threads"])  # the estimator checks n_threads >= 1 only
    except (TypeError, ValueError) as exc:
        raise _fail(path, f"invalid parameters ({exc})") from exc
    K = params["n_components"]
    t = params["covariance_type"]
    if K > _MAX_ELEMENTS:
        raise _fail(path, f"n_components is implausibly large ({_short(K)})")
    D = _get_int(meta, "n_features_in", path, low=1)
    if D > _MAX_ELEMENTS or max(K * D, int(np.prod(param_shape(t, K, D), dtype=object))) > _MAX_ELEMENTS:
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
    if bayes:
        expected.update(
            weight_concentration=(2, K) if params["weight_concentration_prior_type"] == "dirichlet_process" else (K,),
            mean_precision=(K,),
            degrees_of_freedom=() if t == "tied" else (K,),
            mean_prior=(D,),
            covariance_prior={"full": (D, D), "tied": (D, D), "diag": (D,), "spherical": ()}[t],
        )
    return params, expected, dtype


def _bayes_fields(meta, arrays, params, path) -> dict:
    """The Bayesian mixture's posterior and priors, checked: positive concentrations,
    mean precisions and scale, degrees of freedom above n_features − 1."""
    scalars = meta.get("bayes")
    if not isinstance(scalars, dict):
        raise _fail(path, "metadata has no 'bayes' object")
    D = arrays["means"].shape[1]
    out = {k: arrays[k] for k in _BAYES_ARRAYS}
    for key in _BAYES_SCALARS[:3]:
        out[key] = _get_number(scalars, key, path, allow=lambda v: np.isfinite(v) and v > 0)
    for key in _BAYES_SCALARS[3:]:
        if not isinstance(scalars.get(key), bool):
            raise _fail(path, f"metadata field {key!r} is {_short(scalars.get(key))}, expected true or false")
        out[key] = scalars[key]
    if not (np.all(out["weight_concentration"] > 0) and np.all(out["mean_precision"] > 0)):
        raise _fail(path, "weight_concentration and mean_precision must be positive")
    if np.any(out["degrees_of_freedom"] <= D - 1) or out["degrees_of_freedom_prior_"] <= D - 1:
        raise _fail(path, f"degrees of freedom must be greater than n_features - 1 = {D - 1}")
    cov = out["covariance_prior"]
    positive = np.all(np.linalg.eigvalsh(cov) > 0) if cov.ndim == 2 else np.all(cov > 0)
    if not positive or (cov.ndim == 2 and not np.allclose(cov, cov.T)):
        raise _fail(path, "covariance_prior is not positive definite")
    return out


def _check_consistent(cov, precisions, U, t, dtype, eig, path):
    """covariances · precisions = I up to the rounding of the stored dtype (times the
    condition number): both arrays are written from one fit; a file that pairs others
    was edited or forged."""
    eps = float(np.finfo(np.dtype(dtype)).eps)
    with np.errstate(over="ignore", invalid="ignore"):
        if t in ("full", "tied"):
            C = cov if t == "full" else cov[None]
            P = precisions if t == "full" else precisions[None]
            D = C.shape[-1]
            kappa = eig[:, -1] / np.maximum(eig[:, 0], eps * eig[:, -1])
            err = np.abs(C @ P - np.eye(D)).max(axis=(1, 2))
            bad = ~(err <= 1e3 * eps * D * kappa)
        else:
            u2 = U**2
            bad = ~(np.abs(cov * u2 - 1.0) <= 1e3 * eps)
    if np.any(bad):
        raise _fail(path, "covariances and precisions_cholesky do not describe the same Gaussians")


def _fitted_model(params, meta, arrays, dtype, path) -> FittedModel:
    t = params["covariance_type"]
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
    # the precisions U Uᵀ, kept in the stored dtype, must be finite there (issue 8: a
    # float32 U of 1e20 gave precisions_ = inf), and describe the stored covariances
    with np.errstate(over="ignore", invalid="ignore"):
        precisions = precisions_from_cholesky(U, t)
        stored_precisions = precisions.astype(dtype)
    if not np.all(np.isfinite(stored_precisions)):
        raise _fail(path, f"the precisions (U Uᵀ of precisions_cholesky) overflow {dtype}")
    _check_consistent(cov, precisions, U, t, dtype, eig if t in ("full", "tied") else None, path)
    names = meta.get("feature_names_in")
    if names is not None and (
        not isinstance(names, list) or len(names) != D or not all(isinstance(n, str) for n in names)
    ):
        raise _fail(path, "feature_names_in must be a list of n_features strings")
    lower_bounds = meta.get("lower_bounds", [])
    if not isinstance(lower_bounds, list) or not all(_as_float(v) is not None for v in lower_bounds):
        raise _fail(path, "lower_bounds must be a list of numbers")
    converged = meta.get("converged")
    if not isinstance(converged, bool):
        raise _fail(path, f"metadata field 'converged' is {converged!r}, expected true or false")

    return FittedModel(
        params=params,
        weights=arrays["weights"],
        means=arrays["means"],
        covariances=arrays["covariances"],
        precisions_cholesky=arrays["precisions_cholesky"],
        precisions=stored_precisions,
        n_features_in=D,
        feature_names_in=names,
        converged=converged,
        n_iter=_get_int(meta, "n_iter", path),
        # -inf after max_iter=0, as in scikit-learn
        lower_bound=_get_number(meta, "lower_bound", path, allow=lambda v: not np.isnan(v) and v < np.inf),
        lower_bounds=[float(v) for v in lower_bounds],
        reg_covar_used=_get_number(
            meta, "reg_covar_used", path, default=params["reg_covar"], allow=lambda v: np.isfinite(v) and v >= 0
        ),
        n_reseeds=_get_int(meta, "n_reseeds", path) if "n_reseeds" in meta else 0,
        n_batch_iter=_get_int(meta, "n_batch_iter", path) if "n_batch_iter" in meta else None,
    )
