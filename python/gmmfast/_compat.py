"""scikit-learn integration without a scikit-learn dependency.

With scikit-learn installed, gmmfast's estimator derives from its BaseEstimator and
DensityMixin and raises its NotFittedError / ConvergenceWarning, so it is a real
scikit-learn estimator (clone, Pipeline, GridSearchCV, check_estimator). Without it,
small stand-ins with the same behaviour are used.
"""

from __future__ import annotations

import inspect

try:  # pragma: no cover - exercised by the environment, not by a branch in tests
    from sklearn.base import BaseEstimator, DensityMixin
    from sklearn.exceptions import ConvergenceWarning, NotFittedError

    HAVE_SKLEARN = True
except ImportError:  # pragma: no cover
    HAVE_SKLEARN = False

    class ConvergenceWarning(UserWarning):
        """EM stopped at max_iter before the lower bound converged."""

    class NotFittedError(ValueError, AttributeError):
        """The estimator is used before fit."""

    class DensityMixin:
        """Marks density estimators (scikit-learn's convention)."""

        _estimator_type = "DensityEstimator"

        def score(self, X, y=None):  # overridden by the estimator
            raise NotImplementedError

    class BaseEstimator:
        """get_params / set_params / repr, as scikit-learn's BaseEstimator provides."""

        @classmethod
        def _get_param_names(cls):
            sig = inspect.signature(cls.__init__)
            return sorted(
                p.name
                for p in sig.parameters.values()
                if p.name != "self" and p.kind != p.VAR_KEYWORD
            )

        def get_params(self, deep=True):
            out = {}
            for name in self._get_param_names():
                value = getattr(self, name)
                if deep and hasattr(value, "get_params") and not isinstance(value, type):
                    out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
                out[name] = value
            return out

        def set_params(self, **params):
            valid = self._get_param_names()
            for key, value in params.items():
                if key not in valid:
                    raise ValueError(
                        f"Invalid parameter {key!r} for estimator {type(self).__name__}. "
                        f"Valid parameters are: {valid!r}."
                    )
                setattr(self, key, value)
            return self

        def __repr__(self):
            defaults = {
                p.name: p.default
                for p in inspect.signature(type(self).__init__).parameters.values()
            }
            changed = []
            for name in self._get_param_names():
                value = getattr(self, name)
                default = defaults.get(name, inspect.Parameter.empty)
                try:
                    same = value is default or bool(value == default)
                except Exception:
                    same = False
                if not same:
                    changed.append(f"{name}={value!r}")
            return f"{type(self).__name__}({', '.join(changed)})"


if HAVE_SKLEARN:  # pragma: no cover
    try:  # private module: scikit-learn's class where it exists (it subclasses both)
        from sklearn.utils._param_validation import InvalidParameterError
    except ImportError:
        HAVE_SKLEARN_PARAM_ERROR = False
    else:
        HAVE_SKLEARN_PARAM_ERROR = True
else:  # pragma: no cover
    HAVE_SKLEARN_PARAM_ERROR = False

if not HAVE_SKLEARN_PARAM_ERROR:  # pragma: no cover

    class InvalidParameterError(ValueError, TypeError):
        """A constructor parameter has the wrong type or value (raised by fit)."""


__all__ = [
    "BaseEstimator",
    "DensityMixin",
    "ConvergenceWarning",
    "NotFittedError",
    "InvalidParameterError",
    "HAVE_SKLEARN",
]
