"""gmmfast.BayesianGaussianMixture against scikit-learn's BayesianGaussianMixture.

The reference is scikit-learn itself: given the same random_state, gmmfast's k-means
draws scikit-learn's numbers, so both start from the same responsibilities and run the
same variational updates. Tolerances (relative to the largest magnitude of each array):

- float64: 1e-9 for the fitted parameters and the lower bound. Both compute in float64
  and differ only in the order of sums (observed ≤ 1e-12 on iris; a few thousand
  iterations of rounding cannot reach 1e-9 on these well-conditioned fits).
- float32: 2e-3. gmmfast's passes over float32 data run in float32 (statistics summed in
  float64); scikit-learn promotes float32 X to float64 in its E-step but computes tied and
  diag scatter as E[x²] − μ² in float32 for the first M-step. Observed ≤ 2e-4 on iris.

The lower bound's entropy term, computed from the statistics instead of
n_samples × n_components responsibilities, is checked by these comparisons (it enters
every lower bound) and, on its own, against −Σ r log r from the NumPy reference.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn import datasets  # noqa: E402
from sklearn.mixture import BayesianGaussianMixture as SkBGM  # noqa: E402

import gmmfast  # noqa: E402
from gmmfast import BayesianGaussianMixture as BGM  # noqa: E402
from gmmfast._variational import betaln, digamma, gammaln  # noqa: E402

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")
RTOL = {np.float64: 1e-9, np.float32: 2e-3}
FITTED = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_", "mean_precision_",
          "degrees_of_freedom_")


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        yield


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def assert_matches(ours, theirs, rtol, lower_bounds=True):
    assert ours.n_iter_ == theirs.n_iter_ and ours.converged_ == theirs.converged_
    for name in FITTED:
        assert rel(getattr(ours, name), getattr(theirs, name)) <= rtol, name
    wc_ours, wc_theirs = ours.weight_concentration_, theirs.weight_concentration_
    if isinstance(wc_theirs, tuple):
        assert isinstance(wc_ours, tuple)
        wc_ours, wc_theirs = np.stack(wc_ours), np.stack(wc_theirs)
    assert rel(wc_ours, wc_theirs) <= rtol
    assert abs(ours.lower_bound_ - float(np.ravel(theirs.lower_bound_)[0])) <= rtol * abs(ours.lower_bound_)
    if lower_bounds:
        theirs_lbs = np.array([float(np.ravel(v)[0]) for v in theirs.lower_bounds_])
        assert rel(ours.lower_bounds_, theirs_lbs) <= rtol
    for name in ("mean_prior_", "covariance_prior_", "degrees_of_freedom_prior_", "mean_precision_prior_",
                 "weight_concentration_prior_"):
        assert rel(getattr(ours, name), getattr(theirs, name)) <= max(rtol, 1e-12), name


def fit_both(X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BGM(**kw).fit(X), SkBGM(**kw).fit(X)


@pytest.fixture(scope="module")
def iris():
    return datasets.load_iris().data


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_matches_sklearn_iris(iris, covariance_type, prior_type, dtype):
    X = iris.astype(dtype)
    ours, theirs = fit_both(X, n_components=5, covariance_type=covariance_type,
                            weight_concentration_prior_type=prior_type, random_state=0, max_iter=60)
    assert_matches(ours, theirs, RTOL[dtype])
    assert ours.means_.dtype == np.float64  # scikit-learn's parameters are float64 for float32 X
    # predict, predict_proba and score_samples use the expected log-weights, as scikit-learn
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))
    assert rel(ours.predict_proba(X), theirs.predict_proba(X)) <= 10 * RTOL[dtype]
    assert rel(ours.score_samples(X), theirs.score_samples(X)) <= 10 * RTOL[dtype]
    assert abs(ours.score(X) - theirs.score(X)) <= 10 * RTOL[dtype] * abs(theirs.score(X))


@pytest.mark.parametrize(
    "name, kw",
    [
        ("wine", dict(n_components=6, covariance_type="full", weight_concentration_prior=1e-2)),
        ("wine", dict(n_components=6, covariance_type="diag", weight_concentration_prior_type="dirichlet_distribution",
                      init_params="k-means++")),
        ("digits", dict(n_components=10, covariance_type="diag", reg_covar=1e-2, max_iter=40)),
        ("digits", dict(n_components=5, covariance_type="full", reg_covar=1e-1, max_iter=15)),
    ],
)
def test_matches_sklearn_datasets(name, kw):
    X = getattr(datasets, f"load_{name}")().data
    if name == "digits":
        X = X[:600]  # a subsample keeps the test fast; scikit-learn is the slow side
    ours, theirs = fit_both(X, random_state=1, **kw)
    assert_matches(ours, theirs, 1e-8)


def test_priors_given_and_other_inits(iris):
    """Given priors, and init_params='k-means++' (scikit-learn's seeds). As for
    GaussianMixture (test_mixture.py), 'tied' with one-hot initial responsibilities is
    the documented difference: scikit-learn's tied covariance divides Xᵀ X of every row
    by the seed rows' weight; gmmfast takes the covariance of the seed rows."""
    D = iris.shape[1]
    kw = dict(n_components=4, weight_concentration_prior=0.5, mean_precision_prior=0.1, mean_prior=np.ones(D),
              degrees_of_freedom_prior=D + 2.5, random_state=3, max_iter=40)
    for t, cov in (("full", 2 * np.eye(D)), ("tied", np.eye(D)), ("diag", np.full(D, 0.5)), ("spherical", 0.7)):
        for init in ("kmeans",) if t == "tied" else ("kmeans", "k-means++"):
            ours, theirs = fit_both(iris, covariance_type=t, covariance_prior=cov, init_params=init, **kw)
            assert_matches(ours, theirs, 1e-9)


def test_n_init_warm_start_and_max_iter_zero(iris):
    ours, theirs = fit_both(iris, n_components=4, n_init=3, random_state=5, max_iter=30)
    assert_matches(ours, theirs, 1e-9)
    kw = dict(n_components=4, warm_start=True, max_iter=5, random_state=2, covariance_type="diag")
    ours, theirs = BGM(**kw), SkBGM(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            ours.fit(iris)
            theirs.fit(iris)
            assert_matches(ours, theirs, 1e-9)
    ours, theirs = fit_both(iris, n_components=3, max_iter=0, random_state=0)
    assert ours.n_iter_ == 0 and ours.lower_bound_ == -np.inf and not ours.converged_
    assert rel(ours.means_, theirs.means_) <= 1e-12


def test_prior_switches_off_surplus_components():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(200, 2)) + c for c in ([0, 0], [8, 0], [0, 8])])
    b = BGM(n_components=8, weight_concentration_prior=1e-3, random_state=0, max_iter=500).fit(X)
    assert b.n_effective_components_ == 3
    assert np.sum(b.weights_ > gmmfast.bayesian.EFFECTIVE_WEIGHT) == 3
    assert np.all(np.isfinite(b.score_samples(X)))


