"""Checkpoints of a running fit: the EM driver's state every N iterations, so that a fit
killed half-way (kill -9, a lost node, a time limit) resumes where it was.

A checkpoint is an ``.npz`` archive in the model files' safe format (no pickle, read
with ``allow_pickle=False``, every field checked) written atomically
(:func:`gmmfast.io.write_npz_atomically`): the current mixture (float64, exactly), the
iteration, the lower bounds so far, the recovery bookkeeping, the best run of the
earlier initialisations and the random generator's state for the later ones. Resuming
from it repeats exactly the arithmetic the uninterrupted fit would have done, so the
final model is the same, bit for bit with the same thread count.

A checkpoint belongs to one fit: it records a fingerprint of the settings and of the
data (shape, dtype, rows with weight, column means) and a fit of something else
refuses to resume from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ._types import MixtureParams
from .io import write_npz_atomically

FORMAT_NAME = "gmmfast.EMCheckpoint"
FORMAT_VERSION = 1
_PARAM_ARRAYS = ("weights", "means", "covariances", "precisions_cholesky")
# settings that do not change the result's numbers (or change only their rounding)
_NOT_FINGERPRINTED = ("n_threads",)


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or belongs to another fit."""


@dataclass
class RunRecord:
    """A finished initialisation's result (the best so far)."""

    params: MixtureParams
    n_iter: int
    lower_bound: float
    lower_bounds: list
    converged: bool
    reg_covar: float
    n_reseeds: int


@dataclass
class FitState:
    """Where a fit is: initialisation ``init``, after iteration ``n_iter`` of it."""

    init: int
    n_iter: int
    params: MixtureParams  # host, float64
    lower_bound: float
    lower_bounds: list
    restarted: bool
    reg_covar: float
    n_reseeds: int
    best: Optional[RunRecord] = None
    max_lower_bound: float = -np.inf
    random_state: Optional[dict] = None
    fingerprint: dict = field(default_factory=dict)


def fingerprint(settings, source, warm_start, inits) -> dict:
    """What must be equal for a checkpoint to belong to this fit (``warm_start``: the
    driver's WarmStart or None)."""
    s = {k: v for k, v in dataclasses.asdict(settings).items() if k not in _NOT_FINGERPRINTED}
    means = np.asarray(source.column_means(), dtype=np.float64)
    return {
        "settings": s,
        "warm_start": None if warm_start is None else {
            "lower_bound": float(warm_start.lower_bound).hex(),
            "means": [float(v).hex() for v in np.ravel(warm_start.params.means)],
        },
        "inits": [None if a is None else np.asarray(a, np.float64).tolist() for a in inits],
        "n_features": int(source.n_features),
        "n_rows": int(source.n_rows),
        "dtype": str(np.dtype(source.dtype)),
        # hex: exact, and JSON keeps it without rounding
        "column_means": [float(v).hex() for v in means],
    }


def rng_state(rs) -> Optional[dict]:
    """The state of a RandomState or Generator as JSON-able data."""
    if isinstance(rs, np.random.Generator):
        return {"kind": "Generator", "state": rs.bit_generator.state}
    if isinstance(rs, np.random.RandomState):
        name, keys, pos, has_gauss, cached = rs.get_state()
        return {"kind": "RandomState", "name": name, "keys": keys.tolist(), "pos": int(pos),
                "has_gauss": int(has_gauss), "cached_gaussian": float(cached).hex()}
    return None


def set_rng_state(rs, state: Optional[dict]) -> None:
    if state is None:
        return
    if state["kind"] == "Generator" and isinstance(rs, np.random.Generator):
        rs.bit_generator.state = state["state"]
    elif state["kind"] == "RandomState" and isinstance(rs, np.random.RandomState):
        rs.set_state((state["name"], np.asarray(state["keys"], dtype=np.uint32), state["pos"],
                      state["has_gauss"], float.fromhex(state["cached_gaussian"])))
    else:
        raise CheckpointError(f"the checkpoint's random generator is a {state['kind']}, this fit's a {type(rs).__name__}")


