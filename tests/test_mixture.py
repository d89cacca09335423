"""gmmfast.GaussianMixture against scikit-learn's GaussianMixture and gmmfast.reference.

Oracles, in order of preference:

- scikit-learn 1.9's ``GaussianMixture`` started from the *same* initial parameters
  (``weights_init``/``means_init``/``precisions_init``), so that k-means (whose random
  stream gmmfast does not share) plays no part;
- :mod:`gmmfast.reference` (readable float64 NumPy, itself checked against scikit-learn
  in test_reference.py) for what scikit-learn does not have (sample weights);
- direct computations (repeated rows for integer weights, removed rows for zero
  weights, the same fit run twice for determinism).

Tolerances are relative to the largest entry of the expected array (``rel_err``), since
entries that cancel (off-diagonal covariances, small precisions) make element-wise
relative error meaningless; each one is justified where it is used.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn import datasets  # noqa: E402
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning  # noqa: E402
from sklearn.exceptions import NotFittedError as SkNotFittedError  # noqa: E402
from sklearn.mixture import GaussianMixture as SkGM  # noqa: E402
from sklearn.utils._param_validation import InvalidParameterError  # noqa: E402

import gmmfast  # noqa: E402
import gmmfast.ops as ops  # noqa: E402
from gmmfast import reference as ref  # noqa: E402
from gmmfast._types import ILL_DEFINED_COVARIANCE, ILL_DEFINED_COVARIANCE_FLOAT32  # noqa: E402
from gmmfast._types import MixtureParams  # noqa: E402
from gmmfast.mixture import GaussianMixture  # noqa: E402

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
PARAM_ATTRS = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")
DATASETS = ("blobs", "iris", "wine", "digits")


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """scikit-learn's many small BLAS calls, with OpenBLAS's threads spinning beside
    gmmfast's OpenMP threads, oversubscribe a small machine (scikit-learn ran ~100x
    slower on 2 cores). No result depends on the BLAS thread count beyond rounding."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        yield


# --------------------------------------------------------------------------------------
# data, initial parameters, comparisons


def make_blobs(seed=0, n_samples=400, n_features=3, n_blobs=3, spread=5.0, offset=0.0):
    """Anisotropic Gaussian blobs and their labels; each blob's covariance has
    eigenvalues in [0.5, 2] (well conditioned, randomly oriented)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(n_blobs, n_features)) + offset
    labels = rng.integers(n_blobs, size=n_samples)
    rotations = np.linalg.qr(rng.normal(size=(n_blobs, n_features, n_features)))[0]
    scales = np.sqrt(rng.uniform(0.5, 2.0, size=(n_blobs, 1, n_features)))
    mixing = np.swapaxes(rotations * scales, 1, 2)  # rows: x = noise @ mixing
    noise = rng.normal(size=(n_samples, n_features))
    X = centres[labels] + np.einsum("nd,nde->ne", noise, mixing[labels])
    return X, labels


@functools.lru_cache(maxsize=None)
def dataset(name):
    """(X, labels, reg_covar) for a named data set (cached: the loaders are slow)."""
    if name == "blobs":
        X, y = make_blobs()
        return X, y, 1e-6
    if name == "iris":
        X, y = datasets.load_iris(return_X_y=True)
        return X, y, 1e-6
    if name == "wine":
        X, y = datasets.load_wine(return_X_y=True)
        return X, y, 1e-6
    if name == "digits":
        # all 1797 images, 10 classes, 64 pixels. Constant pixels (always 0) have a
        # variance of reg_covar alone, so reg_covar = 1e-3 keeps the condition number
        # (~16² / 1e-3) low enough for the float32 comparison to mean something.
        X, y = datasets.load_digits(return_X_y=True)
        assert np.any(X.std(axis=0) == 0)  # the constant columns are really there
        return X, y, 1e-3
    raise KeyError(name)


def init_from_labels(X, y, covariance_type, reg_covar):
    """weights_init, means_init, precisions_init of the labelled classes: a deterministic
    start, independent of either implementation's k-means."""
    X = np.asarray(X, dtype=np.float64)
    classes = np.unique(y)
    n, d = X.shape
    weights = np.array([np.mean(y == c) for c in classes])
    means = np.stack([X[y == c].mean(axis=0) for c in classes])
    covs = np.stack([np.cov(X[y == c].T, bias=True).reshape(d, d) for c in classes])
    eye = np.eye(d)
    if covariance_type == "full":
        precisions = np.linalg.inv(covs + reg_covar * eye)
        precisions = 0.5 * (precisions + precisions.transpose(0, 2, 1))
    elif covariance_type == "tied":
        pooled = np.einsum("k,kij->ij", weights, covs) + reg_covar * eye
        precisions = np.linalg.inv(pooled)
        precisions = 0.5 * (precisions + precisions.T)
    elif covariance_type == "diag":
        precisions = 1.0 / (np.einsum("kii->ki", covs) + reg_covar)
    else:
        precisions = 1.0 / (np.einsum("kii->k", covs) / d + reg_covar)
    return weights, means, precisions


def init_kwargs(name, covariance_type, dtype=np.float64):
    X, y, reg = dataset(name)
    w, m, p = init_from_labels(X, y, covariance_type, reg)
    return dict(
        n_components=len(w),
        covariance_type=covariance_type,
        reg_covar=reg,
        weights_init=w.astype(dtype),
        means_init=m.astype(dtype),
        precisions_init=p.astype(dtype),
    )


