"""Missing values (NaN entries, missing at random): the NumPy face of the native
pattern kernels (``_core.missing_index``, ``em_stats_missing``, ``log_prob_missing``).

- :func:`missing_index` groups the rows of X by missingness pattern, once per data, and
  raises the input errors of ``missing="em"``: an infinity, a row with every entry
  missing, a column missing in every row (named);
- :func:`em_stats` is :func:`gmmfast.ops.em_stats` for such data: the E-step on each
  row's observed entries and the expected complete-data statistics (the conditional
  expectations of the missing entries plus their conditional covariance), which
  :func:`gmmfast.ops.finalize` turns into the EM M-step unchanged;
- :func:`log_prob` and :func:`impute`: the marginal log-densities of the observed
  entries, and the conditional expectations of the missing ones.

Complete rows go through today's kernels; data without NaN never reach this module (the
sources use :func:`gmmfast.ops.em_stats` for them). docs/missing.md has the algebra and
the cost model; :mod:`gmmfast.reference_missing` is the readable NumPy oracle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from . import _core
from ._types import EMStats
from ._validation import as_param, n_threads_arg

__all__ = ["MissingIndex", "missing_index", "has_missing", "em_stats", "log_prob", "impute", "fill_columns"]

@dataclass(frozen=True)
class MissingIndex:
    """Rows grouped by missingness pattern: ``complete`` rows (ascending), the other
    ``rows`` grouped by pattern (pattern p is ``rows[offsets[p]:offsets[p + 1]]``), and
    ``observed`` (n_patterns, n_features), True where the pattern observes a feature."""

    complete: np.ndarray
    rows: np.ndarray
    offsets: np.ndarray
    observed: np.ndarray
    observed_per_column: np.ndarray
    first_empty_row: int = -1

    @property
    def n_incomplete(self) -> int:
        return int(self.rows.shape[0])

    @property
    def n_patterns(self) -> int:
        return int(self.observed.shape[0])

    def as_tuple(self) -> tuple:
        return (self.complete, self.rows, self.offsets, self.observed)


def has_missing(X) -> bool:
    """Whether the float array X holds a NaN."""
    return bool(np.isnan(np.min(X))) if X.size else False


def _column_name(j: int, names: Optional[Sequence]) -> str:
    return f"Column {j}" + ("" if names is None else f" ({names[j]!r})")


def missing_index(X, *, n_threads=None, feature_names=None, where: str = "X", check_columns: bool = True,
                  check_rows: bool = True) -> MissingIndex:
    """The pattern index of X (float32/float64, NaN = missing), raising ValueError for an
    infinity, (``check_columns``) a column missing in every row, named by its index and
    ``feature_names``, and (``check_rows``) a row with every entry missing (else
    ``first_empty_row`` tells it)."""
    complete, rows, offsets, observed, per_col, inf_row, empty_row = _core.missing_index(X, n_threads_arg(n_threads))
    if inf_row >= 0:
        raise ValueError(
            f"Input {where} contains infinity or a value too large for {X.dtype!r} (first at row {inf_row})."
        )
    if check_columns:
        check_observed_columns(per_col, feature_names, where)
    if check_rows:
        check_empty_row(empty_row, where)
    return MissingIndex(complete, rows, offsets, observed, per_col, int(empty_row))


def check_empty_row(row: int, where: str = "X") -> None:
    """ValueError for a row (>= 0) with every entry missing."""
    if row >= 0:
        raise ValueError(
            f"Row {row} of {where} has every feature missing (NaN): with missing='em' each row needs "
            "at least one observed entry. Drop such rows (they carry no information about the mixture)."
        )


def check_observed_columns(observed_per_column, feature_names=None, where: str = "X") -> None:
    """ValueError naming the first column that no row observes."""
    empty = np.flatnonzero(np.asarray(observed_per_column) == 0)
    if empty.size:
        raise ValueError(
            f"{_column_name(int(empty[0]), feature_names)} of {where} is missing (NaN) in every row: "
            "its mean and variance cannot be estimated. Drop the column."
        )


def fill_columns(X, values) -> np.ndarray:
    """A copy of X with each NaN replaced by its column's value (``values``, (D,)): the
    rows the initialisation and recovery work on."""
    out = np.array(X, copy=True)
    r, c = np.nonzero(np.isnan(out))
    out[r, c] = np.asarray(values, dtype=out.dtype)[c]
    return out


def _mixture(X, log_weights, means, precisions_cholesky):
    dt = X.dtype
    return (
        as_param(log_weights, "log_weights", dt),
        as_param(means, "means", dt),
        as_param(precisions_cholesky, "precisions_cholesky", dt),
    )


def em_stats(X, index: MissingIndex, log_weights, means, precisions_cholesky, covariance_type="full", *,
             centres=None, sample_weight=None, n_threads=None) -> EMStats:
    """:func:`gmmfast.ops.em_stats` (with the E-step) of X with NaN entries; ``index`` is
    X's :func:`missing_index`. ``log_likelihood`` is the observed-data log-likelihood."""
    dt = X.dtype
    c = None if centres is None else as_param(centres, "centres", dt)
    ll, wsum, nk, s1, s2 = _core.em_stats_missing(
        X, index.as_tuple(), *_mixture(X, log_weights, means, precisions_cholesky), covariance_type,
        c, None if sample_weight is None else as_param(sample_weight, "sample_weight", dt),
        n_threads_arg(n_threads),
    )
    centres64 = np.asarray(as_param(means, "means", dt) if c is None else c, dtype=np.float64)
    return EMStats(covariance_type, centres64, ll, wsum, nk, s1, s2, str(dt))


def log_prob(X, index: MissingIndex, log_weights, means, precisions_cholesky, covariance_type="full",
             output="sample", *, n_threads=None) -> np.ndarray:
    """:func:`gmmfast.ops.log_prob` of X with NaN entries, marginal over each row's
    observed entries; ``output='impute'`` gives X with each NaN replaced by its
    conditional expectation under the mixture."""
    return _core.log_prob_missing(
        X, index.as_tuple(), *_mixture(X, log_weights, means, precisions_cholesky), covariance_type, output,
        n_threads_arg(n_threads),
    )


def impute(X, index: MissingIndex, log_weights, means, precisions_cholesky, covariance_type="full", *,
           n_threads=None) -> np.ndarray:
    """X with each NaN replaced by E[x_M | x_O] = Σ_k p(k | x_O) E[x_M | x_O, k]."""
    return log_prob(X, index, log_weights, means, precisions_cholesky, covariance_type, "impute", n_threads=n_threads)
