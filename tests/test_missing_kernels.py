"""The missing-value kernels (gmmfast._missing over _core.em_stats_missing,
log_prob_missing, missing_index) against the NumPy reference in covariance form
(gmmfast.reference_missing), which shares no code with them.

Tolerances: float64 inputs agree to ~1e-14 relative (different but exact algebra: the
kernels' precision form against the reference's covariance form), checked at 1e-9. For
float32 data both sides see the same float32 values; the kernels' complete rows run
today's float32 kernels (float32 products, float64 sums), so the statistics carry
float32 rounding, ~1e-7 relative per row; checked at 2e-5.
"""

import numpy as np
import pytest

from gmmfast import _core, _missing, ops
from gmmfast import reference_missing as ref

COV_TYPES = ["full", "tied", "diag", "spherical"]


def _data(rng, N=240, D=4, frac=0.3, dtype=np.float64):
    X = rng.normal(size=(N, D)) + 3.0 * rng.integers(0, 3, N)[:, None] + 50.0
    X[rng.random((N, D)) < frac] = np.nan
    empty = np.all(np.isnan(X), axis=1)
    X[empty, 0] = 50.0
    return X.astype(dtype)


def _mixture(X, K, t, seed=0):
    filled = np.where(np.isnan(X), np.nanmean(X, axis=0), X).astype(np.float64)
    p = ops.initial_params(filled, K, t, random_state=seed)
    return np.log(p.weights), p.means, p.precisions_cholesky


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (1.0 + np.max(np.abs(b))))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("t", COV_TYPES)
def test_stats_log_prob_impute_match_reference(t, dtype):
    rng = np.random.default_rng(1)
    X = _data(rng, dtype=dtype)
    lw, mu, U = _mixture(X, 3, t)
    mu_d, U_d = mu.astype(dtype), U.astype(dtype)
    w = rng.random(X.shape[0]) * 2.0
    centres = mu + 0.25  # statistics centred elsewhere than the means
    index = _missing.missing_index(X)
    tol = 1e-9 if dtype == np.float64 else 2e-5
    got = _missing.em_stats(X, index, lw, mu, U, t, centres=centres, sample_weight=w)
    want = ref.em_stats(X, lw, mu_d, U_d, t, centres=centres.astype(dtype), sample_weight=w.astype(dtype))
    for name in ("nk", "s1", "s2"):
        assert _rel(getattr(got, name), getattr(want, name)) < tol, name
    assert abs(got.log_likelihood - want.log_likelihood) < tol * abs(want.log_likelihood)
    assert got.weight_sum == pytest.approx(want.weight_sum, rel=1e-6)
    for output in ("sample", "log_resp", "weighted"):
        a = _missing.log_prob(X, index, lw, mu, U, t, output)
        assert a.dtype == dtype
        assert _rel(a, ref.log_prob(X, lw, mu_d, U_d, t, output)) < tol * 10, output
    imputed = _missing.impute(X, index, lw, mu, U, t)
    observed = ~np.isnan(X)
    assert np.array_equal(imputed[observed], X[observed])
    assert _rel(imputed, ref.impute(X, lw, mu_d, U_d, t)) < tol


def test_complete_rows_go_through_todays_kernel():
    """The rows without NaN give exactly what ops.em_stats gives for them alone."""
    rng = np.random.default_rng(2)
    X = _data(rng, N=300, frac=0.0)
    lw, mu, U = _mixture(X, 2, "full")
    X[5, 1] = np.nan  # one incomplete row, the rest one contiguous run and a short one
    index = _missing.missing_index(X)
    assert index.n_incomplete == 1 and index.n_patterns == 1
    complete = np.delete(X, 5, axis=0)
    full = _missing.em_stats(X, index, lw, mu, U, "full")
    alone = _missing.em_stats(X[5:6], _missing.missing_index(X[5:6], check_columns=False), lw, mu, U, "full")
    today = ops.em_stats(complete[:5], lw, mu, U, "full") + ops.em_stats(complete[5:], lw, mu, U, "full")
    np.testing.assert_allclose(full.s2, today.s2 + alone.s2, rtol=1e-13)
    np.testing.assert_allclose(full.nk, today.nk + alone.nk, rtol=1e-13)


def test_no_missing_is_todays_kernel_exactly():
    rng = np.random.default_rng(3)
    X = _data(rng, frac=0.0)
    for t in COV_TYPES:
        lw, mu, U = _mixture(X, 3, t)
        index = _missing.missing_index(X)
        assert index.n_incomplete == 0
        got = _missing.em_stats(X, index, lw, mu, U, t)
        want = ops.em_stats(X, lw, mu, U, t)
        assert got.log_likelihood == want.log_likelihood
        assert np.array_equal(got.s2, want.s2) and np.array_equal(got.s1, want.s1)
        assert np.array_equal(_missing.log_prob(X, index, lw, mu, U, t), ops.log_prob(X, lw, mu, U, t))