def rel_err(got, want) -> float:
    """max |got - want| / max |want|."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-300))


def assert_rel(got, want, tol, what=""):
    err = rel_err(got, want)
    assert err <= tol, f"{what}: max |Δ| / max |want| = {err:.3g} > {tol:.3g}"


def assert_scalar_rel(got, want, tol, what=""):
    scale = max(1.0, abs(float(want)))
    assert abs(float(got) - float(want)) <= tol * scale, f"{what}: {got!r} vs {want!r}"


def assert_same_fit(a, b):
    """Bit-identical fitted state."""
    for attr in PARAM_ATTRS:
        x, y = getattr(a, attr), getattr(b, attr)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes(), attr
    assert a.lower_bound_ == b.lower_bound_
    assert a.lower_bounds_ == b.lower_bounds_
    assert a.n_iter_ == b.n_iter_ and a.converged_ == b.converged_


def quiet_fit(est, X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, **kw)


def error_of(fn):
    """(type, message) of the exception fn() raises."""
    with pytest.raises(Exception) as info:
        fn()
    return type(info.value), str(info.value)


# --------------------------------------------------------------------------------------
# 1. parity with scikit-learn from the same initial parameters


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("name", DATASETS)
def test_parity_with_sklearn_float64(name, covariance_type):
    """Same start, same EM: every fitted attribute and every method agrees.

    Tolerance 1e-9 relative to the array's largest entry: both run the same float64
    algorithm, but scikit-learn computes (X U - μ U) and the uncentred E[x²] - μ² for
    tied/diag/spherical while gmmfast centres at the current means, so results differ by
    rounding (observed <= 1e-13 after up to ~40 iterations, also on digits). One EM
    iteration more or less, a different reg_covar or a different nk guard would change
    the parameters by >= 1e-6.
    """
    X = dataset(name)[0]
    kw = init_kwargs(name, covariance_type)
    kw.update(tol=1e-4, max_iter=300)
    sk = SkGM(**kw).fit(X)
    gm = GaussianMixture(**kw).fit(X)

    assert sk.converged_ and gm.converged_
    assert gm.n_iter_ == sk.n_iter_
    for attr in PARAM_ATTRS:
        assert getattr(gm, attr).dtype == np.float64
        assert_rel(getattr(gm, attr), getattr(sk, attr), 1e-9, attr)
    assert_scalar_rel(gm.lower_bound_, sk.lower_bound_, 1e-9, "lower_bound_")
    assert len(gm.lower_bounds_) == len(sk.lower_bounds_) == gm.n_iter_
    np.testing.assert_allclose(gm.lower_bounds_, sk.lower_bounds_, rtol=1e-9)

    # methods on the fitted models: posteriors and densities to the same 1e-9 (they are
    # smooth functions of the parameters); labels exactly (a flip would need two
    # components within 1e-9 of each other at some sample)
    np.testing.assert_array_equal(gm.predict(X), sk.predict(X))
    np.testing.assert_allclose(gm.predict_proba(X), sk.predict_proba(X), rtol=0, atol=1e-9)
    assert_rel(gm.score_samples(X), sk.score_samples(X), 1e-9, "score_samples")
    assert_scalar_rel(gm.score(X), sk.score(X), 1e-9, "score")
    assert_scalar_rel(gm.bic(X), sk.bic(X), 1e-9, "bic")
    assert_scalar_rel(gm.aic(X), sk.aic(X), 1e-9, "aic")


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("name", DATASETS)
def test_parity_with_sklearn_float32(name, covariance_type):
    """float32 data: gmmfast's float32 kernels against scikit-learn's float32 fit and
    against gmmfast's own float64 fit of the same (float32-valued) numbers.

    A fixed number of iterations (tol=0, max_iter=15): the float32 lower bound resolves
    only ~1e-7·|lb|, so with a tolerance the stopping iteration may differ by one
    between implementations; 15 iterations compare like with like (both report
    n_iter_=15, converged_=False and warn).

    Tolerances (relative to the array's largest entry):
    - gmmfast float32 vs gmmfast float64: 2e-5. gmmfast accumulates the statistics in
      float64 and finalizes in float64; only the float32 E-step (eps = 6e-8) and the
      float32 rounding of the parameters between iterations differ. Observed <= 3e-6.
    - gmmfast float32 vs scikit-learn float32: 1e-3. scikit-learn's M-step runs in
      float32 with the uncentred E[x²] - μ² for tied/diag/spherical, which loses
      ~eps·|μ|²/σ² (1e-5 to 1e-4 here, observed <= 2e-4).
    """
    X32 = dataset(name)[0].astype(np.float32)
    kw = init_kwargs(name, covariance_type, dtype=np.float32)
    kw.update(tol=0.0, max_iter=15)
    with pytest.warns(SkConvergenceWarning):
        sk = SkGM(**kw).fit(X32)
    with pytest.warns(SkConvergenceWarning):
        gm = GaussianMixture(**kw).fit(X32)
    with pytest.warns(SkConvergenceWarning):
        gm64 = GaussianMixture(**kw).fit(X32.astype(np.float64))

    assert gm.n_iter_ == sk.n_iter_ == 15
    assert gm.converged_ is False and sk.converged_ is False
    for attr in PARAM_ATTRS:
        got = getattr(gm, attr)
        assert got.dtype == np.float32 == getattr(sk, attr).dtype, attr
        assert_rel(got, getattr(gm64, attr), 2e-5, attr + " vs gmmfast float64")
        assert_rel(got, getattr(sk, attr), 1e-3, attr + " vs scikit-learn float32")
    assert_scalar_rel(gm.lower_bound_, gm64.lower_bound_, 2e-6, "lower_bound_ vs float64")
    assert_scalar_rel(gm.lower_bound_, sk.lower_bound_, 1e-4, "lower_bound_ vs scikit-learn")
    np.testing.assert_allclose(gm.lower_bounds_, gm64.lower_bounds_, rtol=2e-6)
    np.testing.assert_allclose(gm.lower_bounds_, sk.lower_bounds_, rtol=1e-4)

    # Methods. A relative parameter error δ moves a log-density by ~δ·(D + Mahalanobis²)
    # (64 pixels for digits), so against scikit-learn (δ <= 2e-4) log-densities agree to
    # 1e-3 relative and posteriors to 2e-2 absolute (a posterior moves by at most 1/4
    # of the log-odds; observed <= 5e-3); against gmmfast float64 (δ <= 3e-6) to 1e-5
    # relative and 5e-4 (observed <= 1e-4). Labels may flip only at near-tied samples,
    # so they are compared where the two best posteriors differ by more than 0.05.
    X64 = X32.astype(np.float64)
    proba_sk = sk.predict_proba(X32)
    np.testing.assert_allclose(gm.predict_proba(X32), proba_sk, rtol=0, atol=2e-2)
    np.testing.assert_allclose(gm.predict_proba(X32), gm64.predict_proba(X64), rtol=0, atol=5e-4)
    top2 = np.sort(proba_sk, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.05
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(gm.predict(X32)[clear], sk.predict(X32)[clear])
    np.testing.assert_array_equal(gm.predict(X32)[clear], gm64.predict(X64)[clear])
    ss_sk = sk.score_samples(X32)
    assert gm.score_samples(X32).dtype == np.float32 == ss_sk.dtype
    np.testing.assert_allclose(gm.score_samples(X32), ss_sk, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(gm.score_samples(X32), gm64.score_samples(X64), rtol=1e-5, atol=1e-4)
    assert_scalar_rel(gm.score(X32), sk.score(X32), 1e-4, "score")
    assert_scalar_rel(gm.bic(X32), sk.bic(X32), 1e-4, "bic")
    assert_scalar_rel(gm.aic(X32), sk.aic(X32), 1e-4, "aic")


def test_float32_far_from_origin_matches_float64():
    """Data at an offset of 1e3, where the uncentred E[x²] - μ² loses every digit of a
    unit variance in float32 (eps32 · 1e6 ~ 0.1; scikit-learn's float32 tied fit is 40%
    off here): gmmfast's float32 fit stays within 2e-6 (covariances, ~1) and 1e-6
    (means, ~1e3) relative of its float64 fit of the same numbers (observed 2e-7 and
    4e-8: float64 statistics centred at the current means)."""
    X, y = make_blobs(seed=4, offset=1e3)
    X32 = X.astype(np.float32)
    for covariance_type in COVARIANCE_TYPES:
        w, m, p = init_from_labels(X32, y, covariance_type, 1e-6)
        kw = dict(n_components=3, covariance_type=covariance_type, tol=0.0, max_iter=10,
                  weights_init=w, means_init=m, precisions_init=p)
        a = quiet_fit(GaussianMixture(**kw), X32)
        b = quiet_fit(GaussianMixture(**kw), X32.astype(np.float64))
        assert_rel(a.covariances_, b.covariances_, 2e-6, covariance_type)
        assert_rel(a.means_, b.means_, 1e-6, covariance_type)


# --------------------------------------------------------------------------------------
# 2. semantics


def test_n_init_keeps_the_best_run():
    """n_init=5 equals the best of five single runs drawing from the same RandomState
    (each run takes its seed from the shared stream, as in scikit-learn)."""
    X, _ = make_blobs(seed=1, n_samples=300, n_blobs=5)
    kw = dict(n_components=4, init_params="random_from_data", max_iter=200)
    best = quiet_fit(GaussianMixture(n_init=5, random_state=np.random.RandomState(3), **kw), X)
    stream = np.random.RandomState(3)
    singles = [quiet_fit(GaussianMixture(random_state=stream, **kw), X) for _ in range(5)]
    bounds = [s.lower_bound_ for s in singles]
    assert len(set(bounds)) > 1  # the runs differ, so keeping the best is tested
    assert_same_fit(best, singles[int(np.argmax(bounds))])
    assert best.lower_bound_ == max(bounds)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_warm_start_continues_like_sklearn(covariance_type):
    """warm_start: the second fit continues from the first fit's parameters and lower
    bound. Against scikit-learn (1e-9, as in the float64 parity test) after each fit,
    and against one cold fit of 3 + 3 iterations (bit-identical: the same float64
    parameters enter the same computation)."""
    X = dataset("iris")[0]
    kw = init_kwargs("iris", covariance_type)
    kw.update(tol=0.0, max_iter=3)
    sk = SkGM(warm_start=True, **kw)
    gm = GaussianMixture(warm_start=True, **kw)
    for _ in range(2):
        with pytest.warns(SkConvergenceWarning):
            sk.fit(X)
        with pytest.warns(SkConvergenceWarning):
            gm.fit(X)
        assert gm.n_iter_ == sk.n_iter_ == 3
        for attr in PARAM_ATTRS:
            assert_rel(getattr(gm, attr), getattr(sk, attr), 1e-9, attr)
        np.testing.assert_allclose(gm.lower_bounds_, sk.lower_bounds_, rtol=1e-9)
    cold = quiet_fit(GaussianMixture(**{**kw, "max_iter": 6}), X)
    for attr in PARAM_ATTRS:
        np.testing.assert_array_equal(getattr(gm, attr), getattr(cold, attr))
    assert gm.lower_bounds_ == cold.lower_bounds_[3:]

    # a converged model: the next warm fit stops after one iteration, as scikit-learn's
    kw.update(tol=1e-3, max_iter=100)
    sk = SkGM(warm_start=True, **kw).fit(X)
    gm = GaussianMixture(warm_start=True, **kw).fit(X)
    sk.fit(X)
    gm.fit(X)
    assert gm.n_iter_ == sk.n_iter_ == 1 and gm.converged_ and sk.converged_


@pytest.mark.parametrize("max_iter", [1, 100])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_fit_predict_equals_fit_then_predict(covariance_type, max_iter):
    """fit_predict(X) == fit(X).predict(X), converged or not (scikit-learn's guarantee:
    a final E-step with the returned parameters)."""
    X, _ = make_blobs(seed=2)
    kw = dict(n_components=3, covariance_type=covariance_type, random_state=0, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkConvergenceWarning)
        labels = GaussianMixture(**kw).fit_predict(X)
        fitted = GaussianMixture(**kw).fit(X)
    np.testing.assert_array_equal(labels, fitted.predict(X))
    assert labels.dtype == np.int64 and len(np.unique(labels)) == 3


def test_convergence_warning_is_sklearns():
    """Not converged: scikit-learn's ConvergenceWarning class with its message."""
    X = dataset("iris")[0]
    kw = init_kwargs("iris", "full")
    kw.update(max_iter=2)
    with pytest.warns(SkConvergenceWarning) as sk_record:
        SkGM(**kw).fit(X)
    with pytest.warns(SkConvergenceWarning) as gm_record:
        gm = GaussianMixture(**kw).fit(X)
    assert gmmfast.ConvergenceWarning is SkConvergenceWarning
    assert [str(w.message) for w in gm_record] == [str(w.message) for w in sk_record]
    assert gm.converged_ is False
    # converged: no warning at all
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert GaussianMixture(**{**kw, "max_iter": 100}).fit(X).converged_


@pytest.mark.parametrize(
    "method", ["predict", "predict_proba", "score_samples", "score", "bic", "aic", "sample", "save"]
)
def test_not_fitted_error(method, tmp_path):
    """Before fit: scikit-learn's NotFittedError with its message."""
    X = dataset("iris")[0]
    args = {"sample": (2,), "save": (tmp_path / "m.gmm",)}.get(method, (X,))
    typ, msg = error_of(lambda: getattr(GaussianMixture(), method)(*args))
    assert issubclass(typ, SkNotFittedError) and gmmfast.NotFittedError is SkNotFittedError
    if method != "save":
        sk_typ, sk_msg = error_of(lambda: getattr(SkGM(), method)(*args))
        assert (typ, msg) == (sk_typ, sk_msg)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_max_iter_zero(covariance_type):
    """max_iter=0 returns the initial parameters, n_iter_=0, lower_bound_=-inf,
    lower_bounds_=[], converged_=False and no ConvergenceWarning (scikit-learn's
    semantics). The initial parameters: the given ones when all three are given
    (precisions_ exactly, covariances_ their inverse), else ops.initial_params with
    the same random state (bit-identical)."""
    X = dataset("iris")[0]
    kw = init_kwargs("iris", covariance_type)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gm = GaussianMixture(max_iter=0, **kw).fit(X)
        sk = SkGM(max_iter=0, covariance_type=covariance_type, n_components=3, random_state=0).fit(X)
    for est in (gm, sk):
        assert est.n_iter_ == 0 and est.converged_ is False
        assert est.lower_bound_ == -np.inf and est.lower_bounds_ == []
    np.testing.assert_array_equal(gm.weights_, kw["weights_init"])
    np.testing.assert_array_equal(gm.means_, kw["means_init"])
    np.testing.assert_allclose(gm.precisions_, kw["precisions_init"], rtol=1e-12, atol=1e-300)
    inv = (np.linalg.inv(kw["precisions_init"]) if covariance_type in ("full", "tied")
           else 1.0 / kw["precisions_init"])
    np.testing.assert_allclose(gm.covariances_, inv, rtol=1e-12)

    gm = GaussianMixture(3, covariance_type=covariance_type, max_iter=0, random_state=5).fit(X)
    want = ops.initial_params(X, 3, covariance_type, random_state=np.random.RandomState(5))
    for attr in ("weights", "means", "covariances", "precisions_cholesky"):
        np.testing.assert_array_equal(getattr(gm, attr + "_"), getattr(want, attr))


@pytest.mark.parametrize("verbose", [1, 2])
def test_verbose_output_matches_sklearn(verbose):
    """verbose=1/2 print scikit-learn's lines (timings masked), for a converged and a
    non-converged run and n_init=2."""

    def lines(cls, **kw):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cls(**kw).fit(X)
        text = re.sub(r"time lapse \d+\.\d{5}s", "time lapse <t>s", out.getvalue())
        return text.splitlines()

    X = dataset("iris")[0]
    for max_iter in (5, 100):
        kw = init_kwargs("iris", "full")
        kw.update(verbose=verbose, verbose_interval=2, n_init=2, max_iter=max_iter)
        got = lines(GaussianMixture, **kw)
        want = lines(SkGM, **kw)
        assert got == want
        assert any("Iteration 2" in line for line in got)
        assert got[-1].startswith(
            "Initialization converged" if max_iter == 100 else "Initialization did not converge"
        )


def _canonical(est):
    """Fitted parameters with the components sorted by their means' first coordinate:
    with n_init > 1 two runs can reach one optimum with the components permuted and
    lower bounds equal to the last bit, and which of them is kept is then a rounding
    coin flip in either library."""
    order = np.argsort(est.means_[:, 0], kind="stable")
    per_component = est.covariance_type != "tied"
    return {
        attr: (getattr(est, attr)[order] if attr in ("weights_", "means_") or per_component
               else getattr(est, attr))
        for attr in PARAM_ATTRS
    }


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_same_random_state_same_fit_as_sklearn(covariance_type, init_params):
    """No initial parameters given: with the same random_state, gmmfast's own k-means
    (and k-means++) draws scikit-learn's random numbers in scikit-learn's order, so
    float64 fits start where scikit-learn's start and end where they end, n_init > 1
    included (each run continues the one stream). Tolerance 1e-9 as in the same-start
    parity test above; the labels of k-means agree exactly (no row within rounding of a
    tie on this data).

    One documented difference: for 'tied' with one-hot initial responsibilities
    ('k-means++'), scikit-learn's tied covariance divides Xᵀ X of every row by the K
    seed rows' weight (its formula assumes responsibilities that sum to one per row),
    which starts EM from a far too wide covariance; gmmfast takes the covariance of the
    seed rows, and ends at a higher likelihood."""
    X, _ = make_blobs(seed=11, n_samples=1500, n_features=4, n_blobs=7, spread=2.5)
    for seed in (0, 1, 2):
        for n_init in (1, 2):
            kw = dict(n_components=6, covariance_type=covariance_type, init_params=init_params,
                      n_init=n_init, random_state=seed, tol=1e-4, max_iter=300)
            sk = quiet_fit(SkGM(**kw), X)
            gm = quiet_fit(GaussianMixture(**kw), X)
            if covariance_type == "tied" and init_params == "k-means++":
                assert gm.lower_bound_ > sk.lower_bound_ + 0.1
                continue
            assert gm.n_iter_ == sk.n_iter_
            got, want = _canonical(gm), _canonical(sk)
            for attr in PARAM_ATTRS:
                assert_rel(got[attr], want[attr], 1e-9, attr)
            assert_scalar_rel(gm.lower_bound_, sk.lower_bound_, 1e-9, "lower_bound_")


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
def test_random_state_determinism(init_params):
    """The same seed gives bit-identical fits (an int and a RandomState seeded with it
    are the same stream, as in scikit-learn); different seeds can give different
    initialisations."""
    X, _ = make_blobs(seed=3, n_samples=300, n_blobs=6)
    kw = dict(n_components=5, init_params=init_params, max_iter=20)
    a = quiet_fit(GaussianMixture(random_state=7, **kw), X)
    b = quiet_fit(GaussianMixture(random_state=7, **kw), X)
    c = quiet_fit(GaussianMixture(random_state=np.random.RandomState(7), **kw), X)
    assert_same_fit(a, b)
    assert_same_fit(a, c)
    inits = [
        GaussianMixture(random_state=seed, **{**kw, "max_iter": 0}).fit(X).means_
        for seed in range(6)
    ]
    assert any(not np.array_equal(inits[0], m) for m in inits[1:])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_sample_matches_sklearn(covariance_type, dtype):
    """sample(n) draws exactly scikit-learn's numbers from the same fitted parameters
    and random_state (the fitted arrays copied into a scikit-learn model)."""
    X = dataset("iris")[0].astype(dtype)
    gm = GaussianMixture(3, covariance_type=covariance_type, random_state=11).fit(X)
    sk = SkGM(3, covariance_type=covariance_type, random_state=11)
    for attr in PARAM_ATTRS:
        setattr(sk, attr, getattr(gm, attr))
    for n in (1, 7, 200):
        Xg, yg = gm.sample(n)
        Xs, ys = sk.sample(n)
        assert Xg.dtype == Xs.dtype == np.float64 and yg.dtype == ys.dtype
        assert Xg.shape == (n, 4)
        np.testing.assert_array_equal(Xg, Xs)
        np.testing.assert_array_equal(yg, ys)


def test_sample_errors():
    gm = GaussianMixture(2, random_state=0).fit(dataset("iris")[0])
    for bad in (0, -1):
        with pytest.raises(ValueError, match=rf"Invalid value for 'n_samples': {bad} \. The sampling requires at least one sample\."):
            gm.sample(bad)


def test_float32_input_float32_attributes_like_sklearn():
    X32 = dataset("iris")[0].astype(np.float32)
    gm = GaussianMixture(3, random_state=0).fit(X32)
    sk = SkGM(3, random_state=0).fit(X32)
    for attr in PARAM_ATTRS:
        assert getattr(gm, attr).dtype == getattr(sk, attr).dtype == np.float32, attr
    for method in ("score_samples", "predict_proba"):
        assert getattr(gm, method)(X32).dtype == getattr(sk, method)(X32).dtype == np.float32
    # float32 data under a float64 model are scored in float64, as scikit-learn does
    X = dataset("iris")[0]
    gm64 = GaussianMixture(3, random_state=0).fit(X)
    sk64 = SkGM(3, random_state=0).fit(X)
    assert gm64.score_samples(X32).dtype == sk64.score_samples(X32).dtype == np.float64
    np.testing.assert_array_equal(gm64.score_samples(X32), gm64.score_samples(X32.astype(np.float64)))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, bool])
