"""Property-based fuzzing (hypothesis) of every public entry point against the NumPy
reference (issue 8).

Random shapes (D > N, K = N, K in the thousands), dtypes (float32/float64, integers,
bool, float16), layouts (C, Fortran, strided and reversed views, big-endian, read-only),
scales from 1e-30 to 1e30 and offsets to 1e8, duplicated rows, constant columns,
identical rows. Every outcome must be a correct result (compared with
:mod:`gmmfast.reference` with a dtype- and scale-aware tolerance) or a clear exception
(ValueError/MemoryError whose message names the problem) where one is documented; never
a crash, a hang, or NaN/inf in returned parameters.

Examples are derandomized (a fixed sequence, the same on every run: CI) unless
GMMFAST_FUZZ=explore, which draws new random examples, ten times as many, for local
bug hunting (hypothesis prints the failing example and a reproduction blob).
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

import gmmfast
from gmmfast import GaussianMixture, ModelFileError, ops
from gmmfast import reference as ref

from conftest import abs_stats, assert_stats_close, random_covariances

EXPLORE = os.environ.get("GMMFAST_FUZZ") == "explore"
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
C_TOL = 8  # rounding-error multiplier, as in test_ops.py


def fuzz(max_examples):
    return settings(
        max_examples=max_examples * (10 if EXPLORE else 1),
        deadline=None,
        derandomize=not EXPLORE,
        database=None if not EXPLORE else settings.default.database,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )


def eps(dtype):
    return float(np.finfo(dtype).eps)


# --------------------------------------------------------------------------------------
# strategies

SCALES = (1e-30, 1e-20, 1e-8, 1.0, 1.0, 1e3, 1e8, 1e20, 1e30)
STRUCTURES = ("random", "random", "duplicated_rows", "constant_column", "identical_rows", "collinear")
LAYOUTS = ("C", "C", "F", "strided", "reversed", "big_endian", "readonly")


@st.composite
def problems(draw, max_n=40, max_d=6, max_k=5, huge_k=False, float_only=False):
    """(X as passed, X as float64 numbers, data dtype, mixture dict, description)."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shape_kind = draw(st.sampled_from(["small", "small", "small", "d_gt_n", "k_eq_n"] + (["huge_k"] if huge_k else [])))
    if shape_kind == "d_gt_n":
        N, D = draw(st.integers(1, 4)), draw(st.integers(5, 12))
    else:
        N, D = draw(st.integers(1, max_n)), draw(st.integers(1, max_d))
    K = {"k_eq_n": N, "huge_k": draw(st.integers(500, 3000))}.get(shape_kind, draw(st.integers(1, max_k)))
    covariance_type = draw(st.sampled_from(COVARIANCE_TYPES))
    kinds = ["float64", "float32"] if float_only else ["float64", "float64", "float32", "float32", "int64",
                                                       "int32", "uint8", "bool", "float16"]
    kind = draw(st.sampled_from(kinds))
    scale = 1.0 if kind in ("int64", "int32", "uint8", "bool", "float16") else draw(st.sampled_from(SCALES))
    offset = 0.0 if kind != "float64" and kind != "float32" else draw(st.sampled_from([0.0, 0.0, 1e3, 1e8]))
    structure = draw(st.sampled_from(STRUCTURES))
    layout = draw(st.sampled_from(LAYOUTS))

    # the mixture and the data, in units of `scale` around `offset`
    means = rng.normal(scale=3.0, size=(K, D))
    cov = random_covariances(rng, covariance_type, K, D)
    comp = rng.integers(K, size=N)
    Z = means[comp] + rng.normal(size=(N, D))
    if structure == "duplicated_rows":
        Z = Z[rng.integers(max(1, N // 3), size=N) % N]
    elif structure == "constant_column":
        Z[:, rng.integers(D)] = 1.5
    elif structure == "identical_rows":
        Z[:] = Z[0]
    elif structure == "collinear":
        Z = np.outer(rng.normal(size=N), rng.normal(size=D))
    if kind in ("int64", "int32", "uint8", "bool"):
        Z = np.clip(np.round(Z), 0 if kind in ("uint8", "bool") else -100, 1 if kind == "bool" else 100)
        scale, offset = 1.0, 0.0
    dtype = np.dtype(kind)
    X = (Z * scale + offset).astype(dtype)
    data_dtype = np.dtype(np.float32) if kind == "float32" else np.dtype(np.float64)
    mixture = dict(
        weights=(w := rng.uniform(0.2, 1.0, size=K)) / w.sum(),
        means=(means * scale + offset).astype(data_dtype),
        covariance_type=covariance_type,
    )
    prec_chol, _ = ref.precision_cholesky(cov, covariance_type, n_features=D)
    # precision Cholesky of the scaled covariances: U / scale (exact in float64)
    mixture["precisions_cholesky"] = (prec_chol / scale).astype(data_dtype)
    mixture["log_weights"] = np.log(mixture["weights"]).astype(data_dtype)

    if layout == "F":
        X = np.asfortranarray(X)
    elif layout == "strided":
        big = np.empty((N, 2 * D), dtype=X.dtype)
        big[:, ::2] = X
        X = big[:, ::2]
    elif layout == "reversed":
        X = X[::-1].copy()[::-1]
    elif layout == "big_endian" and X.dtype.itemsize > 1:
        X = X.astype(X.dtype.newbyteorder(">"))
    elif layout == "readonly":
        X = X.copy()
        X.setflags(write=False)
    X64 = np.asarray(X, dtype=np.float64)
    if data_dtype == np.float32:
        X64 = np.asarray(X, dtype=np.float32).astype(np.float64)
    desc = dict(N=N, D=D, K=K, cov=covariance_type, dtype=kind, scale=scale, offset=offset,
                structure=structure, layout=layout, seed=seed)
    note(f"problem: {desc}")
    return X, X64, data_dtype, mixture, desc


def mixture_args(mix):
    return mix["log_weights"], mix["means"], mix["precisions_cholesky"], mix["covariance_type"]


def mixture_args64(mix):
    return tuple(np.asarray(a, np.float64) for a in mixture_args(mix)[:3]) + (mix["covariance_type"],)


def float32_overflow_possible(desc):
    """float32 products of deviations overflow beyond ~1.8e19 (squares beyond 3.4e38):
    data beyond ~1e18, or data whose float32 rounding (offset · 6e-8) is ~1e18 times
    the components' spread (precisions of 1/scale)."""
    if desc["dtype"] != "float32":
        return False
    return desc["scale"] * 30 > 1e18 or desc["offset"] * 6e-8 > 1e18 * desc["scale"]


def ill_defined_possible(desc, reg_covar=1e-6):
    """scikit-learn's ill-defined-covariance error is the documented outcome when the
    rounding of a covariance (eps · (scale² + offset²)) can exceed reg_covar on a
    component with too few distinct points (collapsed, duplicated or collinear data,
    N <= D, small N): whether a pivot of such a covariance is accepted is then decided
    by rounding, differently in numpy's Cholesky and gmmfast's."""
    eps_data = 1.2e-7 if desc["dtype"] == "float32" else 2.3e-16
    return eps_data * (desc["scale"] ** 2 + desc["offset"] ** 2) * 30 > reg_covar


def assert_clear_error(exc, *words):
    msg = str(exc)
    assert isinstance(exc, (ValueError, MemoryError)), repr(exc)
    assert len(msg) > 20, msg
    assert any(w in msg for w in words), msg


# --------------------------------------------------------------------------------------
# log_prob


def log_prob_tolerance(X64, mix64, dtype, D):
    """C·(D+2)·eps·(1 + max_k |w_ik|) per row (test_ops.py's bound) plus, for the
    'sample' output, the rounding of the log-sum-exp."""
    w = ref.log_prob(X64, *mix64, "weighted")
    scale = 1.0 + np.max(np.abs(np.where(np.isfinite(w), w, 0.0)), axis=1)
    return C_TOL * (D + 2) * eps(dtype) * scale


@fuzz(60)
@given(problems(huge_k=True))
def test_log_prob(problem):
    X, X64, dtype, mix, desc = problem
    mix64 = mixture_args64(mix)
    tol = log_prob_tolerance(X64, mix64, dtype, desc["D"])
    for output in ("sample", "log_resp", "weighted"):
        try:
            got = ops.log_prob(X, *mixture_args(mix), output)
        except (ValueError, MemoryError) as exc:
            # only where float32 arithmetic overflows (the reference is float64)
            assert float32_overflow_possible(desc), repr(exc)
            assert_clear_error(exc, "overflow")
            return
        want = ref.log_prob(X64, *mix64, output)
        assert got.dtype == dtype and got.shape == want.shape
        assert np.all(np.isfinite(got)), "non-finite log-densities of finite data"
        bound = tol if output == "sample" else tol[:, None]
        err = np.abs(got - want)
        assert np.all(err <= bound), (output, float(np.max(err / bound)))


# --------------------------------------------------------------------------------------
# em_stats


def stats_tolerance(X64, centres64, covariance_type, g, dtype, mix64=None, resp=None):
    """test_ops.stats_tolerance (see its docstring), plus the underflow of float32 products
    of tiny deviations: each term may lose up to the smallest subnormal per operation."""
    N, D = X64.shape
    gabs = np.ones(N) if g is None else np.abs(g)
    if resp is None:
        w = ref.log_prob(X64, *mix64, "weighted")
        R = np.exp(ref.log_prob(X64, *mix64, "log_resp"))
        h = gabs * (1.0 + np.max(np.abs(w), axis=1))
        estep = abs_stats(X64, R, centres64, covariance_type, h)
        ll_scale = (D + 2) * float(np.sum(h)) + np.sqrt(N) * float(np.sum(gabs * np.abs(ref.log_prob(X64, *mix64))))
    else:
        R = resp
        estep = (0.0, 0.0, 0.0)
        ll_scale = 0.0
    summed = abs_stats(X64, R, centres64, covariance_type, gabs)
    scale = tuple((D + 2) * e + np.sqrt(N) * a for e, a in zip(estep, summed))
    fi = np.finfo(dtype)
    ones = np.ones((N, centres64.shape[0]))
    unit = abs_stats(X64, ones, centres64, covariance_type, gabs)
    terms = float(np.sum(gabs)) * (D + 1) * 4
    # responsibilities below e^-86 (float32) / e^-707 (float64), i.e. below ~4 x the
    # smallest normal number, are flushed to 0 by the kernels' exp (arch/kernels.inl)
    floor = tuple(5 * float(fi.tiny) * a + terms * float(fi.smallest_subnormal) * (1 + float(np.max(gabs)))
                  for a in unit)
    return dict(rtol=C_TOL * eps(dtype), scale=scale, ll_scale=ll_scale, floor=floor,
                ws_scale=np.sqrt(N) * float(np.sum(gabs)))


@fuzz(60)
@given(problems(huge_k=True), st.sampled_from(["estep", "estep_weighted", "resp", "labels"]),
       st.booleans())
def test_em_stats(problem, source, other_centres):
    X, X64, dtype, mix, desc = problem
    N, K = desc["N"], desc["K"]
    rng = np.random.default_rng(desc["seed"] + 1)
    mix64 = mixture_args64(mix)
    centres = mix["means"]
    if other_centres:
        centres = (mix["means"].astype(np.float64) + desc["scale"] * rng.normal(size=mix["means"].shape)).astype(dtype)
    kw = dict(centres=centres)
    g = resp = labels = None
    if source == "estep_weighted":
        g = rng.uniform(0, 2, size=N).astype(dtype)
        kw["sample_weight"] = g
    elif source == "resp":
        resp = rng.uniform(size=(N, K)).astype(dtype)
        kw["resp"] = resp
    elif source == "labels":
        labels = rng.integers(K, size=N)
        kw["labels"] = labels
    try:
        got = ops.em_stats(X, *mixture_args(mix), **kw)
    except (ValueError, MemoryError) as exc:
        assert float32_overflow_possible(desc), repr(exc)
        assert_clear_error(exc, "overflow")
        return
    centres64 = np.asarray(centres, np.float64)
    g64 = None if g is None else g.astype(np.float64)
    resp64 = None if resp is None else resp.astype(np.float64)
    want = ref.em_stats(X64, *mix64, centres=centres64, sample_weight=g64, resp=resp64, labels=labels)
    for a in (got.nk, got.s1, got.s2):
        assert np.all(np.isfinite(a))
    if labels is not None:
        resp64 = np.zeros((N, K))
        resp64[np.arange(N), labels] = 1.0
    tol = stats_tolerance(X64, centres64, mix["covariance_type"], g64, dtype, mix64, resp64)
    if mix["covariance_type"] == "tied":
        # tied S2 adds K² centre-difference terms in finish(): rounding grows like sqrt(K²)
        tol["rtol"] *= max(1.0, float(K))
    assert_stats_close(got, want, **tol)


# --------------------------------------------------------------------------------------
# finalize and precision_cholesky (float64 throughout)


@fuzz(50)
@given(problems(float_only=True), st.sampled_from([0.0, 1e-6, 1e-3]))
def test_finalize(problem, reg_covar):
    X, X64, dtype, mix, desc = problem
    stats = ref.em_stats(X64, *mixture_args64(mix))
    assume(stats.weight_sum > 0)
    try:
        got = ops.finalize(stats, reg_covar, dtype)
    except ValueError as exc:
        # float32 data keep float32 parameters: beyond its range, a clear overflow error
        words = ("ill-defined empirical covariance",) + (("float32 arithmetic overflowed",) if dtype == np.float32 else ())
        assert_clear_error(exc, *words)
        return
    for name in ("weights", "means", "covariances", "precisions_cholesky", "log_det_cholesky"):
        assert np.all(np.isfinite(getattr(got, name))), name
    try:
        want = ref.finalize(stats, reg_covar, dtype)
    except ValueError:
        # numpy's Cholesky refuses only pivots <= 0 and gmmfast's relative threshold is
        # stricter (finalize.cpp): gmmfast succeeding here is a bug, unless the
        # covariance is rounding noise beyond reg_covar (then either outcome is right)
        assert ill_defined_possible(desc, reg_covar), "gmmfast finalized a covariance that the reference rejects"
        return
    scale = max(1.0, float(np.max(np.abs(X64)))) ** 2
    np.testing.assert_allclose(got.weights, want.weights, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got.means, want.means, rtol=1e-9, atol=1e-9 * np.sqrt(scale))
    np.testing.assert_allclose(got.covariances, want.covariances, rtol=1e-7, atol=1e-7 * scale)


@fuzz(50)
@given(st.integers(0, 2**32 - 1), st.sampled_from(COVARIANCE_TYPES), st.integers(1, 6), st.integers(1, 6),
       st.sampled_from([1e-30, 1e-8, 1.0, 1e8, 1e30]), st.sampled_from(["spd", "singular", "negative", "nan"]))
def test_precision_cholesky(seed, covariance_type, K, D, scale, kind):
    rng = np.random.default_rng(seed)
    cov = random_covariances(rng, covariance_type, K, D) * scale**2
    if kind == "singular":
        cov = cov * 0.0
    elif kind == "negative":
        cov = -cov
    elif kind == "nan":
        cov = cov.copy()
        cov.flat[rng.integers(cov.size)] = np.nan
    try:
        got, got_ld = ops.precision_cholesky(cov, covariance_type, n_features=D)
    except ValueError as exc:
        assert kind != "spd" or not np.all(np.isfinite(cov)), repr(exc)
        assert_clear_error(exc, "ill-defined empirical covariance")
        return
    assert kind == "spd", "an invalid covariance was accepted"
    want, want_ld = ref.precision_cholesky(cov, covariance_type, n_features=D)
    assert np.all(np.isfinite(got)) and np.all(np.isfinite(got_ld))
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12 * float(np.max(np.abs(want))))
    np.testing.assert_allclose(got_ld, want_ld, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------
# k-means


@fuzz(40)
@given(problems(max_k=6))
def test_kmeans(problem):
    X, X64, dtype, mix, desc = problem
    N, K = desc["N"], min(desc["K"], desc["N"])
    Xf = np.asarray(X, dtype=dtype)
    try:
        centres, idx = ops.kmeans_plusplus(X, K, random_state=desc["seed"])
    except (ValueError, MemoryError) as exc:
        pytest.fail(f"k-means++ of finite data raised {exc!r}")
    assert centres.shape == (K, desc["D"]) and np.all((idx >= 0) & (idx < N))
    np.testing.assert_array_equal(centres, Xf[idx])  # the seeds are rows of X
    again, idx2 = ops.kmeans_plusplus(X, K, random_state=desc["seed"], n_threads=1)
    np.testing.assert_array_equal(idx, idx2)  # deterministic, whatever the thread count
    try:
        c, labels, inertia, n_iter, converged = ops.kmeans_lloyd(X, centres, max_iter=50)
    except (ValueError, MemoryError) as exc:
        assert float32_overflow_possible(desc), repr(exc)
        assert_clear_error(exc, "overflow")
        return
    assert np.all(np.isfinite(c)) and np.isfinite(inertia)
    assert labels.shape == (N,) and np.all((labels >= 0) & (labels < K))
    c64 = c.astype(np.float64)
    d2 = ((X64 - c64[labels]) ** 2).sum(axis=1)
    rtol = C_TOL * (desc["D"] + 2) * eps(dtype)
    # the inertia is the sum of the squared distances to the assigned centres
    # (float32 squares below the smallest subnormal round to 0)
    underflow = 4.0 * N * (desc["D"] + 1) * float(np.finfo(dtype).smallest_subnormal)
    np.testing.assert_allclose(inertia, d2.sum(), rtol=rtol * 4, atol=underflow + rtol * float(np.sum(X64**2)))
    # the reference from the same seeds: the same labels and centres (float64 data
    # without near-ties), or at least a local optimum as good within rounding
    want_c, want_labels, want_inertia, *_ = ref.kmeans_lloyd(X64, centres.astype(np.float64), max_iter=50)
    if np.array_equal(labels, want_labels):
        spread = float(np.max(np.abs(X64 - X64.mean(axis=0)))) + 1e-300
        np.testing.assert_allclose(c64, want_c, rtol=rtol, atol=rtol * (spread + float(np.max(np.abs(X64)))))
    else:
        all_d2 = ((X64[:, None, :] - c64[None]) ** 2).sum(axis=2)
        slack = rtol * (all_d2 + (X64**2).sum(axis=1)[:, None] + 1e-300)
        nearest = all_d2[np.arange(N), labels] <= np.min(all_d2 + slack, axis=1) + 1e-300
        assert np.all(nearest), "a label is not (one of) the nearest centres"


# --------------------------------------------------------------------------------------
# the estimator


@fuzz(30)
@given(problems(max_n=60, max_d=4, max_k=4), st.sampled_from(["kmeans", "k-means++", "random", "random_from_data"]))
def test_gaussian_mixture(problem, init_params):
    X, X64, dtype, mix, desc = problem
    K = min(desc["K"], desc["N"])
    assume(desc["N"] >= 2)
    gm = GaussianMixture(K, covariance_type=desc["cov"], init_params=init_params, random_state=0, max_iter=30)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm.fit(X)
    except (ValueError, MemoryError) as exc:
        if "ill-defined empirical covariance" in str(exc):
            assert ill_defined_possible(desc, gm.reg_covar), repr(exc)
        else:
            assert float32_overflow_possible(desc), repr(exc)
            assert_clear_error(exc, "overflow")
        return
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        assert np.all(np.isfinite(getattr(gm, name))), name
    assert np.isfinite(gm.lower_bound_)
    params64 = (np.log(gm.weights_.astype(np.float64)), gm.means_.astype(np.float64),
                gm.precisions_cholesky_.astype(np.float64), desc["cov"])
    model_dtype = np.result_type(dtype, gm.means_.dtype)
    Xm = np.asarray(X, dtype=model_dtype).astype(np.float64)
    ss = gm.score_samples(X)
    want = ref.log_prob(Xm, *params64)
    tol = log_prob_tolerance(Xm, params64, model_dtype, desc["D"]) * 4
    assert np.all(np.isfinite(ss)) and np.all(np.abs(ss - want) <= tol)
    labels = gm.predict(X)
    w = ref.log_prob(Xm, *params64, "weighted")
    best = w[np.arange(len(labels)), labels]
    assert np.all(best >= np.max(w, axis=1) - 2 * tol), "predict is not the most likely component"
    proba = gm.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-4)


# --------------------------------------------------------------------------------------
# model files (the coverage-guided fuzzer is tests/fuzz/fuzz_load.py; this is its
# cheap, always-run companion)


_SEED_FILES = []


def seed_files(directory):
    """Valid model files of every covariance type (float32 for diag), made once."""
    if not _SEED_FILES:
        X = np.random.default_rng(0).normal(size=(120, 3))
        for t in COVARIANCE_TYPES:
            path = directory / f"{t}.gmm"
            gm = GaussianMixture(2, covariance_type=t, random_state=0)
            gm.fit(X.astype(np.float32 if t == "diag" else np.float64)).save(path)
            _SEED_FILES.append(path.read_bytes())
    return _SEED_FILES


@fuzz(150)
@given(st.data())
def test_load_mutated_files(tmp_path_factory, data):
    blob = bytearray(seed_files(tmp_path_factory.mktemp("seed"))[data.draw(st.integers(0, 3), label="seed file")])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice_json"]))
        if not blob:
            break
        pos = data.draw(st.integers(0, len(blob) - 1))
        if op == "flip":
            blob[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "truncate":
            del blob[pos:]
        elif op == "insert":
            blob[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del blob[pos:pos + data.draw(st.integers(1, 64))]
        else:
            blob = bytearray(_mutate_metadata(bytes(blob), data))
    path = tmp_path_factory.mktemp("mutant") / "m.gmm"
    path.write_bytes(bytes(blob))
    try:
        model = gmmfast.load(path)
    except ModelFileError:
        return
    _assert_valid_model(model)


def _mutate_metadata(blob, data):
    """Rewrites one metadata field with a hostile JSON value (keeps the archive valid)."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as z:
            members = {n: z.read(n) for n in z.namelist()}
        meta = json.loads(str(np.load(io.BytesIO(members["metadata.npy"]), allow_pickle=False)))
    except Exception:
        return blob
    if not isinstance(meta, dict) or not isinstance(meta.get("params"), dict):
        return blob
    hostile = data.draw(st.sampled_from([None, True, -1, 0, 2**31, 2**64, 10**400, 1e308, -1e308, "x", [], {},
                                         [1.0] * 3, "full", 0.5]))
    keys = sorted(meta) + ["params." + k for k in sorted(meta.get("params", {}))]
    key = data.draw(st.sampled_from(keys))
    if key.startswith("params."):
        meta["params"][key[7:]] = hostile
    else:
        meta[key] = hostile
    buf = io.BytesIO()
    np.save(buf, np.array(json.dumps(meta)))
    members["metadata.npy"] = buf.getvalue()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for n, d in members.items():
            z.writestr(n, d)
    return out.getvalue()


def _assert_valid_model(model):
    assert isinstance(model, GaussianMixture)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "precisions_"):
        assert np.all(np.isfinite(getattr(model, name))), name
    # at each component's mean its density is finite whatever the other components
    # (scoring far-away points such as 0 may legitimately overflow float32)
    assert np.all(np.isfinite(model.score_samples(model.means_)))