@pytest.mark.parametrize("t", ["full", "diag"])
def test_every_row_its_own_pattern_many_groups(t):
    """Thousands of patterns and 80 components: the patterns span several groups of the
    kernel's bounded factor buffer; statistics are sums, so the whole equals the sum of
    its parts (each with its own, smaller grouping), and thread counts agree."""
    rng = np.random.default_rng(4)
    N, D, K = 4000, 14, 80
    X = rng.normal(size=(N, D))
    X[rng.random((N, D)) < 0.5] = np.nan
    X[np.all(np.isnan(X), axis=1), 0] = 0.0
    lw, mu, U = _mixture(X, K, t)
    index = _missing.missing_index(X)
    assert index.n_patterns > 3000 and index.n_patterns * K > (1 << 18)
    whole = _missing.em_stats(X, index, lw, mu, U, t, n_threads=2)
    parts = [X[:1500], X[1500:]]
    summed = sum((_missing.em_stats(P, _missing.missing_index(P), lw, mu, U, t) for P in parts[1:]),
                 _missing.em_stats(parts[0], _missing.missing_index(parts[0]), lw, mu, U, t))
    np.testing.assert_allclose(whole.s2, summed.s2, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(whole.nk, summed.nk, rtol=1e-10, atol=1e-10)
    one = _missing.em_stats(X, index, lw, mu, U, t, n_threads=1)
    np.testing.assert_allclose(whole.s1, one.s1, rtol=1e-10, atol=1e-8)
    # a sample of the rows against the reference
    sub = X[:60]
    got = _missing.em_stats(sub, _missing.missing_index(sub), lw, mu, U, t)
    assert _rel(got.s2, ref.em_stats(sub, lw, mu, U, t).s2) < 1e-9


def test_index_groups_rows_by_pattern():
    X = np.array([[1.0, np.nan, 2.0], [3.0, 4.0, 5.0], [np.nan, 1.0, 1.0], [2.0, np.nan, 0.0], [6.0, 7.0, 8.0]])
    index = _missing.missing_index(X)
    assert index.complete.tolist() == [1, 4]
    groups = [index.rows[a:b].tolist() for a, b in zip(index.offsets[:-1], index.offsets[1:])]
    assert sorted(groups) == [[0, 3], [2]]
    for (a, b), obs in zip(zip(index.offsets[:-1], index.offsets[1:]), index.observed):
        assert np.array_equal(~np.isnan(X[index.rows[a]]), obs)
    assert index.observed_per_column.tolist() == [4, 3, 5]


def test_index_errors():
    X = np.array([[1.0, np.nan], [np.nan, np.nan], [2.0, 3.0]])
    with pytest.raises(ValueError, match="Row 1 of X has every feature missing"):
        _missing.missing_index(X)
    X = np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan]])
    with pytest.raises(ValueError, match=r"Column 1 \('b'\) of X is missing \(NaN\) in every row"):
        _missing.missing_index(X, feature_names=["a", "b"])
    X = np.array([[1.0, np.nan], [np.inf, 1.0]])
    with pytest.raises(ValueError, match=r"contains infinity .* \(first at row 1\)"):
        _missing.missing_index(X)


def test_bad_index_is_rejected_before_native_work():
    X = _data(np.random.default_rng(5), N=20)
    lw, mu, U = _mixture(X, 2, "full")
    index = _missing.missing_index(X)
    bad = (index.complete, index.rows + 100, index.offsets, index.observed)
    with pytest.raises(ValueError, match="out of range"):
        _core.em_stats_missing(X, bad, lw, mu, U, "full")
    with pytest.raises(ValueError, match="do not add up"):
        _core.log_prob_missing(X, (index.complete[:1], index.rows, index.offsets, index.observed), lw, mu, U)
    with pytest.raises(ValueError, match="output must be one of"):
        _core.log_prob_missing(X, index.as_tuple(), lw, mu, U, "full", "nope")


def test_overflowing_row_is_an_error_not_nan():
    X = np.array([[0.0, np.nan], [1.0, 1.0], [1e200, np.nan]])
    lw, mu, U = np.log([0.5, 0.5]), np.array([[0.0, 0.0], [1.0, 1.0]]), np.stack([np.eye(2)] * 2)
    with pytest.raises(ValueError, match="row 2 is not finite"):
        _missing.em_stats(X, _missing.missing_index(X), lw, mu, U, "full")
