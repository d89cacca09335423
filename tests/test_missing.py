"""GaussianMixture(missing='em'): exact EM for data with NaN entries (missing at random).

- the fit equals the readable NumPy EM of gmmfast.reference_missing from the same start;
- it reaches a maximum of the observed-data likelihood (the gradient vanishes, and a
  direct optimiser from the same start finds no better value);
- without NaN it is today's fit exactly; with sample weights, integer weights are
  repeated rows; arrays in memory, memory-mapped files and fit_chunks agree;
- bias: with 20% of the entries removed at random, the covariances stay within sampling
  error of the truth while impute-the-mean-then-fit distorts them;
- the input errors: NaN without missing='em', infinity, a row or a column with nothing
  observed.
"""

import warnings

import numpy as np
import pytest

import gmmfast
from gmmfast import GaussianMixture, ops
from gmmfast import reference_missing as ref
from gmmfast._types import MixtureParams

COV_TYPES = ["full", "tied", "diag", "spherical"]


def _mixture_data(rng, N, frac, D=3):
    means = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, -5.0]])[:, :D]
    A = np.array([[1.0, 0.0, 0.0], [0.8, 1.2, 0.0], [-0.5, 0.3, 0.7]])[:D, :D]
    covs = np.stack([A @ A.T, np.diag([2.0, 0.5, 1.5])[:D, :D]])
    z = rng.random(N) < 0.4
    X = np.where(z[:, None], rng.multivariate_normal(means[1], covs[1], N), rng.multivariate_normal(means[0], covs[0], N))
    Xm = X.copy()
    Xm[rng.random(X.shape) < frac] = np.nan
    keep = ~np.all(np.isnan(Xm), axis=1)
    return X[keep], Xm[keep], means, covs


def _init_from(gm_like, X, K, t):
    filled = np.where(np.isnan(X), np.nanmean(X, axis=0), X)
    return ops.initial_params(filled, K, t, random_state=0)