def test_integer_input_is_float64(dtype):
    """Integer (and bool) data are converted to float64: bit-identical to fitting the
    float64 copy, with float64 attributes (scikit-learn's rule)."""
    X = datasets.load_digits().data[:200, 10:14]
    Xi = (X > 5) if dtype is bool else X.astype(dtype)
    a = GaussianMixture(2, covariance_type="diag", random_state=0).fit(Xi)
    b = GaussianMixture(2, covariance_type="diag", random_state=0).fit(np.asarray(Xi, dtype=np.float64))
    assert a.means_.dtype == np.float64
    assert_same_fit(a, b)


def test_feature_names_like_sklearn():
    """n_features_in_, feature_names_in_ and the feature-name warnings/errors are
    scikit-learn's (compared message for message)."""
    pd = pytest.importorskip("pandas")
    X = dataset("iris")[0]
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])

    def run(cls, fit_X, predict_X):
        est = cls(2, random_state=0).fit(fit_X)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            try:
                est.predict(predict_X)
                error = None
            except Exception as exc:  # noqa: BLE001 - compared below
                error = (type(exc), str(exc))
        return est, [str(w.message) for w in record], error

    cases = [
        (df, df),  # no warning
        (df, X),  # fitted with names, predict without
        (X, df),  # fitted without names, predict with
        (df, df[["b", "a", "c", "d"]]),  # reordered
        (df, df.rename(columns={"a": "z"})),  # renamed
        (df, df[["a", "b", "c"]]),  # a column missing: the names message comes first
    ]
    for fit_X, predict_X in cases:
        gm, gm_warn, gm_err = run(GaussianMixture, fit_X, predict_X)
        sk, sk_warn, sk_err = run(SkGM, fit_X, predict_X)
        assert gm_warn == sk_warn
        assert gm_err == sk_err
        assert gm.n_features_in_ == sk.n_features_in_ == 4
        if fit_X is df:
            np.testing.assert_array_equal(gm.feature_names_in_, ["a", "b", "c", "d"])
            assert gm.feature_names_in_.dtype == object
        else:
            assert not hasattr(gm, "feature_names_in_") and not hasattr(sk, "feature_names_in_")

    # refitting on an array forgets the names; integer column names are no names
    gm = GaussianMixture(2, random_state=0).fit(df).fit(X)
    assert not hasattr(gm, "feature_names_in_")
    assert not hasattr(GaussianMixture(2, random_state=0).fit(pd.DataFrame(X)), "feature_names_in_")
    # mixed string / non-string names: scikit-learn's TypeError
    mixed = pd.DataFrame(X, columns=["a", 1, "c", "d"])
    assert error_of(lambda: GaussianMixture(2).fit(mixed)) == error_of(lambda: SkGM(2).fit(mixed))
    # a float32 frame stays float32
    assert GaussianMixture(2, random_state=0).fit(df.astype(np.float32)).means_.dtype == np.float32