def test_convergence_warning_and_verbose(iris, capsys):
    from gmmfast import ConvergenceWarning

    with pytest.warns(ConvergenceWarning, match="did not converge"):
        BGM(n_components=3, max_iter=2, random_state=0, verbose=2, verbose_interval=1).fit(iris)
    out = capsys.readouterr().out
    assert "Initialization 0" in out and "Iteration 2" in out and "lower bound" in out


def test_special_functions_match_scipy():
    special = pytest.importorskip("scipy.special")
    x = np.concatenate([np.geomspace(1e-8, 1e7, 400), np.linspace(0.5, 30, 300)])
    np.testing.assert_allclose(digamma(x), special.digamma(x), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(gammaln(x), special.gammaln(x), rtol=1e-14, atol=1e-12)
    np.testing.assert_allclose(betaln(x[:100], x[100:200]), special.betaln(x[:100], x[100:200]), rtol=1e-12,
                               atol=1e-9)


# ------------------------------------------------------------------ weights and sources


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_integer_sample_weight_equals_repeated_rows(iris, covariance_type):
    w = np.random.default_rng(0).integers(0, 4, iris.shape[0])
    w[:4] = 1  # keep k-means's candidates the same rows
    Xr = np.repeat(iris, w, axis=0)
    kw = dict(n_components=4, covariance_type=covariance_type, random_state=0, max_iter=40,
              init_params="random_from_data")
    # the same initial posterior (the repeated data's initial means and covariances) on
    # both: the initial k-means sees different rows, so start both from one warm model
    start = BGM(**{**kw, "max_iter": 0}).fit(Xr)
    a, b = BGM(**kw, warm_start=True), BGM(**kw, warm_start=True)
    for est in (a, b):
        for attr in ("weights_", "means_", "covariances_", "precisions_cholesky_", "weight_concentration_",
                     "mean_precision_", "degrees_of_freedom_", "converged_", "lower_bound_", "n_features_in_"):
            setattr(est, attr, getattr(start, attr))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.fit(iris, sample_weight=w.astype(float))
        b.fit(Xr)
    for name in FITTED + ("lower_bound_",):
        assert rel(getattr(a, name), getattr(b, name)) <= 1e-10, name
    for name in ("mean_prior_", "covariance_prior_"):
        assert rel(getattr(a, name), getattr(b, name)) <= 1e-12, name


def test_entropy_from_statistics_matches_reference(iris):
    """The lower bound's −Σ r log r from the statistics against the responsibilities."""
    from gmmfast import reference as ref
    from gmmfast._variational import VariationalModel, _log_det_cholesky, _trace_precision_scatter

    b = BGM(n_components=4, covariance_type="full", random_state=0, max_iter=5, tol=1e9).fit(iris)
    model = VariationalModel(None, "full", 4, np.float64)
    model._priors = type("P", (), {"weight_concentration_prior_type": "dirichlet_process"})()
    e = model.e_step_mixture(b._fitted_params())
    stats = gmmfast.ops.em_stats(iris, e.log_weights, e.means, e.precisions_cholesky, "full")
    const = -0.5 * 4 * np.log(2 * np.pi) + _log_det_cholesky(e.precisions_cholesky, "full", 4)
    ours = np.sum(stats.nk * (const + e.log_weights)) - 0.5 * np.sum(
        _trace_precision_scatter(e.precisions_cholesky, stats.s2, "full")) - stats.log_likelihood
    log_resp = ref.log_prob(iris, e.log_weights, e.means, e.precisions_cholesky, "full", "log_resp")
    expected = np.sum(np.exp(log_resp) * log_resp)
    assert abs(ours - expected) <= 1e-9 * np.abs(stats.log_likelihood)


def test_chunks_memmap_and_tensors(iris, tmp_path):
    kw = dict(n_components=4, random_state=0, max_iter=40, covariance_type="diag")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_fit = BGM(**kw).fit(iris)
        chunks = BGM(**kw).fit_chunks([iris[:70], iris[70:]])
        path = tmp_path / "x.npy"
        np.save(path, iris)
        mm = BGM(**kw).fit(np.load(path, mmap_mode="r"))
        mm_f = BGM(**kw).fit(np.lib.format.open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float64,
                                                       shape=iris.shape, fortran_order=True))
    for est in (chunks, mm):
        for name in FITTED + ("lower_bound_",):
            assert rel(getattr(est, name), getattr(ref_fit, name)) <= 1e-9, name
    assert mm_f.n_iter_ >= 1  # a memmap of another layout is streamed by blocks
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = BGM(**kw).fit(torch.as_tensor(iris))
    assert t.means_.dtype == torch.float64
    for name in FITTED + ("lower_bound_",):
        got = getattr(t, name)
        got = got.numpy() if hasattr(got, "numpy") else got
        assert rel(got, getattr(ref_fit, name)) <= 1e-9, name
    np.testing.assert_array_equal(t.predict(torch.as_tensor(iris)).numpy(), ref_fit.predict(iris))


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(weight_concentration_prior=-1.0), "'weight_concentration_prior' parameter"),
        (dict(weight_concentration_prior=np.nan), "'weight_concentration_prior' parameter"),
        (dict(mean_precision_prior=0), "'mean_precision_prior' parameter"),
        (dict(degrees_of_freedom_prior=-1), "'degrees_of_freedom_prior' parameter"),
        (dict(degrees_of_freedom_prior=1.5), "'degrees_of_freedom_prior' should be greater than 2"),
        (dict(covariance_prior=-2.0), "'covariance_prior' parameter"),
        (dict(covariance_prior=np.nan, covariance_type="spherical"), "'covariance_prior' parameter"),
        (dict(weight_concentration_prior_type="x"), "'weight_concentration_prior_type' parameter"),
        (dict(mean_prior=3.0), "'mean_prior' parameter"),
        (dict(mean_prior=[1, 2]), "'mean_prior' should have the shape of (3,)"),
        (dict(mean_prior=[np.nan, 1, 1]), "'mean_prior' contains NaN"),
        (dict(covariance_prior=np.eye(2)), "'full covariance_prior' should have the shape of (3, 3)"),
        (dict(covariance_prior=-np.eye(3)), "'covariance_prior' (full covariance_type) should be symmetric, "
                                            "positive-definite"),
        (dict(covariance_prior=np.array([[1, 2, 0], [2, 1, 0], [0, 0, 1.0]]), covariance_type="tied"),
         "'covariance_prior' (tied covariance_type) should be symmetric, positive-definite"),
        (dict(covariance_prior=[[np.nan] * 3] * 3), "'covariance_prior' contains NaN"),
        (dict(covariance_prior=-np.ones(3), covariance_type="diag"), "'covariance_prior' (diag covariance_type) "
                                                                     "should be positive"),
        (dict(covariance_prior=np.ones(2), covariance_type="diag"), "'diag covariance_prior' should have the shape"),
        (dict(covariance_prior=np.eye(3), covariance_type="spherical"), "'covariance_prior' must be a float"),
        (dict(covariance_prior=2.0, covariance_type="full"), "'full covariance_prior' should have the shape"),
    ],
)
def test_bad_priors_raise_value_error_naming_the_parameter(kw, message):
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match=re.escape(message)):
        BGM(n_components=2, **kw).fit(X)


