"""gmmfast.select_model and the shipped Old Faithful data (gmmfast.datasets).

The oracle of select_model is the estimator itself: every row of the table must be
exactly what ``GaussianMixture(k, covariance_type=t, random_state=seed).fit(X)`` gives
(the shared k-means initialisation is an optimisation that must not change any bit).
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest

import gmmfast
from gmmfast import GaussianMixture, ModelSelection, select_model
from gmmfast.datasets import load_old_faithful
from gmmfast.selection import n_parameters

TYPES = ("full", "tied", "diag", "spherical")


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(7)
    centres = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 0.0], [0.0, 6.0, 4.0]])
    X = np.vstack([c + rng.normal(size=(150, 3)) * (0.5 + i) for i, c in enumerate(centres)])
    return X


def _independent(X, k, t, seed, sample_weight=None, **params):
    return GaussianMixture(k, covariance_type=t, random_state=seed, **params).fit(
        X, sample_weight=sample_weight
    )


def _assert_same_fit(a, b):
    assert a.n_iter_ == b.n_iter_
    assert a.converged_ == b.converged_
    assert a.lower_bound_ == b.lower_bound_
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        assert getattr(a, name).dtype == getattr(b, name).dtype
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# ---------------------------------------------------------------------------- datasets


def test_old_faithful_matches_r_summary():
    X, names = load_old_faithful()
    assert names == ["eruptions", "waiting"]
    assert X.shape == (272, 2) and X.dtype == np.float64 and X.flags.c_contiguous
    # summary(faithful) in R
    np.testing.assert_allclose(X.min(axis=0), [1.6, 43.0])
    np.testing.assert_allclose(X.max(axis=0), [5.1, 96.0])
    np.testing.assert_allclose(X.mean(axis=0), [3.4878, 70.897], atol=5e-4)
    np.testing.assert_allclose(np.median(X, axis=0), [4.0, 76.0])
    np.testing.assert_allclose(np.quantile(X, [0.25, 0.75], axis=0), [[2.16275, 58.0], [4.45425, 82.0]])
    # first and last rows of the R data frame
    np.testing.assert_array_equal(X[:3], [[3.6, 79], [1.8, 54], [3.333, 74]])
    np.testing.assert_array_equal(X[-1], [4.467, 74])


def test_old_faithful_is_installed_with_the_package():
    from importlib import resources

    data = resources.files("gmmfast").joinpath("data", "old_faithful.csv")
    assert data.is_file()
    assert "Härdle" in data.read_text(encoding="utf-8")


def test_old_faithful_two_component_fit_is_the_textbook_one():
    X, _ = load_old_faithful()
    gmm = GaussianMixture(2, random_state=0).fit(X)
    order = np.argsort(gmm.means_[:, 0])
    np.testing.assert_allclose(gmm.weights_[order], [0.356, 0.644], atol=2e-3)
    np.testing.assert_allclose(gmm.means_[order], [[2.04, 54.48], [4.29, 79.97]], atol=1e-2)


# ----------------------------------------------------------------------- select_model


def test_every_row_is_the_independent_fit(blobs):
    sel = select_model(blobs, n_components=[1, 2, 3, 4], random_state=3)
    assert isinstance(sel, ModelSelection)
    assert [(r["n_components"], r["covariance_type"]) for r in sel.results] == [
        (k, t) for k in (1, 2, 3, 4) for t in TYPES
    ]
    n, d = blobs.shape
    for r in sel.results:
        ref = _independent(blobs, r["n_components"], r["covariance_type"], 3)
        assert r["error"] is None
        assert r["bic"] == ref.bic(blobs)
        assert r["aic"] == ref.aic(blobs)
        assert r["log_likelihood"] == ref.score(blobs)
        assert r["n_iter"] == ref.n_iter_ and r["converged"] == ref.converged_
        assert r["fit_seconds"] >= 0
        p = n_parameters(r["n_components"], d, r["covariance_type"])
        assert r["bic"] == pytest.approx(-2 * n * r["log_likelihood"] + p * math.log(n))
    best = sel.results[sel.best_index_]
    ref = _independent(blobs, best["n_components"], best["covariance_type"], 3)
    _assert_same_fit(sel.best_estimator_, ref)
    assert type(sel.best_estimator_) is GaussianMixture
    assert sel.best_estimator_.get_params() == ref.get_params()


@pytest.mark.parametrize("criterion", ["bic", "aic"])
def test_best_is_the_argmin(blobs, criterion):
    sel = select_model(blobs, range(1, 6), criterion=criterion, random_state=0)
    values = [r[criterion] for r in sel.results]
    assert sel.best_index_ == int(np.argmin(values))
    best = sel.results[sel.best_index_]
    assert sel.best_params_ == {
        "n_components": best["n_components"],
        "covariance_type": best["covariance_type"],
    }
    assert sel.best_estimator_.n_components == best["n_components"]
    assert sel.best_estimator_.covariance_type == best["covariance_type"]
    assert getattr(sel.best_estimator_, criterion)(blobs) == best[criterion]
    assert sel.criterion == criterion


def test_bic_finds_three_blobs(blobs):
    sel = select_model(blobs, range(1, 7), random_state=0)
    assert sel.best_params_["n_components"] == 3


def test_kmeans_runs_once_per_n_components(blobs, monkeypatch):
    from gmmfast import ops

    calls = []
    real = ops.kmeans

    def counting(X, n_clusters, **kw):
        calls.append(n_clusters)
        return real(X, n_clusters, **kw)

    monkeypatch.setattr(ops, "kmeans", counting)
    select_model(blobs, [2, 3, 5], random_state=0, n_init=2)
    assert sorted(calls) == [2, 2, 3, 3, 5, 5]  # n_init runs per K, shared by the 4 types


def test_n_init_and_params_pass_through(blobs):
    sel = select_model(blobs, [2, 3], ("full", "diag"), random_state=11, n_init=3,
                       tol=1e-5, reg_covar=1e-4, max_iter=200)
    for r in sel.results:
        ref = _independent(blobs, r["n_components"], r["covariance_type"], 11, n_init=3,
                           tol=1e-5, reg_covar=1e-4, max_iter=200)
        assert r["bic"] == ref.bic(blobs) and r["n_iter"] == ref.n_iter_
    best = sel.results[sel.best_index_]
    ref = _independent(blobs, best["n_components"], best["covariance_type"], 11, n_init=3,
                       tol=1e-5, reg_covar=1e-4, max_iter=200)
    _assert_same_fit(sel.best_estimator_, ref)


def test_sample_weight_passes_through(blobs):
    w = np.random.default_rng(1).integers(0, 4, size=blobs.shape[0]).astype(float)
    sel = select_model(blobs, [1, 2, 3], sample_weight=w, random_state=5)
    for r in sel.results:
        ref = _independent(blobs, r["n_components"], r["covariance_type"], 5, sample_weight=w)
        assert r["bic"] == ref.bic(blobs, sample_weight=w)
        assert r["aic"] == ref.aic(blobs, sample_weight=w)
        assert r["log_likelihood"] == ref.score(blobs, sample_weight=w)
    unweighted = select_model(blobs, [1, 2, 3], random_state=5)
    assert [r["bic"] for r in sel.results] != [r["bic"] for r in unweighted.results]


def test_float32_and_other_init_params(blobs):
    X32 = blobs.astype(np.float32)
    for init_params in ("kmeans", "k-means++"):
        sel = select_model(X32, [2, 3], ("full", "spherical"), random_state=2,
                           init_params=init_params)
        for r in sel.results:
            ref = _independent(X32, r["n_components"], r["covariance_type"], 2,
                               init_params=init_params)
            assert r["bic"] == ref.bic(X32)
        assert sel.best_estimator_.means_.dtype == np.float32


def test_random_state_none_draws_one_seed_for_all(blobs):
    sel = select_model(blobs, [2, 3], ("full", "tied"))
    assert isinstance(sel.random_state, int)
    assert sel.best_estimator_.random_state == sel.random_state
    refit = GaussianMixture(**sel.best_estimator_.get_params()).fit(blobs)
    _assert_same_fit(refit, sel.best_estimator_)
    gen = select_model(blobs, [2], ("full",), random_state=np.random.default_rng(0))
    assert isinstance(gen.random_state, int)


def test_failed_models_are_recorded_not_fatal():
    # 2 distinct points repeated: 3+ full components cannot have a covariance without
    # regularisation, and 9 components exceed the 8 samples
    X = np.repeat([[0.0, 0.0], [1.0, 1.0]], 4, axis=0)
    X += np.random.default_rng(0).normal(scale=1e-3, size=X.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = select_model(X, [1, 2, 9], ("full",), random_state=0)
    by_k = {r["n_components"]: r for r in sel.results}
    assert by_k[9]["error"] and by_k[9]["bic"] == math.inf
    assert by_k[1]["error"] is None and by_k[2]["error"] is None
    assert sel.best_params_["n_components"] in (1, 2)
    assert "failed" in str(sel)


def test_convergence_is_summarised_in_one_warning(blobs):
    with pytest.warns(gmmfast.ConvergenceWarning, match=r"models did not converge") as rec:
        sel = select_model(blobs, [3, 4], random_state=0, max_iter=1)
    assert len([w for w in rec if issubclass(w.category, gmmfast.ConvergenceWarning)]) == 1
    assert not any(r["converged"] for r in sel.results)


def test_table_and_dataframe(blobs):
    sel = select_model(blobs, [1, 2, 3], random_state=0)
    text = str(sel)
    lines = text.splitlines()
    rows = [line for line in lines if line[:2] in ("* ", "  ") and line[2:].strip()[:1].isdigit()]
    assert len(rows) == len(sel.results)
    starred = [line for line in rows if line.startswith("*")]
    assert len(starred) == 1
    best = sel.results[sel.best_index_]
    assert f"{best['bic']:.2f}" in starred[0] and best["covariance_type"] in starred[0]
    # aligned: every row of the table has the same width up to its last column
    assert len({len(line) for line in rows}) == 1
    assert "BIC" in repr(sel)

    pd = pytest.importorskip("pandas")
    df = sel.to_dataframe()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns[:8]) == ["n_components", "covariance_type", "bic", "aic",
                                    "log_likelihood", "n_iter", "converged", "fit_seconds"]
    assert df["best"].sum() == 1 and df["best"].to_numpy().argmax() == sel.best_index_
    np.testing.assert_array_equal(df["bic"].to_numpy(), [r["bic"] for r in sel.results])


def test_to_dataframe_without_pandas(blobs, monkeypatch):
    sel = select_model(blobs, [1], ("diag",), random_state=0)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        sel.to_dataframe()


def test_feature_names_reach_the_best_estimator(blobs):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(blobs, columns=["a", "b", "c"])
    sel = select_model(df, [2], ("full",), random_state=0)
    assert list(sel.best_estimator_.feature_names_in_) == ["a", "b", "c"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(criterion="likelihood"), "criterion"),
        (dict(covariance_types=("full", "banana")), "covariance_types"),
        (dict(n_components=[]), "n_components"),
        (dict(n_components=[0, 1]), "n_components"),
        (dict(means_init=np.zeros((2, 3))), "means_init"),
        (dict(sample_weight=np.ones(5)), "sample_weight"),
    ],
)
def test_argument_errors(blobs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_model(blobs, **kwargs)


def test_data_errors():
    with pytest.raises(ValueError, match="2-D"):
        select_model(np.zeros(10))
    X = np.random.default_rng(0).normal(size=(20, 2))
    X[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        select_model(X, [1])


def test_recovery_policy_still_applies_to_the_shared_init():
    # two tight clusters and reg_covar=0: three components need the recovery policy
    rng = np.random.default_rng(3)
    X = np.vstack([rng.normal(scale=1e-6, size=(20, 2)), 1 + rng.normal(scale=1e-6, size=(20, 2))])
    kw = dict(recovery="reg_covar", reg_covar=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = select_model(X, [1, 2, 3], ("full", "diag"), random_state=0, **kw)
        for r in sel.results:
            ref = _independent(X, r["n_components"], r["covariance_type"], 0, **kw)
            assert r["error"] is None
            assert r["bic"] == ref.bic(X) and r["n_iter"] == ref.n_iter_
