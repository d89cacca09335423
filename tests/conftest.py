"""Shared fixtures and helpers for the tests of the native kernels (gmmfast.ops).

The oracle of every kernel test is :mod:`gmmfast.reference` (readable float64 NumPy,
itself checked against scikit-learn in test_reference.py) or scikit-learn's private
GaussianMixture helpers. float32 kernels are compared with the float64 reference
evaluated on the *same* float32 numbers (inputs cast to float32 first, then to float64),
so that the comparison measures the kernel's arithmetic, not the rounding of its inputs.
"""

from __future__ import annotations

import os

# scikit-learn's check_array_api_input (run by check_estimator for every estimator)
# needs SciPy's array-API mode, which SciPy reads once at import: set it before any
# test module imports scipy, so that the check runs instead of skipping.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

from dataclasses import dataclass  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from gmmfast import _core  # noqa: E402
from gmmfast import reference as ref  # noqa: E402
from gmmfast._types import EMStats  # noqa: E402

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
DTYPES = (np.float32, np.float64)


# --------------------------------------------------------------------------------------
# SIMD variants


def supported_isas() -> list:
    """The SIMD variants compiled into _core that this CPU can run (set_isa is True)."""
    original = _core.active_isa()
    try:
        return [name for name in _core.compiled_isas() if _core.set_isa(name)]
    finally:
        assert _core.set_isa(original)


SUPPORTED_ISAS = supported_isas()


@pytest.fixture(params=SUPPORTED_ISAS)
def isa(request):
    """Runs the test with each supported SIMD variant of the kernels, then restores the
    variant that was active before."""
    original = _core.active_isa()
    assert _core.set_isa(request.param)
    assert _core.active_isa() == request.param
    try:
        yield request.param
    finally:
        assert _core.set_isa(original)


@pytest.fixture(params=COVARIANCE_TYPES)
def covariance_type(request):
    return request.param


@pytest.fixture(params=DTYPES, ids=lambda t: np.dtype(t).name)
def dtype(request):
    return np.dtype(request.param)


# --------------------------------------------------------------------------------------
# random mixtures and data


def random_covariances(rng, covariance_type, n_components, n_features, low=0.5, high=2.0):
    """Well-conditioned covariances: eigenvalues in [low, high] (condition number
    <= high/low = 4 by default) with random orientation for full/tied."""

    def spd():
        Q, _ = np.linalg.qr(rng.normal(size=(n_features, n_features)))
        return (Q * rng.uniform(low, high, size=n_features)) @ Q.T

    if covariance_type == "full":
        cov = np.stack([spd() for _ in range(n_components)])
        return 0.5 * (cov + cov.transpose(0, 2, 1))
    if covariance_type == "tied":
        cov = spd()
        return 0.5 * (cov + cov.T)
    if covariance_type == "diag":
        return rng.uniform(low, high, size=(n_components, n_features))
    return rng.uniform(low, high, size=n_components)


@dataclass
class Mixture:
    """A random valid mixture in scikit-learn's parameterisation, in one dtype.

    ``precisions_cholesky`` is computed in float64 and then cast, so for float32 its
    lower triangle stays exactly zero and its diagonal positive.
    """

    covariance_type: str
    weights: np.ndarray
    log_weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray

    @property
    def n_components(self):
        return self.means.shape[0]

    @property
    def n_features(self):
        return self.means.shape[1]

    def args(self):
        """(log_weights, means, precisions_cholesky, covariance_type) for ops/reference."""
        return self.log_weights, self.means, self.precisions_cholesky, self.covariance_type

    def astype(self, dtype):
        dtype = np.dtype(dtype)
        return Mixture(
            self.covariance_type,
            *(a.astype(dtype) for a in (
                self.weights, self.log_weights, self.means, self.covariances,
                self.precisions_cholesky,
            )),
        )

    def as64(self):
        """The same numbers in float64 (exact: float32 -> float64 is lossless)."""
        return self.astype(np.float64)


