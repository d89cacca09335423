"""gmmfast.GaussianMixture as a scikit-learn estimator: scikit-learn's own estimator
checks, clone, Pipeline, GridSearchCV (with worker processes) and pickling.

The references are scikit-learn's check suite and direct computations of what the
meta-estimators should produce (the same fits done by hand)."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

from sklearn import datasets  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold  # noqa: E402
from sklearn.pipeline import Pipeline, make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from gmmfast import GaussianMixture  # noqa: E402

PARAM_ATTRS = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """See test_mixture.py: OpenBLAS's spinning threads beside gmmfast's OpenMP threads
    oversubscribe a 2-core machine; results do not depend on it."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        yield


def assert_same_fit(a, b):
    for attr in PARAM_ATTRS:
        x, y = getattr(a, attr), getattr(b, attr)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), attr
    assert a.lower_bound_ == b.lower_bound_ and a.n_iter_ == b.n_iter_


# Every check scikit-learn runs on an estimator, one test each, none skipped or marked
# as an expected failure: the default estimator and one with gmmfast's extras set.
@parametrize_with_checks(
    [
        GaussianMixture(),
        GaussianMixture(covariance_type="diag", recovery="reseed", n_threads=1),
    ]
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_clone_and_params():
    gm = GaussianMixture(3, covariance_type="tied", tol=1e-4, recovery="reg_covar", n_threads=2,
                         random_state=4).fit(datasets.load_iris().data)
    c = clone(gm)
    assert c.get_params() == gm.get_params()
    assert not hasattr(c, "means_")
    assert set(gm.get_params()) == {
        "n_components", "covariance_type", "tol", "reg_covar", "max_iter", "n_init",
        "init_params", "weights_init", "means_init", "precisions_init", "random_state",
        "warm_start", "verbose", "verbose_interval", "recovery", "n_threads",
        "learning_decay", "learning_offset", "checkpoint", "checkpoint_every", "missing",
    }
    # scikit-learn's GaussianMixture parameters are a subset, with the same defaults
    from sklearn.mixture import GaussianMixture as SkGM

    sk_params = SkGM().get_params()
    ours = GaussianMixture().get_params()
    assert {k: ours[k] for k in sk_params} == sk_params
    assert "recovery=" in repr(gm) and repr(GaussianMixture()) == "GaussianMixture()"


def test_pipeline_with_standard_scaler():
    """Pipeline(StandardScaler, GaussianMixture) == scaling by hand, then fitting."""
    X = datasets.load_wine().data
    pipe = make_pipeline(StandardScaler(), GaussianMixture(3, random_state=0)).fit(X)
    Z = StandardScaler().fit_transform(X)
    gm = GaussianMixture(3, random_state=0).fit(Z)
    assert_same_fit(pipe[-1], gm)
    np.testing.assert_array_equal(pipe.predict(X), gm.predict(Z))
    np.testing.assert_array_equal(pipe.predict_proba(X), gm.predict_proba(Z))
    np.testing.assert_array_equal(pipe.score_samples(X), gm.score_samples(Z))
    assert pipe.score(X) == gm.score(Z)
    # fit_predict through the pipeline, and sample_weight routed to the last step
    np.testing.assert_array_equal(
        Pipeline([("s", StandardScaler()), ("g", GaussianMixture(3, random_state=0))]).fit_predict(X),
        gm.predict(Z),
    )
    w = np.random.default_rng(0).integers(1, 3, size=len(X))
    weighted = make_pipeline(StandardScaler(), GaussianMixture(3, random_state=0))
    weighted.fit(X, gaussianmixture__sample_weight=w)
    assert_same_fit(weighted[-1], GaussianMixture(3, random_state=0).fit(Z, sample_weight=w))


def test_grid_search_by_score():
    """GridSearchCV over n_components x covariance_type scoring by score (the mean
    log-likelihood of the held-out fold) picks what the same folds give by hand, and
    refits the winner on all the data. (n_threads=1: OpenMP brings nothing on 150 rows;
    worker processes are not used, the unpickled-data case they would exercise is
    test_fit_on_unpickled_and_readonly_arrays.)"""
    X = datasets.load_iris().data
    grid = {"n_components": [1, 2, 3], "covariance_type": ["full", "diag", "spherical"]}
    cv = KFold(3, shuffle=True, random_state=0)
    base = GaussianMixture(random_state=0, n_threads=1)
    search = GridSearchCV(base, grid, cv=cv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.fit(X)
    by_hand = {}
    for k in grid["n_components"]:
        for t in grid["covariance_type"]:
            scores = []
            for train, test in cv.split(X):
                gm = clone(base).set_params(n_components=k, covariance_type=t).fit(X[train])
                scores.append(gm.score(X[test]))
            by_hand[(k, t)] = np.mean(scores)
    got = {
        (p["n_components"], p["covariance_type"]): s
        for p, s in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"])
    }
    assert got.keys() == by_hand.keys()
    for key in got:
        assert got[key] == pytest.approx(by_hand[key], rel=1e-12)
    best = max(by_hand, key=by_hand.get)
    assert (search.best_params_["n_components"], search.best_params_["covariance_type"]) == best
    refit = clone(base).set_params(n_components=best[0], covariance_type=best[1]).fit(X)
    assert_same_fit(search.best_estimator_, refit)


def test_fit_on_unpickled_and_readonly_arrays():
    """An unpickled array carries an equal-but-not-identical float64 dtype object, and
    a memory map is a subclass; both fit exactly like the original array."""
    X = datasets.load_iris().data
    for dtype in (np.float64, np.float32):
        Xd = X.astype(dtype)
        Xp = pickle.loads(pickle.dumps(Xd))
        assert Xp.dtype == Xd.dtype
        ro = Xd.copy()
        ro.setflags(write=False)
        want = GaussianMixture(3, random_state=0).fit(Xd)
        for variant in (Xp, ro, np.asfortranarray(Xd), Xd[::-1][::-1]):
            got = GaussianMixture(3, random_state=0).fit(variant)
            assert_same_fit(got, want)
            np.testing.assert_array_equal(want.score_samples(variant), want.score_samples(Xd))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_pickle_round_trip(covariance_type, dtype):
    X = datasets.load_iris().data.astype(dtype)
    gm = GaussianMixture(3, covariance_type=covariance_type, random_state=1).fit(X)
    back = pickle.loads(pickle.dumps(gm))
    assert back.get_params() == gm.get_params()
    assert_same_fit(back, gm)
    assert back.converged_ == gm.converged_ and back.lower_bounds_ == gm.lower_bounds_
    assert back.reg_covar_ == gm.reg_covar_ and back.n_reseeds_ == gm.n_reseeds_
    np.testing.assert_array_equal(back.predict(X), gm.predict(X))
    np.testing.assert_array_equal(back.score_samples(X), gm.score_samples(X))
    np.testing.assert_array_equal(back.sample(5)[0], gm.sample(5)[0])
    unfitted = pickle.loads(pickle.dumps(GaussianMixture(2, recovery="reseed")))
    assert unfitted.get_params() == GaussianMixture(2, recovery="reseed").get_params()