class Checkpoint:
    """Writes a fit's state to ``path`` every ``every`` iterations and reads it back."""

    def __init__(self, path, every: int):
        self.path = os.fspath(path)
        self.every = int(every)

    def due(self, n_iter: int) -> bool:
        return n_iter % self.every == 0

    def save(self, state: FitState) -> None:
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "fingerprint": state.fingerprint,
            "init": state.init,
            "n_iter": state.n_iter,
            "lower_bound": _hex(state.lower_bound),
            "lower_bounds": [_hex(v) for v in state.lower_bounds],
            "restarted": bool(state.restarted),
            "reg_covar": _hex(state.reg_covar),
            "n_reseeds": int(state.n_reseeds),
            "max_lower_bound": _hex(state.max_lower_bound),
            "random_state": state.random_state,
            "covariance_type": state.params.covariance_type,
            "best": None,
        }
        arrays = _pack("params", state.params)
        if state.best is not None:
            b = state.best
            meta["best"] = {
                "n_iter": b.n_iter,
                "lower_bound": _hex(b.lower_bound),
                "lower_bounds": [_hex(v) for v in b.lower_bounds],
                "converged": bool(b.converged),
                "reg_covar": _hex(b.reg_covar),
                "n_reseeds": int(b.n_reseeds),
            }
            arrays.update(_pack("best", b.params))
        write_npz_atomically(self.path, {"metadata": np.array(json.dumps(meta)), **arrays})

    def load(self, expected_fingerprint: dict, params_type=MixtureParams) -> Optional[FitState]:
        """The state saved at ``path`` (None when there is no file); raises
        CheckpointError when it cannot be read or belongs to another fit.
        ``params_type``: the class of the driver model's parameters (MixtureParams, or
        a subclass whose ``ARRAYS`` names the arrays it holds)."""
        if not os.path.exists(self.path):
            return None
        try:
            with np.load(self.path, allow_pickle=False) as archive:
                meta = json.loads(str(archive["metadata"]))
                arrays = {name: archive[name] for name in archive.files if name != "metadata"}
            if meta.get("format") != FORMAT_NAME or meta.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format')!r} version {meta.get('format_version')!r}")
            t = meta["covariance_type"]
            state = FitState(
                init=int(meta["init"]),
                n_iter=int(meta["n_iter"]),
                params=_params(t, arrays, "params", params_type),
                lower_bound=_float(meta["lower_bound"]),
                lower_bounds=[_float(v) for v in meta["lower_bounds"]],
                restarted=bool(meta["restarted"]),
                reg_covar=_float(meta["reg_covar"]),
                n_reseeds=int(meta["n_reseeds"]),
                max_lower_bound=_float(meta["max_lower_bound"]),
                random_state=meta["random_state"],
                fingerprint=meta["fingerprint"],
            )
            if meta["best"] is not None:
                b = meta["best"]
                state.best = RunRecord(
                    _params(t, arrays, "best", params_type), int(b["n_iter"]), _float(b["lower_bound"]),
                    [_float(v) for v in b["lower_bounds"]], bool(b["converged"]), _float(b["reg_covar"]),
                    int(b["n_reseeds"]),
                )
        except Exception as exc:  # zip, JSON, missing keys, wrong types: not a checkpoint
            raise CheckpointError(f"{self.path}: not a readable gmmfast checkpoint ({exc})") from exc
        if state.fingerprint != expected_fingerprint:
            differ = sorted(k for k in expected_fingerprint if state.fingerprint.get(k) != expected_fingerprint[k])
            raise CheckpointError(
                f"{self.path}: the checkpoint belongs to another fit (its {', '.join(differ)} differ from "
                "this fit's); remove the file or choose another checkpoint path"
            )
        return state

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def _hex(v: float) -> str:
    return float(v).hex()


def _float(v) -> float:
    return float.fromhex(v) if isinstance(v, str) else float(v)


def _names(params_type) -> tuple:
    return getattr(params_type, "ARRAYS", _PARAM_ARRAYS)


def _pack(prefix, params) -> dict:
    return {f"{prefix}_{n}": np.asarray(getattr(params, n), np.float64) for n in _names(type(params))}


def _params(t, arrays, prefix, params_type=MixtureParams) -> MixtureParams:
    names = _names(params_type)
    values = {n: np.asarray(arrays[f"{prefix}_{n}"], dtype=np.float64) for n in names}
    for n, a in values.items():
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{prefix}_{n} is not finite")
    return params_type(t, **values)