# --------------------------------------------------------------------------------------
# 3. error paths


def _normalise_set(msg):
    """The set in 'must be a str among {...}' prints in hash order: sort it."""
    def sort(match):
        return "{" + ", ".join(sorted(match.group(1).split(", "))) + "}"

    return re.sub(r"\{([^{}]*)\}", sort, msg)


BAD_PARAMS = [
    dict(n_components=0),
    dict(n_components=1.5),
    dict(n_components="2"),
    dict(covariance_type="x"),
    dict(covariance_type=None),
    dict(tol=-1.0),
    dict(tol=np.nan),
    dict(reg_covar=-1e-3),
    dict(reg_covar=np.inf),
    dict(max_iter=-1),
    dict(max_iter=2.0),
    dict(n_init=0),
    dict(init_params="x"),
    dict(warm_start=1),
    dict(verbose=-1),
    dict(verbose_interval=0),
    dict(random_state="x"),
    dict(random_state=-1),
    dict(weights_init="abc"),
    dict(means_init=3.0),
]


@pytest.mark.parametrize("params", BAD_PARAMS, ids=lambda p: "-".join(f"{k}={v!r}" for k, v in p.items()))
def test_bad_constructor_params_like_sklearn(params):
    """scikit-learn's InvalidParameterError (a ValueError and a TypeError) with its
    message, raised by fit."""
    X = dataset("iris")[0]
    est = GaussianMixture(**params)  # the constructor only stores
    typ, msg = error_of(lambda: est.fit(X))
    sk_typ, sk_msg = error_of(lambda: SkGM(**params).fit(X))
    assert issubclass(typ, InvalidParameterError) and sk_typ is InvalidParameterError
    assert issubclass(typ, ValueError) and issubclass(typ, TypeError)
    assert _normalise_set(msg) == _normalise_set(sk_msg)


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(recovery="x"), "The 'recovery' parameter of GaussianMixture must be None, 'reg_covar' or 'reseed'. Got 'x' instead."),
        (dict(n_threads=0), "The 'n_threads' parameter of GaussianMixture must be an int in the range [1, inf). Got 0 instead."),
        (dict(n_threads=-2), "The 'n_threads' parameter of GaussianMixture must be an int in the range [1, inf). Got -2 instead."),
        (dict(n_threads=1.5), "The 'n_threads' parameter of GaussianMixture must be an int in the range [1, inf). Got 1.5 instead."),
        (dict(n_components=True), "The 'n_components' parameter of GaussianMixture must be an int in the range [1, inf). Got True instead."),
    ],
)
def test_bad_gmmfast_params(params, message):
    """gmmfast's own parameters (and a bool n_components, where scikit-learn raises a
    bare 'an integer is required' TypeError from deep inside)."""
    with pytest.raises(InvalidParameterError) as info:
        GaussianMixture(**params).fit(dataset("iris")[0])
    assert str(info.value) == message