def test_weights_summing_to_one_need_a_covariance_prior():
    X = np.random.default_rng(0).normal(size=(20, 3))
    w = np.full(20, 1 / 20)
    with pytest.raises(ValueError, match="weight sum above 1"):
        BGM(n_components=2).fit(X, sample_weight=w)
    b = BGM(n_components=2, covariance_prior=np.eye(3), mean_prior=np.zeros(3), random_state=0).fit(X, sample_weight=w)
    assert np.all(np.isfinite(b.means_))


def test_sklearn_check_estimator():
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_estimator(BGM())


def test_params_are_sklearns():
    ours = BGM().get_params()
    theirs = SkBGM().get_params()
    assert {k: ours[k] for k in theirs} == theirs
    assert set(ours) - set(theirs) == {"n_threads", "checkpoint", "checkpoint_every"}


def test_checkpoint_resume_and_other_priors_refused(iris, tmp_path):
    """An interrupted fit resumes from its checkpoint and ends with the uninterrupted
    fit's posterior, bit for bit; a fit with other priors refuses the checkpoint."""
    from gmmfast._checkpoint import CheckpointError

    kw = dict(n_components=4, random_state=0, tol=1e-8, max_iter=40, n_init=2, n_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = BGM(**kw).fit(iris)
        ckpt = tmp_path / "fit.ckpt"
        interrupted = BGM(**kw, checkpoint=ckpt, checkpoint_every=3)
        calls = []

        def stop(n_iter, lower_bound, change):
            calls.append(n_iter)
            if calls.count(1) == 2 and n_iter == 7:
                raise KeyboardInterrupt

        interrupted._on_iteration = stop
        with pytest.raises(KeyboardInterrupt):
            interrupted.fit(iris)
        assert ckpt.exists()
        with pytest.raises(CheckpointError, match="model"):
            BGM(**kw, checkpoint=ckpt, checkpoint_every=3, mean_precision_prior=2.0).fit(iris)
        resumed = BGM(**kw, checkpoint=ckpt, checkpoint_every=3).fit(iris)
    assert not ckpt.exists()
    for name in FITTED + ("lower_bound_", "lower_bounds_", "n_iter_"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(want, name), err_msg=name)
    np.testing.assert_array_equal(np.stack(resumed.weight_concentration_), np.stack(want.weight_concentration_))


# ----------------------------------------------------------------------- model files


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("prior_type", PRIOR_TYPES)
def test_save_load_round_trip(iris, tmp_path, covariance_type, prior_type):
    kw = dict(n_components=3, covariance_type=covariance_type, weight_concentration_prior_type=prior_type,
              random_state=0, max_iter=20, tol=1e-2)
    if covariance_type == "spherical":
        kw["covariance_prior"] = 0.5
    else:
        kw["mean_prior"] = np.zeros(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = BGM(**kw).fit(iris.astype(np.float32))
    b.save(tmp_path / "m.gmm")
    c = gmmfast.load(tmp_path / "m.gmm")
    assert type(c) is BGM
    for name in FITTED + ("mean_prior_", "covariance_prior_", "degrees_of_freedom_prior_", "lower_bound_"):
        np.testing.assert_array_equal(getattr(c, name), getattr(b, name), err_msg=name)
    if prior_type == "dirichlet_process":
        np.testing.assert_array_equal(np.stack(c.weight_concentration_), np.stack(b.weight_concentration_))
    np.testing.assert_array_equal(c.score_samples(iris), b.score_samples(iris))
    np.testing.assert_array_equal(c.predict(iris), b.predict(iris))
    assert c.n_effective_components_ == b.n_effective_components_
    assert repr(c) == repr(b) or covariance_type != "spherical"
    np.testing.assert_array_equal(c.get_params()["mean_prior"], b.get_params()["mean_prior"])
    # the loaded model refits as the saved one was fitted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(c.fit(iris).means_, BGM(**kw).fit(iris).means_)


def test_model_files_of_the_other_kind_and_tampered_posterior(iris, tmp_path):
    import json

    gm = gmmfast.GaussianMixture(2, random_state=0).fit(iris)
    gm.save(tmp_path / "gm.gmm")
    assert type(gmmfast.load(tmp_path / "gm.gmm")) is gmmfast.GaussianMixture
    b = BGM(n_components=2, random_state=0).fit(iris)
    b.save(tmp_path / "b.gmm")
    with np.load(tmp_path / "b.gmm") as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["metadata"]))
    arrays["degrees_of_freedom"] = np.array([1.0, 2.0])
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(gmmfast.ModelFileError, match="degrees of freedom"):
        gmmfast.load(tmp_path / "bad.npz")
    del arrays["mean_precision"]
    np.savez(tmp_path / "bad2.npz", **arrays)
    with pytest.raises(gmmfast.ModelFileError, match="mean_precision"):
        gmmfast.load(tmp_path / "bad2.npz")
    assert meta["format"] == "gmmfast.BayesianGaussianMixture" and meta["format_version"] == 1