@pytest.mark.parametrize("t", COV_TYPES)
def test_fit_equals_numpy_reference_em(t):
    rng = np.random.default_rng(0)
    _, Xm, _, _ = _mixture_data(rng, 300, 0.25)
    init = _init_from(None, Xm, 2, t)
    want, lbs = ref.em(Xm, init, tol=1e-10, max_iter=15)
    gm = GaussianMixture(
        2, covariance_type=t, missing="em", tol=1e-10, max_iter=15, weights_init=init.weights,
        means_init=init.means, precisions_init=_precisions(init),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 15 iterations may not converge at tol 1e-10
        gm.fit(Xm)
    np.testing.assert_allclose(gm.means_, want.means, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gm.covariances_, want.covariances, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gm.weights_, want.weights, rtol=1e-8)
    np.testing.assert_allclose(gm.lower_bounds_, lbs[: len(gm.lower_bounds_)], rtol=1e-10)


def _precisions(p: MixtureParams):
    U = p.precisions_cholesky
    if p.covariance_type == "full":
        return np.einsum("kij,klj->kil", U, U)
    if p.covariance_type == "tied":
        return U @ U.T
    return U**2


def _theta_to_params(theta, K, D):
    """Unconstrained parameters (weight logits, means, Cholesky factors of covariances
    with log diagonals) to MixtureParams."""
    logits, rest = theta[:K], theta[K:]
    mu, rest = rest[: K * D].reshape(K, D), rest[K * D :]
    tri = np.tril_indices(D)
    covs, precs = [], []
    for k in range(K):
        L = np.zeros((D, D))
        L[tri] = rest[k * len(tri[0]) : (k + 1) * len(tri[0])]
        L[np.diag_indices(D)] = np.exp(np.diag(L))
        C = L @ L.T
        covs.append(C)
        precs.append(np.linalg.inv(np.linalg.cholesky(C)).T)
    w = np.exp(logits - logits.max())
    return MixtureParams("full", w / w.sum(), mu, np.stack(covs), np.stack(precs))


def _params_to_theta(p: MixtureParams):
    K, D = p.means.shape
    tri = np.tril_indices(D)
    parts = [np.log(p.weights), p.means.ravel()]
    for k in range(K):
        L = np.linalg.cholesky(p.covariances[k])
        L[np.diag_indices(D)] = np.log(np.diag(L))
        parts.append(L[tri])
    return np.concatenate(parts)


def test_fit_is_a_maximum_of_the_observed_data_likelihood():
    """Brute force on a tiny case: the observed-data log-likelihood (the NumPy
    reference's) has zero gradient at the fitted parameters, and scipy's optimiser
    started where EM started ends no higher than EM."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(1)
    _, Xm, _, _ = _mixture_data(rng, 60, 0.2, D=2)
    K, D = 2, 2
    init = _init_from(None, Xm, K, "full")
    gm = GaussianMixture(K, missing="em", tol=1e-13, max_iter=5000, reg_covar=0.0, weights_init=init.weights,
                         means_init=init.means, precisions_init=_precisions(init)).fit(Xm)
    fitted = MixtureParams("full", gm.weights_, gm.means_, gm.covariances_, gm.precisions_cholesky_)

    def nll(theta):
        return -ref.observed_log_likelihood(Xm, _theta_to_params(theta, K, D))

    theta = _params_to_theta(fitted)
    assert nll(theta) == pytest.approx(-gm.lower_bound_ * len(Xm), rel=1e-8)
    h = 1e-6
    grad = np.array([(nll(theta + h * e) - nll(theta - h * e)) / (2 * h) for e in np.eye(theta.size)])
    assert np.max(np.abs(grad)) < 1e-4, grad  # vs O(1..100) at a generic point
    best = scipy_optimize.minimize(nll, _params_to_theta(init), method="BFGS", options={"gtol": 1e-8, "maxiter": 2000})
    assert best.fun >= nll(theta) - 1e-6


@pytest.mark.parametrize("t", COV_TYPES)
def test_without_nan_the_fit_is_todays(t):
    rng = np.random.default_rng(2)
    X, _, _, _ = _mixture_data(rng, 400, 0.0)
    a = GaussianMixture(2, covariance_type=t, random_state=0).fit(X)
    b = GaussianMixture(2, covariance_type=t, random_state=0, missing="em").fit(X)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-12, atol=0)
    assert a.lower_bounds_ == b.lower_bounds_
    c = GaussianMixture(2, covariance_type=t, random_state=0).fit_chunks([X[:150], X[150:]])
    d = GaussianMixture(2, covariance_type=t, random_state=0, missing="em").fit_chunks([X[:150], X[150:]])
    np.testing.assert_allclose(d.covariances_, c.covariances_, rtol=1e-12, atol=0)


def test_bias_of_mean_imputation_and_none_with_em():
    """20% of the entries removed at random from a known two-component mixture: EM's
    covariances are within sampling error of the truth (their error is comparable to
    that of the fit of the complete data), while filling each NaN with its column
    mean and fitting distorts them: the filled entries sit at the overall mean, between
    the components, and inflate every variance (here by up to 1.3, against 0.05)."""
    rng = np.random.default_rng(3)
    X, Xm, _, covs = _mixture_data(rng, 20000, 0.2)
    order = lambda gm: np.argsort(gm.means_[:, 0])  # noqa: E731
    fit = lambda data, **kw: GaussianMixture(2, random_state=0, **kw).fit(data)  # noqa: E731
    complete = fit(X)
    em = fit(Xm, missing="em")
    filled = fit(np.where(np.isnan(Xm), np.nanmean(Xm, axis=0), Xm))
    err = {name: np.max(np.abs(gm.covariances_[order(gm)] - covs)) for name, gm in
           (("complete", complete), ("em", em), ("filled", filled))}
    # sampling error of a covariance entry with ~8000 rows per component: ~0.03
    assert err["em"] < 0.1 and err["em"] < 3 * err["complete"] + 0.02, err
    assert err["filled"] > 0.3 and err["filled"] > 5 * err["em"], err


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_weights_are_repetitions_and_chunks_and_memmap_agree(tmp_path, dtype):
    rng = np.random.default_rng(4)
    _, Xm, _, _ = _mixture_data(rng, 200, 0.3)
    Xm = Xm.astype(dtype)
    w = rng.integers(0, 3, len(Xm))
    init = _init_from(None, Xm.astype(np.float64), 2, "full")
    kw = dict(missing="em", tol=1e-8, weights_init=init.weights, means_init=init.means,
              precisions_init=_precisions(init))
    weighted = GaussianMixture(2, **kw).fit(Xm, sample_weight=w)
    repeated = GaussianMixture(2, **kw).fit(np.repeat(Xm, w, axis=0))
    # float32: every iteration rounds the parameters to float32 and runs float32 E-step
    # products on differently ordered rows; along EM's slow directions the ~1e-7
    # differences grow over the tens of iterations to ~3e-4 relative
    tol = 1e-9 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(weighted.covariances_, repeated.covariances_, rtol=tol, atol=tol)
    assert weighted.covariances_.dtype == dtype
    chunked = GaussianMixture(2, **kw).fit_chunks([(Xm[:70], w[:70]), (Xm[70:], w[70:])])
    np.testing.assert_allclose(chunked.covariances_, weighted.covariances_, rtol=tol, atol=tol)
    np.save(tmp_path / "x.npy", Xm)
    mm = np.load(tmp_path / "x.npy", mmap_mode="r")
    mapped = GaussianMixture(2, **kw).fit(mm, sample_weight=w)
    np.testing.assert_allclose(mapped.covariances_, weighted.covariances_, rtol=tol, atol=tol)
    # a memory-mapped array of another layout is streamed by blocks (the chunked source)
    np.save(tmp_path / "f.npy", np.asfortranarray(Xm))
    streamed = GaussianMixture(2, **kw).fit(np.load(tmp_path / "f.npy", mmap_mode="r"), sample_weight=w)
    np.testing.assert_allclose(streamed.covariances_, weighted.covariances_, rtol=tol, atol=tol)


@pytest.mark.parametrize("t", COV_TYPES)
def test_scoring_and_impute_use_the_observed_marginal(t):
    rng = np.random.default_rng(5)
    _, Xm, _, _ = _mixture_data(rng, 300, 0.3)
    gm = GaussianMixture(2, covariance_type=t, missing="em", random_state=0).fit(Xm)
    lw = np.log(gm.weights_)
    args = (lw, gm.means_, gm.precisions_cholesky_, t)
    np.testing.assert_allclose(gm.score_samples(Xm), ref.log_prob(Xm, *args), rtol=1e-10)
    np.testing.assert_allclose(gm.predict_proba(Xm), np.exp(ref.log_prob(Xm, *args, output="log_resp")),
                               rtol=1e-9, atol=1e-14)
    assert np.array_equal(gm.predict(Xm), np.argmax(ref.log_prob(Xm, *args, output="weighted"), axis=1))
    assert gm.score(Xm) == pytest.approx(np.mean(ref.log_prob(Xm, *args)), rel=1e-12)
    imputed = gm.impute(Xm)
    np.testing.assert_allclose(imputed, ref.impute(Xm, *args), rtol=1e-10)
    assert not np.isnan(imputed).any()
    # a row whose only observed entry is its first: scored on that coordinate alone
    row = np.array([[1.0, np.nan, np.nan]])
    assert np.isfinite(gm.score_samples(row)).all()


def test_bad_input():
    rng = np.random.default_rng(6)
    _, Xm, _, _ = _mixture_data(rng, 100, 0.2)
    with pytest.raises(ValueError, match="Input X contains NaN"):
        GaussianMixture(2).fit(Xm)  # the default keeps scikit-learn's error
    gm = GaussianMixture(2, missing="em", random_state=0).fit(Xm)
    with pytest.raises(ValueError, match="Input X contains NaN"):
        GaussianMixture(2, random_state=0).fit(np.nan_to_num(Xm)).score_samples(Xm)
    bad = Xm.copy()
    bad[4, 1] = np.inf
    for call in (lambda: GaussianMixture(2, missing="em").fit(bad), lambda: gm.predict(bad), lambda: gm.impute(bad)):
        with pytest.raises(ValueError, match=r"infinity .* \(first at row 4\)"):
            call()
    bad = Xm.copy()
    bad[:, 2] = np.nan
    pd = pytest.importorskip("pandas")
    with pytest.raises(ValueError, match=r"Column 2 \('c'\) of X is missing \(NaN\) in every row"):
        GaussianMixture(2, missing="em").fit(pd.DataFrame(bad, columns=["a", "b", "c"]))
    with pytest.raises(ValueError, match=r"Column 2 of X is missing"):
        GaussianMixture(2, missing="em").fit_chunks([bad[:50], bad[50:]])
    bad = Xm.copy()
    bad[7] = np.nan
    with pytest.raises(ValueError, match="Row 7 of X has every feature missing"):
        GaussianMixture(2, missing="em").fit(bad)
    with pytest.raises(ValueError, match="Row 7 of X has every feature missing"):
        gm.predict(bad)
    with pytest.raises(ValueError, match="Row 57 of the data"):
        GaussianMixture(2, missing="em").fit_chunks([Xm[:50], bad[:50]])
    with pytest.raises(ValueError, match="'missing' parameter of GaussianMixture must be"):
        GaussianMixture(2, missing="drop").fit(Xm)
    with pytest.raises(ValueError, match="impute needs missing='em'"):
        GaussianMixture(2, random_state=0).fit(np.nan_to_num(Xm)).impute(Xm)


def test_save_load_keeps_missing(tmp_path):
    rng = np.random.default_rng(7)
    _, Xm, _, _ = _mixture_data(rng, 100, 0.2)
    gm = GaussianMixture(2, missing="em", random_state=0).fit(Xm)
    gm.save(tmp_path / "m")
    back = gmmfast.load(tmp_path / "m")
    assert back.missing == "em"
    np.testing.assert_array_equal(back.score_samples(Xm), gm.score_samples(Xm))
    GaussianMixture(2, random_state=0).fit(np.nan_to_num(Xm)).save(tmp_path / "d")
    assert gmmfast.load(tmp_path / "d").missing == "error"


def test_online_em_with_missing_values():
    rng = np.random.default_rng(8)
    _, Xm, _, _ = _mixture_data(rng, 2000, 0.2)
    gm = GaussianMixture(2, missing="em", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit_minibatch(Xm, batch_size=500, max_epochs=3)
    gm.partial_fit(Xm[:300])
    assert np.isfinite(gm.score(Xm))


def test_cli_fit_csv_with_empty_cells(tmp_path, capsys):
    from gmmfast import cli

    rng = np.random.default_rng(9)
    _, Xm, _, _ = _mixture_data(rng, 120, 0.2)
    lines = ["a,b,c"] + [",".join("" if np.isnan(v) else repr(float(v)) for v in row) for row in Xm]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    data, model = str(tmp_path / "d.csv"), str(tmp_path / "m.npz")
    assert cli.main(["fit", data, "-k", "2", "--missing", "em", "--random-state", "0", "-q", "-o", model]) == 0
    fitted = gmmfast.load(model)
    want = GaussianMixture(2, missing="em", random_state=0).fit(Xm)
    np.testing.assert_allclose(fitted.means_, want.means_, rtol=1e-10)
    assert cli.main(["predict", model, data]) == 0
    labels = np.array(capsys.readouterr().out.split()[-len(Xm):], dtype=int)
    assert np.array_equal(labels, want.predict(Xm))
    assert cli.main(["fit", data, "-k", "2", "-q"]) == 1
    assert "pass --missing em" in capsys.readouterr().err
    (tmp_path / "i.csv").write_text("1,2\n3,inf\n4,\n")
    assert cli.main(["fit", str(tmp_path / "i.csv"), "-k", "1", "--missing", "em", "-q"]) == 1
    assert "row 2 contains infinity" in capsys.readouterr().err
    # the Bayesian mixture has no missing-value EM: a clear error, before the data is read
    assert cli.main(["fit", data, "-k", "2", "--bayesian", "--missing", "em", "-q"]) == 1
    assert "--missing em fits the maximum-likelihood mixture only" in capsys.readouterr().err