def _swap_numbers(msg):
    return re.sub(r"max value (\S+), min value (\S+)", r"max value \2, min value \1", msg)


def _bad_inits():
    eye2 = np.eye(2)
    good = {"full": np.stack([eye2, eye2]), "tied": eye2, "diag": np.ones((2, 2)), "spherical": np.ones(2)}
    cases = [
        ("weights-not-normalised", "full", dict(weights_init=[0.5, 0.6])),
        ("weights-out-of-range", "full", dict(weights_init=[1.2, -0.2])),
        ("weights-shape", "full", dict(weights_init=[0.5, 0.5, 0.0])),
        ("weights-2d", "full", dict(weights_init=[[0.5, 0.5]])),
        ("weights-nan", "full", dict(weights_init=[np.nan, 1.0])),
        ("weights-inf", "full", dict(weights_init=[np.inf, 0.0])),
        ("weights-complex", "full", dict(weights_init=[0.5 + 0j, 0.5])),
        ("weights-strings", "full", dict(weights_init=["a", "b"])),
        ("means-shape", "full", dict(means_init=np.zeros((3, 2)))),
        ("means-1d", "full", dict(means_init=np.zeros(4))),
        ("means-3d", "full", dict(means_init=np.zeros((2, 2, 1)))),
        ("means-nan", "full", dict(means_init=[[np.nan, 0.0], [0.0, 0.0]])),
        ("means-inf", "full", dict(means_init=[[np.inf, 0.0], [0.0, 0.0]])),
        ("full-not-symmetric", "full", dict(precisions_init=np.array([[[1, 0.5], [0.4, 1.0]]] * 2))),
        ("tied-not-pd", "tied", dict(precisions_init=np.array([[1.0, 2.0], [2.0, 1.0]]))),
        ("tied-3d", "tied", dict(precisions_init=np.zeros((2, 2, 2)))),
        ("spherical-2d", "spherical", dict(precisions_init=np.ones((2, 1)))),
    ]
    for t, P in good.items():
        wrong = P[..., None] if P.ndim < 3 else P[:1]
        cases += [
            (f"{t}-shape", t, dict(precisions_init=wrong)),
            (f"{t}-negative", t, dict(precisions_init=-P)),
            (f"{t}-zero", t, dict(precisions_init=np.zeros_like(P))),
            (f"{t}-nan", t, dict(precisions_init=P * np.nan)),
        ]
    return cases


@pytest.mark.parametrize("name, covariance_type, params", _bad_inits(), ids=lambda c: c if isinstance(c, str) else "")
def test_bad_initial_parameters_like_sklearn(name, covariance_type, params):
    """weights_init / means_init / precisions_init: scikit-learn's exception type and
    message. One deliberate difference: scikit-learn 1.9 prints min(weights) after
    'max value' and max(weights) after 'min value'; gmmfast keeps the words and prints
    the right numbers."""
    X = np.random.default_rng(0).random((20, 2))
    kw = dict(n_components=2, covariance_type=covariance_type, **params)
    typ, msg = error_of(lambda: GaussianMixture(**kw).fit(X))
    sk_typ, sk_msg = error_of(lambda: SkGM(**kw).fit(X))
    assert typ is sk_typ
    if name == "weights-out-of-range":
        assert msg == _swap_numbers(sk_msg) != sk_msg
        assert "max value 1.20000, min value -0.20000" in msg
    else:
        assert msg == sk_msg


X_ERRORS = {
    "1d": np.arange(6.0),
    "3d": np.zeros((4, 2, 2)),
    "scalar": np.float64(3.0),
    "complex": np.ones((5, 2)) + 1j,
    "strings": np.array([["a", "b"], ["c", "d"], ["e", "f"]]),
    "string-list": [["a", "b"], ["c", "d"], ["e", "f"]],
    "objects": np.array([["a", 1.0], [2.0, 3.0], [4.0, 5.0]], dtype=object),
    "one-sample": np.ones((1, 3)),
    "no-features": np.zeros((5, 0)),
    "no-samples": np.zeros((0, 3)),
    "fewer-samples-than-components": np.random.default_rng(0).random((3, 2)),
    "ragged": [[1.0, 2.0], [3.0]],
}


@pytest.mark.parametrize("case", sorted(X_ERRORS))
def test_bad_X_like_sklearn(case):
    X = X_ERRORS[case]
    kw = dict(n_components=5 if case == "fewer-samples-than-components" else 1)
    got = error_of(lambda: GaussianMixture(**kw).fit(X))
    want = error_of(lambda: SkGM(**kw).fit(X))
    assert got == want


def test_sparse_X_like_sklearn():
    sp = pytest.importorskip("scipy.sparse")
    X = sp.csr_matrix(np.eye(5))
    assert error_of(lambda: GaussianMixture(1).fit(X)) == error_of(lambda: SkGM(1).fit(X))