def test_bayes_model_file_defaults_are_the_estimators():
    from gmmfast._variational import BAYES_PARAM_DEFAULTS

    defaults = BGM().get_params()
    assert set(defaults) - set(BAYES_PARAM_DEFAULTS) == {"mean_prior", "covariance_prior", "checkpoint",
                                                         "checkpoint_every"}
    for name, value in BAYES_PARAM_DEFAULTS.items():
        assert defaults[name] == value and type(defaults[name]) is type(value), name


# ------------------------------------------------------------------- the command line


def test_cli_fit_bayesian(tmp_path, capsys):
    from gmmfast.cli import main

    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(150, 2)) + c for c in ([0, 0], [7, 0], [0, 7])])
    np.save(tmp_path / "x.npy", X)
    model = tmp_path / "m.npz"
    args = ["fit", tmp_path / "x.npy", "-k", "6", "--bayesian", "--weight-concentration-prior-type",
            "dirichlet_distribution", "--weight-concentration-prior", "1e-3", "--covariance-prior", "1.5",
            "--random-state", "0", "--max-iter", "400", "-q", "-o", model]
    assert main([str(a) for a in args]) == 0
    out = capsys.readouterr().out
    assert "Bayesian Gaussian mixture" in out and "effective    3 of 6 components" in out
    b = gmmfast.load(model)
    want = BGM(n_components=6, weight_concentration_prior_type="dirichlet_distribution",
               weight_concentration_prior=1e-3, covariance_prior=1.5 * np.eye(2), random_state=0,
               max_iter=400).fit(X)
    np.testing.assert_array_equal(b.means_, want.means_)
    assert main(["score", str(model), str(tmp_path / "x.npy")]) == 0
    assert "BIC" not in capsys.readouterr().out
    assert main(["info", str(model)]) == 0
    assert "BayesianGaussianMixture" in capsys.readouterr().out
    # a prior without --bayesian, and --bayesian with mini-batch EM, are user errors
    assert main(["fit", str(tmp_path / "x.npy"), "-k", "2", "--mean-precision-prior", "2", "-q"]) == 1
    assert main(["fit", str(tmp_path / "x.npy"), "-k", "2", "--bayesian", "--mini-batch", "-q"]) == 1
    assert "add --bayesian" in capsys.readouterr().err