def random_mixture(rng, covariance_type, n_components, n_features, dtype=np.float64,
                   spread=4.0, offset=0.0):
    weights = rng.uniform(0.5, 1.5, size=n_components)
    weights /= weights.sum()
    means = rng.normal(scale=spread, size=(n_components, n_features)) + offset
    cov = random_covariances(rng, covariance_type, n_components, n_features)
    prec_chol, _ = ref.precision_cholesky(cov, covariance_type, n_features=n_features)
    mix = Mixture(covariance_type, weights, np.log(weights), means, cov, prec_chol)
    return mix.astype(dtype)


def sample_mixture(rng, mix: Mixture, n_samples, dtype=None, outliers=0):
    """Rows drawn from the mixture's components (the component of each row uniformly at
    random). ``outliers`` rows are moved 16-24 units (> 11 standard deviations) away
    from their component's mean: tiny but finite densities, responsibilities that
    underflow, log-densities of size ~100s (exercises the log-sum-exp shift)."""
    K, D = mix.means.shape
    m = mix.as64()
    comp = rng.integers(K, size=n_samples)
    z = rng.normal(size=(n_samples, D))
    if m.covariance_type == "full":
        L = np.linalg.cholesky(m.covariances)
        X = m.means[comp] + np.einsum("nde,ne->nd", L[comp], z)
    elif m.covariance_type == "tied":
        X = m.means[comp] + z @ np.linalg.cholesky(m.covariances).T
    elif m.covariance_type == "diag":
        X = m.means[comp] + z * np.sqrt(m.covariances[comp])
    else:
        X = m.means[comp] + z * np.sqrt(m.covariances[comp])[:, None]
    if outliers:
        idx = rng.choice(n_samples, size=min(outliers, n_samples), replace=False)
        direction = rng.normal(size=(idx.size, D))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        X[idx] = m.means[comp[idx]] + direction * rng.uniform(8, 12, size=(idx.size, 1)) * 2
    return X.astype(dtype if dtype is not None else mix.means.dtype)


def eps(dtype) -> float:
    return float(np.finfo(np.dtype(dtype)).eps)


# --------------------------------------------------------------------------------------
# comparing statistics


def abs_stats(X, resp, centres, covariance_type, sample_weight=None):
    """The statistics of :class:`EMStats` with every term replaced by its absolute value:
    Σ|g r|, Σ|g r||x - c|, Σ|g r||x - c||x - c|ᵀ (in the covariance type's form).

    A sum computed in floating point has an error bounded by (a few ulp) x (the sum of
    the absolute values of its terms), so these are the right scale for the tolerance
    of each entry: relative error on entries that cancel (s1 at the means ~ 0) is
    meaningless, absolute error against max|entry| would be too loose on small entries.

    Tied S2 is the exception: the kernel accumulates it about the mean m of the centres
    (one rank-two update per row instead of K rank-one updates, cpp/arch/kernels.inl
    tile_tied), whose terms are as large as (|x - m| + |c_k - m|)²; that is its scale here.
    """
    X = np.asarray(X, dtype=np.float64)
    centres = np.asarray(centres, dtype=np.float64)
    N, D = X.shape
    K = centres.shape[0]
    g = np.ones(N) if sample_weight is None else np.abs(np.asarray(sample_weight, np.float64))
    r = np.abs(np.asarray(resp, dtype=np.float64)) * g[:, None]
    nk = r.sum(axis=0)
    s1 = np.empty((K, D))
    s2 = np.zeros((D, D)) if covariance_type == "tied" else np.empty(
        {"full": (K, D, D), "diag": (K, D), "spherical": (K,)}[covariance_type]
    )
    m = centres.mean(axis=0)
    for k in range(K):
        a = np.abs(X - centres[k])
        s1[k] = r[:, k] @ a
        if covariance_type == "full":
            s2[k] = (a * r[:, k, None]).T @ a
        elif covariance_type == "tied":
            b = np.abs(X - m) + np.abs(centres[k] - m)
            s2 += (b * r[:, k, None]).T @ b
        elif covariance_type == "diag":
            s2[k] = r[:, k] @ a**2
        else:
            s2[k] = r[:, k] @ np.sum(a**2, axis=1)
    return nk, s1, s2