@pytest.mark.parametrize("value, words", [(np.nan, "NaN"), (np.inf, "infinity"), (-np.inf, "infinity")])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_non_finite_X(value, words, dtype):
    """NaN / inf in X: scikit-learn's message (its first sentence) plus the first bad
    row; the same in predict. scikit-learn appends advice on imputation for NaN, which
    gmmfast replaces by the row number."""
    X = np.random.default_rng(0).random((20, 3)).astype(dtype)
    X[7, 1] = value
    sk_msg = error_of(lambda: SkGM(1).fit(X))[1].splitlines()[0]
    typ, msg = error_of(lambda: GaussianMixture(1).fit(X))
    assert typ is ValueError
    assert msg.startswith(sk_msg.rstrip("."))
    assert words in msg and "(first at row 7)" in msg
    fitted = GaussianMixture(1).fit(np.nan_to_num(X, posinf=0, neginf=0))
    for method in ("predict", "predict_proba", "score_samples", "score"):
        with pytest.raises(ValueError, match=re.escape(sk_msg.rstrip("."))):
            getattr(fitted, method)(X)


def test_predict_wrong_number_of_features_like_sklearn():
    X = dataset("iris")[0]
    gm = GaussianMixture(2, random_state=0).fit(X)
    sk = SkGM(2, random_state=0).fit(X)
    for method in ("predict", "predict_proba", "score_samples", "score", "bic", "aic"):
        got = error_of(lambda: getattr(gm, method)(X[:, :3]))
        want = error_of(lambda: getattr(sk, method)(X[:, :3]))
        assert got == want
        assert "X has 3 features, but GaussianMixture is expecting 4 features as input." in got[1]


@pytest.mark.parametrize(
    "sample_weight, message",
    [
        (np.ones(10), r"sample_weight.shape == \(10,\), expected \(150,\)!"),
        (np.ones((150, 1)), "Sample weights must be 1D array or scalar"),
        (-np.ones(150), "Negative values in data passed to `sample_weight`"),
        (np.r_[np.nan, np.ones(149)], "sample_weight must be finite"),
        (np.r_[np.inf, np.ones(149)], "sample_weight must be finite"),
        (np.zeros(150), "sample_weight must not sum to zero"),
        (np.array(["a"] * 150), "sample_weight must be numeric, got dtype <U1"),
        (-1.0, "Negative values in data passed to `sample_weight`"),
    ],
)
def test_bad_sample_weight(sample_weight, message):
    X = dataset("iris")[0]
    with pytest.raises(ValueError, match=message):
        GaussianMixture(2).fit(X, sample_weight=sample_weight)
    with pytest.raises(ValueError, match=message):
        GaussianMixture(2).fit_predict(X, sample_weight=sample_weight)
    fitted = GaussianMixture(2, random_state=0).fit(X)
    for method in ("score", "bic", "aic"):
        with pytest.raises(ValueError, match=message):
            getattr(fitted, method)(X, sample_weight=sample_weight)


# --------------------------------------------------------------------------------------
# 4. sample weights