def test_select_model_reports_effective_components():
    from gmmfast.selection import effective_components

    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(size=(200, 2)), rng.normal(size=(4, 2)) * 0.01 + 6])
    sel = gmmfast.select_model(X, [1, 2, 3], ("diag",), random_state=0)
    for r in sel.results:
        assert 1 <= r["n_effective"] <= r["n_components"]
    best = sel.results[sel.best_index_]
    assert best["n_effective"] == effective_components(sel.best_estimator_.weights_)
    # the 4-row cluster holds 2% of the weight: effective; below 1% it would not count
    assert effective_components([0.5, 0.49, 0.01]) == 2 and effective_components([0.98, 0.02]) == 2
    assert "eff. K" in sel.table()


def _copy_posterior(src, dst):
    for attr in ("weights_", "means_", "covariances_", "precisions_cholesky_", "weight_concentration_",
                 "mean_precision_", "degrees_of_freedom_", "converged_", "n_features_in_"):
        setattr(dst, attr, getattr(src, attr))
    dst.lower_bound_ = float(np.ravel(src.lower_bound_)[0])


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_float32_from_the_same_start_as_sklearn(covariance_type):
    """float32 data far from the origin, from scikit-learn's own state after one
    iteration (its float32 k-means can pick other seeds than gmmfast's): 20 iterations
    agree to 1e-5 (observed ≤ 2e-6: gmmfast's passes run in float32, scikit-learn's in
    float64 on the float32 values) and the lower bounds to 2e-6 relative (observed 5e-7
    here, 2e-8 on the benchmark's full32 data). The lower bound is the more sensitive: the
    Wishart normalisers multiply log-determinants by ν_k ≈ N_k, so a 5e-7 relative
    difference of the covariances moves it by ~1e-2. That offset is the same at every
    iteration (the changes, which tol tests, agree much better), but it is above
    tol=1e-3 in absolute terms, so a float32 fit may stop an iteration earlier or later
    than scikit-learn's."""

    rng = np.random.default_rng(3)
    centres = rng.normal(0, 3, size=(4, 8)) + 50.0
    X = (centres[rng.integers(0, 4, 4000)] + rng.normal(size=(4000, 8))).astype(np.float32)
    kw = dict(n_components=4, covariance_type=covariance_type, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = SkBGM(**kw, max_iter=1).fit(X)
        ours = BGM(**kw)
        _copy_posterior(theirs, ours)
        for est in (ours, theirs):
            est.set_params(warm_start=True, max_iter=20, tol=0.0)
            est.fit(X)
    for name in FITTED:
        assert rel(getattr(ours, name), getattr(theirs, name)) <= 1e-5, name
    theirs_lbs = np.array([float(np.ravel(v)[0]) for v in theirs.lower_bounds_])
    assert rel(ours.lower_bounds_, theirs_lbs) <= 2e-6
    assert np.max(np.abs(np.diff(ours.lower_bounds_) - np.diff(theirs_lbs))) <= 1e-3


def test_sample_and_fit_predict_as_sklearn(iris):
    ours, theirs = fit_both(iris, n_components=3, random_state=7, covariance_type="full")
    Xo, yo = ours.sample(50)
    Xt, yt = theirs.sample(50)
    np.testing.assert_array_equal(yo, yt)
    np.testing.assert_allclose(Xo, Xt, rtol=1e-8, atol=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(BGM(n_components=3, random_state=7).fit_predict(iris),
                                      SkBGM(n_components=3, random_state=7).fit_predict(iris))