def assert_stats_close(got: EMStats, want: EMStats, rtol, scale=None, ll_scale=None,
                       floor=None, ws_scale=None):
    """Entry-wise |got - want| <= rtol * scale + floor, with ``scale`` the
    :func:`abs_stats` of the computation (or |want| when not given) and ``floor`` an
    absolute triple of the same shapes (default 1e-300); the log-likelihood and the
    weight sum within rtol * ll_scale and rtol * ws_scale (default: their |want|)."""
    assert got.covariance_type == want.covariance_type
    assert got.nk.dtype == got.s1.dtype == got.s2.dtype == np.float64
    assert got.nk.shape == want.nk.shape
    assert got.s1.shape == want.s1.shape
    assert got.s2.shape == want.s2.shape
    np.testing.assert_array_equal(got.centres, want.centres)
    if scale is None:
        scale = (np.abs(want.nk), np.abs(want.s1), np.abs(want.s2))
    if floor is None:
        floor = (1e-300, 1e-300, 1e-300)
    for name, g, w, s, f in zip(("nk", "s1", "s2"), (got.nk, got.s1, got.s2),
                                (want.nk, want.s1, want.s2), scale, floor):
        err = np.abs(g - w)
        bound = rtol * np.asarray(s) + f + 1e-300
        assert np.all(err <= bound), (
            f"{name}: max error/scale = {np.max(err / (np.asarray(s) + 1e-300)):.3g} > {rtol:.3g}"
        )
    wscale = abs(want.weight_sum) if ws_scale is None else ws_scale
    assert abs(got.weight_sum - want.weight_sum) <= rtol * wscale + 1e-300, (
        got.weight_sum, want.weight_sum,
    )
    llscale = abs(want.log_likelihood) if ll_scale is None else ll_scale
    assert abs(got.log_likelihood - want.log_likelihood) <= rtol * llscale + 1e-300, (
        got.log_likelihood, want.log_likelihood,
    )


def assert_stats_identical(a: EMStats, b: EMStats):
    assert a.covariance_type == b.covariance_type
    np.testing.assert_array_equal(a.centres, b.centres)
    assert a.log_likelihood == b.log_likelihood or (
        np.isnan(a.log_likelihood) and np.isnan(b.log_likelihood)
    )
    assert a.weight_sum == b.weight_sum
    for x, y in ((a.nk, b.nk), (a.s1, b.s1), (a.s2, b.s2)):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()  # bit-identical (also distinguishes -0.0)


@pytest.fixture
def rng(request):
    """A generator seeded from the test's node id: reproducible, different per test."""
    import zlib

    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def assert_releases_gil(name, call, *, min_duration, min_iterations, attempts=3):
    """While a worker thread runs ``call`` (a native kernel, single-threaded so that a
    core stays free on a 2-core machine), the main thread keeps executing Python. A held
    GIL shows as one gap of about the whole call's length between main-thread iterations
    (checked with a GIL-holding regex: gap 0.42 s of a 0.43 s call). Passes when one of
    ``attempts`` runs shows more than ``min_iterations`` main-thread iterations and no
    pause longer than a third of the call (Python's switch interval is 5 ms); several
    attempts, so that the main thread being descheduled on a loaded machine is not
    mistaken for a held GIL, which fails every attempt."""
    import threading
    import time

    results = []
    for _ in range(attempts):
        window = {}

        def work():
            window["start"] = time.perf_counter()
            call()
            window["end"] = time.perf_counter()

        worker = threading.Thread(target=work)
        stamps = []
        worker.start()
        while worker.is_alive():
            stamps.append(time.perf_counter())
        worker.join()
        duration = window["end"] - window["start"]
        inside = np.array([t for t in stamps if window["start"] <= t <= window["end"]])
        gap = float(np.max(np.diff(np.r_[window["start"], inside, window["end"]])))
        results.append((round(duration, 3), inside.size, round(gap, 3)))
        assert duration > min_duration, f"{name} is too short to tell ({duration:.3f} s): make the input larger"
        if inside.size > min_iterations and gap < duration / 3:
            return
    pytest.fail(f"the main thread stalled while {name} ran: (duration, iterations, largest gap) = {results}")

