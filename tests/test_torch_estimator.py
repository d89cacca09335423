"""GaussianMixture on torch tensors.

A tensor fit runs the same initialisation as a NumPy fit and its EM iterations through
the gmmfast:: torch ops (the code path a CUDA fit takes), so on CPU tensors it must
reproduce the NumPy fit bit for bit: that NumPy fit is the reference here (itself
checked against scikit-learn in test_mixture.py). CUDA tests skip without a GPU.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import gmmfast  # noqa: E402
from gmmfast.datasets import load_old_faithful  # noqa: E402

COV_TYPES = ["full", "tied", "diag", "spherical"]
ATTRS = ["weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"]


@pytest.fixture(scope="module")
def faithful():
    return load_old_faithful()[0]


@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_tensor_fit_equals_numpy_fit(faithful, cov, dtype):
    X = faithful.astype(dtype)
    ref = gmmfast.GaussianMixture(3, covariance_type=cov, random_state=0).fit(X)
    Xt = torch.from_numpy(X)
    gm = gmmfast.GaussianMixture(3, covariance_type=cov, random_state=0).fit(Xt)
    # same kernels, same initialisation, same order of operations: identical numbers
    for name in ATTRS:
        got = getattr(gm, name)
        assert isinstance(got, torch.Tensor) and got.dtype == Xt.dtype
        np.testing.assert_array_equal(got.numpy(), getattr(ref, name))
    assert (gm.n_iter_, gm.converged_, gm.lower_bound_) == (ref.n_iter_, ref.converged_, ref.lower_bound_)
    assert gm.lower_bounds_ == ref.lower_bounds_
    # methods take and return tensors
    labels = gm.predict(Xt)
    assert isinstance(labels, torch.Tensor) and labels.dtype == torch.int64
    np.testing.assert_array_equal(labels.numpy(), ref.predict(X))
    # the same log-responsibilities exponentiated by torch's and NumPy's exp: a few ulp
    ulp = np.finfo(dtype).eps
    np.testing.assert_allclose(gm.predict_proba(Xt).numpy(), ref.predict_proba(X), rtol=4 * ulp, atol=0)
    np.testing.assert_array_equal(gm.score_samples(Xt).numpy(), ref.score_samples(X))
    # score: the same log-likelihoods averaged in float64 (summation order may differ)
    assert gm.score(Xt) == pytest.approx(ref.score(X), rel=1e-12)
    assert gm.bic(Xt) == pytest.approx(ref.bic(X), rel=1e-12)


def test_fit_predict_and_weights_on_tensors(faithful):
    Xt = torch.from_numpy(faithful)
    w = torch.rand(len(faithful), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gm = gmmfast.GaussianMixture(2, random_state=1)
    labels = gm.fit_predict(Xt, sample_weight=w)
    ref = gmmfast.GaussianMixture(2, random_state=1).fit(faithful, sample_weight=w.numpy())
    np.testing.assert_array_equal(labels.numpy(), ref.predict(faithful))
    np.testing.assert_array_equal(gm.means_.numpy(), ref.means_)
    assert gm.score(Xt, sample_weight=w) == pytest.approx(ref.score(faithful, sample_weight=w.numpy()), rel=1e-12)


def test_numpy_in_numpy_out_after_tensor_fit(faithful):
    gm = gmmfast.GaussianMixture(2, random_state=0).fit(torch.from_numpy(faithful))
    out = gm.predict(faithful)
    assert isinstance(out, np.ndarray)
    ref = gmmfast.GaussianMixture(2, random_state=0).fit(faithful)
    np.testing.assert_array_equal(out, ref.predict(faithful))
    # and tensor in, tensor out after a NumPy fit
    assert isinstance(ref.score_samples(torch.from_numpy(faithful)), torch.Tensor)


def test_warm_start_and_n_init_on_tensors(faithful):
    Xt = torch.from_numpy(faithful)
    kw = dict(n_components=3, max_iter=2, warm_start=True, random_state=0, n_init=1)
    a, b = gmmfast.GaussianMixture(**kw), gmmfast.GaussianMixture(**kw)
    with pytest.warns(gmmfast.ConvergenceWarning):
        a.fit(Xt)
        a.fit(Xt)
        b.fit(faithful)
        b.fit(faithful)
    np.testing.assert_array_equal(a.means_.numpy(), b.means_)
    c = gmmfast.GaussianMixture(3, n_init=3, random_state=0).fit(Xt)
    d = gmmfast.GaussianMixture(3, n_init=3, random_state=0).fit(faithful)
    assert c.lower_bound_ == d.lower_bound_


@pytest.mark.parametrize("recovery", ["reg_covar", "reseed"])
def test_recovery_on_tensors_matches_numpy(recovery):
    # duplicated points + reg_covar=0: scikit-learn's ill-defined-covariance case
    rng = np.random.default_rng(0)
    X = np.vstack([np.repeat(rng.normal(size=(1, 2)), 30, axis=0), rng.normal(size=(60, 2)) + 4])
    kw = dict(n_components=3, reg_covar=0.0, random_state=0, recovery=recovery)
    with pytest.warns(RuntimeWarning, match="recovery"):
        a = gmmfast.GaussianMixture(**kw).fit(torch.from_numpy(X))
    with pytest.warns(RuntimeWarning, match="recovery"):
        b = gmmfast.GaussianMixture(**kw).fit(X)
    np.testing.assert_array_equal(a.means_.numpy(), b.means_)
    assert (a.reg_covar_, a.n_reseeds_) == (b.reg_covar_, b.n_reseeds_)
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        gmmfast.GaussianMixture(3, reg_covar=0.0, random_state=0).fit(torch.from_numpy(X))


def test_tensor_input_errors(faithful):
    gm = gmmfast.GaussianMixture(2, random_state=0).fit(torch.from_numpy(faithful))
    with pytest.raises(ValueError, match="features"):
        gm.predict(torch.zeros(3, 5, dtype=torch.float64))
    bad = torch.from_numpy(faithful.copy())
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        gm.predict(bad)
    with pytest.raises(ValueError, match="NaN"):
        gmmfast.GaussianMixture(2).fit(bad)
    with pytest.raises(ValueError, match="Complex"):
        gmmfast.GaussianMixture(2).fit(torch.zeros(5, 2, dtype=torch.complex64))


def test_int_tensor_is_converted_and_save_load(faithful, tmp_path):
    gm = gmmfast.GaussianMixture(2, random_state=0).fit(torch.from_numpy(np.rint(faithful).astype(np.int64)))
    assert gm.means_.dtype == torch.float64
    gm.save(tmp_path / "m.npz")
    loaded = gmmfast.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.means_, gm.means_.numpy())
    X, y = gm.sample(7)
    assert isinstance(X, torch.Tensor) and X.shape == (7, 2) and y.shape == (7,)


cuda = pytest.mark.skipif(not gmmfast.cuda_available(), reason="needs a CUDA device and gmmfast built with CUDA")


@cuda
@pytest.mark.parametrize("cov", COV_TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_fit_matches_cpu_fit(cov, dtype):
    # Same initialisation (CPU kernels); EM on the GPU accumulates in a different order,
    # so agreement is to rounding: 1e-9 relative in float64, 1e-4 in float32.
    rng = np.random.default_rng(0)
    X = torch.as_tensor(np.vstack([rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4)) + 3]), dtype=dtype)
    cpu = gmmfast.GaussianMixture(2, covariance_type=cov, random_state=0, tol=1e-6).fit(X)
    gpu = gmmfast.GaussianMixture(2, covariance_type=cov, random_state=0, tol=1e-6).fit(X.cuda())
    assert gpu.means_.device.type == "cuda"
    tol = 1e-9 if dtype == torch.float64 else 1e-4
    for name in ATTRS:
        torch.testing.assert_close(getattr(gpu, name).cpu(), getattr(cpu, name), rtol=tol, atol=tol)
    assert gpu.predict(X.cuda()).device.type == "cuda"


@cuda
def test_cuda_fit_synchronises_once_per_iteration():
    # torch reports every synchronising call when the debug mode is "warn"; the EM loop
    # must cause exactly one per iteration (the lower bound and the failure flag).
    X = torch.randn(5000, 3, device="cuda")
    gm = gmmfast.GaussianMixture(2, max_iter=5, tol=0.0, random_state=0)
    gm.fit(X)  # warm-up (initialisation runs on the host copy)
    import warnings

    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gm.set_params(warm_start=True).fit(X)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= gm.max_iter + 2  # per iteration, plus validation and attributes
