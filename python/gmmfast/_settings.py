"""The estimator's parameters as a plain, validated container.

:func:`check_params` applies scikit-learn's parameter constraints (an
``InvalidParameterError`` with scikit-learn's text) plus gmmfast's own parameters, to a
plain dict of parameters. :class:`EMSettings` holds the validated values that the EM
driver needs. The estimator, model files (which validate the parameters they read) and
the driver use them; none of them depends on the estimator class.
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ._compat import InvalidParameterError
from ._types import COVARIANCE_TYPES

INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")
RECOVERY = (None, "reg_covar", "reseed")
MISSING = ("error", "em")

#: the defaults of GaussianMixture's scalar parameters (its signature repeats them, as
#: scikit-learn requires; a test checks that the two agree). Model files read without a
#: parameter get its default.
PARAM_DEFAULTS = {
    "n_components": 1,
    "covariance_type": "full",
    "tol": 1e-3,
    "reg_covar": 1e-6,
    "max_iter": 100,
    "n_init": 1,
    "init_params": "kmeans",
    "random_state": None,
    "warm_start": False,
    "verbose": 0,
    "verbose_interval": 10,
    "recovery": None,
    "n_threads": None,
    "learning_decay": 0.7,
    "learning_offset": 10.0,
    "missing": "error",
}


@dataclass(frozen=True)
class EMSettings:
    """What the EM driver needs to know of the estimator's parameters."""

    n_components: int
    covariance_type: str = "full"
    tol: float = 1e-3
    reg_covar: float = 1e-6
    max_iter: int = 100
    n_init: int = 1
    init_params: str = "kmeans"
    recovery: Optional[str] = None
    n_threads: Optional[int] = None
    learning_decay: float = 0.7
    learning_offset: float = 10.0

    @classmethod
    def from_params(cls, params: dict, owner: str = "GaussianMixture") -> "EMSettings":
        """Validated settings from a dict of estimator parameters (check_params)."""
        check_params(params, owner)
        return cls(**{name: params[name] for name in cls.__dataclass_fields__ if name in params})


def interval_error(name, what, value, owner="GaussianMixture"):
    # scikit-learn's InvalidParameterError (a ValueError and a TypeError) and its text
    return InvalidParameterError(
        f"The {name!r} parameter of {owner} must be {what}. Got {value!r} instead."
    )


def check_int(name, value, low, also="", owner="GaussianMixture"):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise interval_error(name, f"an int in the range [{low}, inf){also}", value, owner)


def _check_real(name, value, low, owner):
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not np.isfinite(value)
        or value < low
    ):
        raise interval_error(name, f"a float in the range [{low}, inf)", value, owner)


def _is_arraylike_not_scalar(x) -> bool:
    """scikit-learn's "array-like" parameter constraint."""
    arraylike = hasattr(x, "__len__") or hasattr(x, "shape") or hasattr(x, "__array__")
    return arraylike and not np.isscalar(x)


def check_params(p: dict, owner: str = "GaussianMixture") -> None:
    """scikit-learn's parameter constraints, in its order and with its messages, plus
    gmmfast's recovery, n_threads, learning_decay and learning_offset. Parameters
    missing from ``p`` are not checked."""

    def has(name):
        return name in p

    if has("n_components"):
        check_int("n_components", p["n_components"], 1, owner=owner)
    if has("covariance_type") and p["covariance_type"] not in COVARIANCE_TYPES:
        raise interval_error(
            "covariance_type", f"a str among {set(COVARIANCE_TYPES)}", p["covariance_type"], owner
        )
    for name in ("tol", "reg_covar"):
        if has(name):
            _check_real(name, p[name], 0.0, owner)
    if has("max_iter"):
        check_int("max_iter", p["max_iter"], 0, owner=owner)
    if has("n_init"):
        check_int("n_init", p["n_init"], 1, owner=owner)
    if has("init_params"):
        init = p["init_params"]
        if not isinstance(init, str) or init not in INIT_PARAMS:
            raise interval_error("init_params", f"a str among {set(INIT_PARAMS)}", init, owner)
    for name in ("weights_init", "means_init", "precisions_init"):
        value = p.get(name)
        if value is not None and not _is_arraylike_not_scalar(value):
            raise interval_error(name, "an array-like or None", value, owner)
    if has("random_state"):
        rs = p["random_state"]
        if not (
            rs is None
            or isinstance(rs, (np.random.RandomState, np.random.Generator))
            or (isinstance(rs, numbers.Integral) and not isinstance(rs, bool) and 0 <= rs <= 2**32 - 1)
        ):
            # a Generator is accepted too (an extension of scikit-learn's constraint)
            raise interval_error(
                "random_state",
                "an int in the range [0, 4294967295], an instance of "
                "'numpy.random.mtrand.RandomState' or None",
                rs,
                owner,
            )
    if has("warm_start") and not isinstance(p["warm_start"], (bool, np.bool_)):
        raise interval_error(
            "warm_start", "an instance of 'bool' or an instance of 'numpy.bool'", p["warm_start"], owner
        )
    if has("verbose") and not isinstance(p["verbose"], (bool, np.bool_)):
        check_int(
            "verbose",
            p["verbose"],
            0,
            also=", an instance of 'bool' or an instance of 'numpy.bool'",
            owner=owner,
        )
    if has("verbose_interval"):
        check_int("verbose_interval", p["verbose_interval"], 1, owner=owner)
    if has("recovery"):
        recovery = p["recovery"]
        if not (recovery is None or (isinstance(recovery, str) and recovery in RECOVERY)):
            raise interval_error("recovery", "None, 'reg_covar' or 'reseed'", recovery, owner)
    if has("missing"):
        missing = p["missing"]
        if not (isinstance(missing, str) and missing in MISSING):
            raise interval_error("missing", "'error' or 'em'", missing, owner)
    if p.get("n_threads") is not None:
        check_int("n_threads", p["n_threads"], 1, owner=owner)
    if has("learning_decay"):
        kappa = p["learning_decay"]
        if isinstance(kappa, bool) or not isinstance(kappa, numbers.Real) or not (0.5 < kappa <= 1.0):
            raise interval_error("learning_decay", "a float in the range (0.5, 1.0]", kappa, owner)
    if has("learning_offset"):
        _check_real("learning_offset", p["learning_offset"], 0.0, owner)
    if p.get("checkpoint") is not None and not isinstance(p["checkpoint"], (str, os.PathLike)):
        raise interval_error("checkpoint", "a str or path-like, or None", p["checkpoint"], owner)
    if has("checkpoint_every"):
        check_int("checkpoint_every", p["checkpoint_every"], 1, owner=owner)