def _weights_case(covariance_type):
    X = dataset("iris")[0]
    kw = init_kwargs("iris", covariance_type)
    kw.update(tol=1e-6, max_iter=300)
    return X, kw


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_integer_weights_equal_repeated_rows(covariance_type):
    """Integer weights (0-3) == the rows repeated that many times, from the same start.

    Tolerance 1e-10 relative: the statistics are the same sums grouped differently
    (w·x vs x + x + ...), so they agree to rounding (~1e-15), compounded over the
    iterations; the iteration count and convergence must be identical.
    """
    X, kw = _weights_case(covariance_type)
    w = np.random.default_rng(1).integers(0, 4, size=len(X))
    a = GaussianMixture(**kw).fit(X, sample_weight=w)
    Xr = np.repeat(X, w, axis=0)
    b = GaussianMixture(**kw).fit(Xr)
    assert a.n_iter_ == b.n_iter_ and a.converged_ and b.converged_
    for attr in PARAM_ATTRS:
        assert_rel(getattr(a, attr), getattr(b, attr), 1e-10, attr)
    assert_scalar_rel(a.lower_bound_, b.lower_bound_, 1e-12)
    np.testing.assert_allclose(a.lower_bounds_, b.lower_bounds_, rtol=1e-10)
    # the weighted score / bic / aic of X are those of the repeated rows
    assert_scalar_rel(a.score(X, sample_weight=w), a.score(Xr), 1e-12, "score")
    assert_scalar_rel(a.bic(X, sample_weight=w), a.bic(Xr), 1e-12, "bic")
    assert_scalar_rel(a.aic(X, sample_weight=w), a.aic(Xr), 1e-12, "aic")
    # and fit_predict with weights labels every row (zero-weight rows included)
    labels = GaussianMixture(**kw).fit_predict(X, sample_weight=w)
    np.testing.assert_array_equal(labels, a.predict(X))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_zero_weights_equal_removed_rows(covariance_type):
    """Zero weight == the row is absent (1e-12: the same nonzero terms, in the same
    order, plus exact zeros)."""
    X, kw = _weights_case(covariance_type)
    keep = np.random.default_rng(2).random(len(X)) < 0.7
    a = GaussianMixture(**kw).fit(X, sample_weight=keep.astype(float))
    b = GaussianMixture(**kw).fit(X[keep])
    assert a.n_iter_ == b.n_iter_
    for attr in PARAM_ATTRS:
        assert_rel(getattr(a, attr), getattr(b, attr), 1e-12, attr)
    assert_scalar_rel(a.lower_bound_, b.lower_bound_, 1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_uniform_weights_equal_no_weights(covariance_type):
    """A constant weight (here 3.7, and a scalar) changes nothing, k-means
    initialisation included (1e-10: weighted sums scaled by 3.7 then divided by the
    scaled total)."""
    X, _ = make_blobs(seed=5)
    kw = dict(n_components=3, covariance_type=covariance_type, random_state=0)
    a = GaussianMixture(**kw).fit(X)
    for sw in (np.full(len(X), 3.7), 3.7):
        b = GaussianMixture(**kw).fit(X, sample_weight=sw)
        assert a.n_iter_ == b.n_iter_
        for attr in PARAM_ATTRS:
            assert_rel(getattr(b, attr), getattr(a, attr), 1e-10, attr)
        assert_scalar_rel(b.lower_bound_, a.lower_bound_, 1e-12)
        assert_scalar_rel(a.score(X, sample_weight=sw), a.score(X), 1e-12)
        assert_scalar_rel(a.bic(X, sample_weight=np.ones(len(X))), a.bic(X), 1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_weighted_fit_matches_reference_em(covariance_type, dtype):
    """A weighted fit against gmmfast.reference.em from the same start with the same
    real-valued weights. float64: 1e-9 (the reference is float64 NumPy with the same
    centred formulas; differences are summation order). float32: the reference runs
    in float64 on the float32 numbers, so 2e-5 as for gmmfast float32 vs float64."""
    X, kw = _weights_case(covariance_type)
    X = X.astype(dtype)
    sw = np.random.default_rng(3).uniform(0.1, 5.0, size=len(X)).astype(dtype)
    kw.update(tol=0.0, max_iter=25)
    with pytest.warns(SkConvergenceWarning):
        gm = GaussianMixture(**kw).fit(X, sample_weight=sw)
    covariances = (np.linalg.inv(kw["precisions_init"]) if covariance_type in ("full", "tied")
                   else 1.0 / kw["precisions_init"])
    prec_chol, _ = ref.precision_cholesky(covariances, covariance_type, n_features=X.shape[1])
    init = MixtureParams(covariance_type, kw["weights_init"], kw["means_init"], covariances, prec_chol)
    want = ref.em(X, init, tol=0.0, max_iter=25, reg_covar=kw["reg_covar"],
                  sample_weight=sw.astype(np.float64))
    tol = 1e-9 if dtype == np.float64 else 2e-5
    assert gm.n_iter_ == want.n_iter == 25
    for attr in ("weights", "means", "covariances", "precisions_cholesky"):
        assert_rel(getattr(gm, attr + "_"), getattr(want.params, attr), tol, attr)
    assert_scalar_rel(gm.lower_bound_, want.lower_bound, tol)
    np.testing.assert_allclose(gm.lower_bounds_, want.lower_bounds, rtol=tol)


# --------------------------------------------------------------------------------------
# 5. recovery


def collapse_data():
    """20 copies of the origin and a blob of 40 points around (50, 50), with a start
    that puts one component on each: the first M-step gives the origin's component a
    covariance of exactly zero (its mean is exactly 0, the blob's responsibilities for
    it underflow to exactly 0), so with reg_covar=0 scikit-learn raises for full, diag
    and spherical. For tied, the same holds for data whose second feature is constant
    zero (the shared covariance is singular)."""
    rng = np.random.default_rng(0)
    X = np.vstack([np.zeros((20, 2)), rng.normal(size=(40, 2)) + 50.0])
    return X


def collapse_case(covariance_type, dtype=np.float64):
    X = collapse_data()
    precisions = {"full": np.stack([np.eye(2)] * 2), "tied": np.eye(2),
                  "diag": np.ones((2, 2)), "spherical": np.ones(2)}[covariance_type]
    if covariance_type == "tied":
        X = X.copy()
        X[:, 1] = 0.0
    # the start in the data's dtype: scikit-learn computes float32 data with float64
    # parameters in float64 (NumPy promotion) and its error message then omits the
    # float32 advice; gmmfast always runs the data's dtype
    kw = dict(n_components=2, covariance_type=covariance_type, reg_covar=0.0,
              weights_init=np.array([1 / 3, 2 / 3], dtype=dtype),
              means_init=np.array([[0.0, 0.0], [50.0, X[20:, 1].mean()]], dtype=dtype),
              precisions_init=precisions.astype(dtype), random_state=0)
    return X.astype(dtype), kw


def kmeans_collapse_data():
    """No given start: 20 copies of the origin between two blobs. k-means gives the
    copies a cluster of their own, whose initial covariance is exactly zero."""
    rng = np.random.default_rng(0)
    return np.vstack([np.zeros((20, 2)), rng.normal(size=(40, 2)) + 50, rng.normal(size=(40, 2)) - 50])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_recovery_none_raises_sklearns_error(covariance_type, dtype):
    X, kw = collapse_case(covariance_type, dtype)
    want = ILL_DEFINED_COVARIANCE + (ILL_DEFINED_COVARIANCE_FLOAT32 if dtype == np.float32 else "")
    sk_err = error_of(lambda: SkGM(**kw).fit(X))
    gm_err = error_of(lambda: GaussianMixture(**kw).fit(X))
    assert sk_err == gm_err == (ValueError, want)
    if covariance_type != "tied":
        X2 = kmeans_collapse_data().astype(dtype)
        kw2 = dict(n_components=3, covariance_type=covariance_type, reg_covar=0.0, random_state=0)
        assert error_of(lambda: SkGM(**kw2).fit(X2)) == error_of(lambda: GaussianMixture(**kw2).fit(X2)) == (ValueError, want)


def _fit_recording(est, X):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        est.fit(X)
    return [w for w in record if issubclass(w.category, RuntimeWarning)]


def _assert_finite_model(gm, X):
    for attr in PARAM_ATTRS:
        assert np.all(np.isfinite(getattr(gm, attr))), attr
    assert np.isfinite(gm.lower_bound_)
    assert np.all(np.isfinite(gm.score_samples(X)))
    assert np.all(np.isfinite(gm.predict_proba(X)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_recovery_reg_covar(covariance_type, dtype):
    """recovery='reg_covar' fits where scikit-learn raises: finite, reg_covar_ >
    reg_covar, a RuntimeWarning saying so. Since the failure is at the first M-step,
    every M-step ran with reg_covar_: the fit equals scikit-learn's with
    reg_covar=reg_covar_ (float64: 1e-9 as in the parity test)."""
    X, kw = collapse_case(covariance_type, dtype)
    gm = GaussianMixture(recovery="reg_covar", **kw)
    record = _fit_recording(gm, X)
    assert gm.reg_covar_ > gm.reg_covar == 0.0 and gm.n_reseeds_ == 0
    assert len(record) == 1 and "reg_covar raised to" in str(record[0].message)
    _assert_finite_model(gm, X)
    if dtype == np.float64:
        sk = SkGM(**{**kw, "reg_covar": gm.reg_covar_}).fit(X)
        assert gm.n_iter_ == sk.n_iter_
        for attr in ("weights_", "means_", "covariances_"):
            assert_rel(getattr(gm, attr), getattr(sk, attr), 1e-9, attr)
    # without a start: the initial M-step (k-means clusters) recovers the same way
    if covariance_type != "tied":
        X2 = kmeans_collapse_data().astype(dtype)
        gm2 = GaussianMixture(3, covariance_type=covariance_type, reg_covar=0.0,
                              random_state=0, recovery="reg_covar")
        assert len(_fit_recording(gm2, X2)) == 1
        assert gm2.reg_covar_ > 0
        _assert_finite_model(gm2, X2)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_recovery_reseed(covariance_type, dtype):
    """recovery='reseed' fits where scikit-learn raises: finite, n_reseeds_ > 0 (tied
    has no component to restart and regularises instead), a RuntimeWarning, and two
    fits are bit-identical."""
    X, kw = collapse_case(covariance_type, dtype)
    fits = []
    for _ in range(2):
        gm = GaussianMixture(recovery="reseed", **kw)
        record = _fit_recording(gm, X)
        assert len(record) == 1
        _assert_finite_model(gm, X)
        fits.append(gm)
    assert_same_fit(*fits)
    gm = fits[0]
    if covariance_type == "tied":
        assert gm.n_reseeds_ == 0 and gm.reg_covar_ > 0
    else:
        assert 0 < gm.n_reseeds_ <= max(10, gm.n_components)
        assert f"{gm.n_reseeds_} component restart(s)" in str(record[0].message)
        X2 = kmeans_collapse_data().astype(dtype)
        kw2 = dict(n_components=3, covariance_type=covariance_type, reg_covar=0.0,
                   random_state=0, recovery="reseed")
        a = GaussianMixture(**kw2)
        assert len(_fit_recording(a, X2)) == 1
        b = quiet_fit(GaussianMixture(**kw2), X2)
        assert a.n_reseeds_ > 0
        _assert_finite_model(a, X2)
        assert_same_fit(a, b)


def test_reseed_restarts_a_collapsed_component_at_the_worst_sample():
    """A component whose responsibility falls below two samples is restarted (its
    covariance is fine: this is the collapse rule, not the failure rule) at the sample
    the E-step's mixture explains worst, with weight 1/K (then renormalised) and the
    mean covariance of the other components, whose M-step is unchanged. Checked
    exactly after one iteration against the plain M-step and score_samples."""
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(100, 2)), rng.normal(size=(30, 2)) * 0.5 + [12.0, 0.0]])
    # component 2 starts far from every sample: it collapses at the first M-step
    kw = dict(n_components=3, covariance_type="full", random_state=0,
              weights_init=[0.45, 0.45, 0.10], means_init=[[-0.5, 0], [0.5, 0], [0, 200.0]],
              precisions_init=np.stack([np.eye(2)] * 3))
    start = GaussianMixture(**kw, max_iter=0).fit(X)
    worst = int(np.argmin(start.score_samples(X)))
    plain = quiet_fit(GaussianMixture(**kw, max_iter=1), X)
    assert plain.weights_[2] < 2 / len(X)
    gm = GaussianMixture(recovery="reseed", max_iter=1, **kw)
    record = _fit_recording(gm, X)
    assert gm.n_reseeds_ == 1 and gm.reg_covar_ == gm.reg_covar
    assert len(record) == 1 and "1 component restart(s)" in str(record[0].message)
    np.testing.assert_array_equal(gm.means_[2], X[worst])
    np.testing.assert_array_equal(gm.means_[:2], plain.means_[:2])
    w = np.r_[plain.weights_[:2], 1 / 3]
    np.testing.assert_allclose(gm.weights_, w / w.sum(), rtol=1e-15)
    np.testing.assert_array_equal(gm.covariances_[:2], plain.covariances_[:2])
    np.testing.assert_allclose(gm.covariances_[2], plain.covariances_[:2].mean(axis=0), rtol=1e-15)
    # fitted to the end, the revived component takes part (without recovery it stays
    # dead at weight ~1e-17)
    assert quiet_fit(GaussianMixture(**kw), X).weights_.min() < 1e-10
    assert quiet_fit(GaussianMixture(recovery="reseed", **kw), X).weights_.min() > 0.05


def test_reseed_with_zero_weights_equals_removed_rows():
    """Zero-weight rows are absent for the recovery too: they are never a restart point
    and do not count towards the collapse threshold (1e-12, as for plain fits)."""
    rng = np.random.default_rng(0)
    # a blob, a second blob, and one outlier that a component starts on: it holds one
    # sample's worth of responsibility, below the threshold of two average samples
    X = np.vstack([rng.normal(size=(100, 2)), rng.normal(size=(30, 2)) * 0.5 + [12.0, 0.0],
                   [[30.0, 30.0]]])
    # far rows with zero weight: the worst-explained rows, and 2.5x the row count
    extra = rng.normal(size=(200, 2)) * 0.1 + [-40.0, 40.0]
    kw = dict(n_components=3, covariance_type="full", random_state=0, recovery="reseed",
              weights_init=[0.6, 0.3, 0.1], means_init=[[0.0, 0.0], [12.0, 0.0], [30.0, 30.0]],
              precisions_init=np.stack([np.eye(2)] * 3))
    a = quiet_fit(GaussianMixture(**kw), np.vstack([X, extra]),
                  sample_weight=np.r_[np.ones(len(X)), np.zeros(len(extra))])
    b = quiet_fit(GaussianMixture(**kw), X)
    assert a.n_reseeds_ == b.n_reseeds_ >= 1 and a.n_iter_ == b.n_iter_
    for attr in PARAM_ATTRS:
        assert_rel(getattr(a, attr), getattr(b, attr), 1e-12, attr)


def test_reseed_with_less_budget_than_failures_regularises():
    """White-box: two components fail at once when one restart is left. Restarting one
    and leaving the other ill-defined cannot work (finalize raised); the M-step must
    regularise instead."""
    from gmmfast._recovery import RunState as _RunState, m_step

    rng = np.random.default_rng(0)
    # copies of (0, 0) and of (0, 100): at the first M-step both components have a
    # variance of exactly zero in the first feature
    X = np.vstack([np.zeros((10, 2)), np.tile([0.0, 100.0], (10, 1)), rng.normal(size=(40, 2)) + 50])
    prev = MixtureParams("diag", np.full(3, 1 / 3), np.array([[0.0, 0], [0.0, 100], [50, 50]]),
                         np.ones((3, 2)), np.ones((3, 2)))
    stats = ops.em_stats(X, np.log(prev.weights), prev.means, prev.precisions_cholesky, "diag")
    gm = GaussianMixture(3, covariance_type="diag", reg_covar=0.0, recovery="reseed")
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        ops.finalize(stats, 0.0)
    for used, want_reseeds in ((0, 2), (_RunState.max_reseeds(3) - 1, None)):
        state = _RunState(0.0, len(X))
        state.reseeds = used
        params, restarted = m_step(gm._check_params(), stats, X.dtype, lambda: (X, None), prev, state)
        assert np.all(np.isfinite(params.covariances)) and np.all(params.covariances > 0)
        if want_reseeds is None:
            assert not restarted and state.reg_covar > 0 and state.reseeds == used
        else:
            assert restarted and state.reseeds == want_reseeds and state.reg_covar == 0.0


def test_recovery_with_precisions_init_skips_the_initial_covariance_like_sklearn():
    """With precisions_init, scikit-learn computes no initial covariance, so degenerate
    initial clusters (k-means++ gives one sample per component) do not fail at
    reg_covar=0; gmmfast neither. The fit equals reference.em from gmmfast's initial
    parameters (1e-9)."""
    X, _ = make_blobs(seed=6, n_samples=200)
    P = np.stack([np.eye(3)] * 3)
    kw = dict(n_components=3, reg_covar=0.0, init_params="k-means++", random_state=0,
              precisions_init=P, weights_init=np.full(3, 1 / 3))
    SkGM(**kw).fit(X)  # does not raise
    gm = GaussianMixture(**kw).fit(X)
    start = GaussianMixture(**{**kw, "max_iter": 0}).fit(X)
    init = MixtureParams("full", start.weights_, start.means_, start.covariances_, start.precisions_cholesky_)
    want = ref.em(X, init, tol=1e-3, max_iter=100, reg_covar=0.0)
    assert gm.n_iter_ == want.n_iter
    for attr in ("weights", "means", "covariances"):
        assert_rel(getattr(gm, attr + "_"), getattr(want.params, attr), 1e-9, attr)


@pytest.mark.parametrize("recovery", ["reg_covar", "reseed"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_recovery_on_identical_samples_terminates(covariance_type, recovery):
    """Every sample identical and reg_covar=0: each covariance is exactly zero; the
    recovery must terminate with a finite model (escalating reg_covar from a zero data
    scale used to loop forever)."""
    X = np.full((10, 3), 5.0)
    gm = GaussianMixture(2, covariance_type=covariance_type, reg_covar=0.0, recovery=recovery,
                         random_state=0)
    assert len(_fit_recording(gm, X)) == 1
    assert gm.reg_covar_ > 0
    _assert_finite_model(gm, X)
    used = gm.weights_ > 1e-6  # k-means leaves a component empty (mean 0, weight ~0)
    assert used.any()
    np.testing.assert_allclose(gm.means_[used], 5.0)


def test_recovery_attributes_describe_the_kept_run():
    """reg_covar_ / n_reseeds_ belong to the run whose parameters are kept; without
    recovery they are reg_covar and 0."""
    X = dataset("iris")[0]
    gm = GaussianMixture(3, random_state=0).fit(X)
    assert gm.reg_covar_ == gm.reg_covar and gm.n_reseeds_ == 0
    X2, kw = collapse_case("full")
    gm = quiet_fit(GaussianMixture(recovery="reg_covar", n_init=2, **kw), X2)
    single = quiet_fit(GaussianMixture(recovery="reg_covar", **kw), X2)
    assert gm.reg_covar_ == single.reg_covar_ > 0  # both runs start from the same init


def test_warm_start_keeps_the_raised_reg_covar():
    """A warm start with recovery='reg_covar' continues with the regularisation the
    previous fit ended with (no escalation from reg_covar again); the warning repeats,
    since the model still runs on a raised reg_covar."""
    X, kw = collapse_case("full")
    gm = GaussianMixture(recovery="reg_covar", warm_start=True, **kw)
    assert len(_fit_recording(gm, X)) == 1
    first = gm.reg_covar_
    record = _fit_recording(gm, X)
    assert len(record) == 1 and f"{first:.3g}" in str(record[0].message)
    assert gm.reg_covar_ == first and gm.n_iter_ == 1  # converged: it was already
