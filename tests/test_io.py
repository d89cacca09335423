"""GaussianMixture.save / gmmfast.load: round trips, and every way a file can be bad.

Round trips are checked bit for bit against the saved model. Bad files are written by
hand (np.savez / zipfile) from a valid file's contents, one defect each; every one must
raise gmmfast.ModelFileError (a ValueError) whose message names the defect, and loading
must never unpickle.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import numpy as np
import pytest

import gmmfast
from gmmfast import GaussianMixture, ModelFileError
from gmmfast.io import FORMAT_NAME, FORMAT_VERSION

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
PARAM_ATTRS = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")
SCALAR_ATTRS = ("converged_", "n_iter_", "lower_bound_", "lower_bounds_", "n_features_in_",
                "reg_covar_", "n_reseeds_")


def make_data(dtype=np.float64, n=200, d=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=5, size=(3, d))
    X = centres[rng.integers(3, size=n)] + rng.normal(size=(n, d))
    return X.astype(dtype)


def fitted(covariance_type="full", dtype=np.float64, **kw):
    X = make_data(dtype)
    return GaussianMixture(3, covariance_type=covariance_type, random_state=0, **kw).fit(X), X


def read_entries(path):
    """The archive's arrays and its metadata dict (read without pickle)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "metadata"}
        meta = json.loads(str(z["metadata"]))
    return arrays, meta


def write_entries(path, arrays, meta, **extra):
    with open(path, "wb") as fh:
        np.savez(fh, metadata=np.array(json.dumps(meta)), **arrays, **extra)


@pytest.fixture(scope="module")
def _valid_bytes(tmp_path_factory):
    gm, _ = fitted()
    path = tmp_path_factory.mktemp("valid") / "model.gmm"
    gm.save(path)
    return path.read_bytes()


@pytest.fixture
def saved(tmp_path, _valid_bytes):
    """A valid model file (full, float64, fitted once per module) and its contents."""
    path = tmp_path / "model.gmm"
    path.write_bytes(_valid_bytes)
    arrays, meta = read_entries(path)
    return path, arrays, meta


def assert_rejected(path, *words):
    with pytest.raises(ModelFileError) as info:
        gmmfast.load(path)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(path) in msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


# --------------------------------------------------------------------------------------
# round trips


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_round_trip(tmp_path, covariance_type, dtype):
    gm, X = fitted(covariance_type, dtype, tol=1e-4, recovery="reseed", n_threads=1,
                   learning_decay=0.9, learning_offset=3.0)
    path = tmp_path / "m.gmm"  # no .npz suffix: written to the exact path given
    gm.save(path)
    assert os.listdir(tmp_path) == ["m.gmm"]
    back = gmmfast.load(path)
    assert type(back) is GaussianMixture
    assert back.get_params() == gm.get_params()
    for attr in PARAM_ATTRS:
        a, b = getattr(back, attr), getattr(gm, attr)
        assert a.dtype == b.dtype == dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes(), attr
    for attr in SCALAR_ATTRS:
        assert getattr(back, attr) == getattr(gm, attr), attr
    assert not hasattr(back, "feature_names_in_")
    for method in ("predict", "predict_proba", "score_samples"):
        np.testing.assert_array_equal(getattr(back, method)(X), getattr(gm, method)(X))
    assert back.score(X) == gm.score(X) and back.bic(X) == gm.bic(X)
    np.testing.assert_array_equal(back.sample(10)[0], gm.sample(10)[0])
    # a loaded model can be saved again, byte-identically in content
    again = tmp_path / "again.gmm"
    back.save(again)
    a1, m1 = read_entries(path)
    a2, m2 = read_entries(again)
    assert m1 == m2 and all(np.array_equal(a1[k], a2[k]) for k in a1)


def test_round_trip_feature_names_and_special_values(tmp_path):
    pd = pytest.importorskip("pandas")
    X = make_data()
    df = pd.DataFrame(X, columns=["α", "b b", "c"])
    gm = GaussianMixture(2, random_state=0).fit(df)
    gm.save(tmp_path / "m")
    back = gmmfast.load(tmp_path / "m")
    np.testing.assert_array_equal(back.feature_names_in_, gm.feature_names_in_)
    assert back.feature_names_in_.dtype == object
    np.testing.assert_array_equal(back.predict(df), gm.predict(df))
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        back.predict(X)
    # max_iter=0: lower_bound_ is -inf and lower_bounds_ empty, and survive the trip
    gm0 = GaussianMixture(2, max_iter=0, random_state=np.random.RandomState(0)).fit(X)
    gm0.save(tmp_path / "m0")
    back0 = gmmfast.load(os.fspath(tmp_path / "m0"))  # str paths too
    assert back0.lower_bound_ == -np.inf and back0.lower_bounds_ == [] and back0.n_iter_ == 0
    assert back0.random_state is None  # a RandomState instance is not stored


def test_save_before_fit_raises_not_fitted(tmp_path):
    with pytest.raises(gmmfast.NotFittedError):
        GaussianMixture().save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_pickle_round_trip():
    gm, X = fitted("diag", np.float32)
    back = pickle.loads(pickle.dumps(gm))
    for attr in PARAM_ATTRS:
        assert getattr(back, attr).tobytes() == getattr(gm, attr).tobytes()
    np.testing.assert_array_equal(back.predict_proba(X), gm.predict_proba(X))


# --------------------------------------------------------------------------------------
# rejections


def test_nonexistent_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        gmmfast.load(tmp_path / "missing.gmm")


def test_not_a_zip(tmp_path):
    path = tmp_path / "text.gmm"
    path.write_text("hello, I am not a model\n")
    msg = assert_rejected(path, "cannot be read as an .npz archive")
    assert "zip signature" in msg and "pickle" not in msg  # not numpy's "pickled data" guess
    empty = tmp_path / "empty.gmm"
    empty.write_bytes(b"")
    assert_rejected(empty, "cannot be read as an .npz archive")


def test_a_directory(tmp_path):
    assert_rejected(tmp_path, "cannot be read")


def test_a_plain_npy(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros(3))
    assert_rejected(path, "single .npy array")


def test_a_pickle_is_never_unpickled(tmp_path):
    """A pickle file, and a model whose array is an object array: both rejected
    without executing anything (the object's __reduce__ would create a file)."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.gmm"
    path.write_bytes(pickle.dumps(Evil()))
    assert_rejected(path, "cannot be read")
    assert not marker.exists()

    gm, _ = fitted()
    gm.save(tmp_path / "ok.gmm")
    arrays, meta = read_entries(tmp_path / "ok.gmm")
    obj = np.empty(3, dtype=object)
    obj[:] = [Evil(), Evil(), Evil()]
    arrays["weights"] = obj
    write_entries(path, arrays, meta)  # np.savez pickles object arrays
    msg = assert_rejected(path, "weights")
    assert "object" in msg
    assert not marker.exists()


def test_truncated_file(saved, tmp_path):
    path, _, _ = saved
    data = path.read_bytes()
    for keep in (10, len(data) // 2, len(data) - 30):
        cut = tmp_path / f"cut{keep}.gmm"
        cut.write_bytes(data[:keep])
        assert_rejected(cut, "not a valid gmmfast model file")


def test_corrupted_bytes(saved, tmp_path):
    """Flipped bytes in the middle of each stored member: the zip CRC (or the .npy
    header) catches them."""
    path, _, _ = saved
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
    for info in infos:
        bad = bytearray(data)
        start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
        mid = start + info.compress_size // 2
        bad[mid] ^= 0xFF
        out = tmp_path / f"bad-{info.filename}.gmm"
        out.write_bytes(bytes(bad))
        assert_rejected(out, "cannot be read")


def test_wrong_format_name(saved, tmp_path):
    path, arrays, meta = saved
    meta["format"] = "sklearn.GaussianMixture"
    write_entries(path, arrays, meta)
    assert_rejected(path, "format is 'sklearn.GaussianMixture'", repr(FORMAT_NAME))


def test_future_format_version_says_upgrade(saved):
    path, arrays, meta = saved
    meta["format_version"] = FORMAT_VERSION + 1
    meta["gmmfast_version"] = "99.0"
    write_entries(path, arrays, meta)
    with pytest.raises(ModelFileError) as info:
        gmmfast.load(path)
    msg = str(info.value)
    assert f"format version {FORMAT_VERSION + 1}" in msg and "gmmfast 99.0" in msg
    assert "upgrade gmmfast" in msg


@pytest.mark.parametrize("version", [0, -1, "1", 1.0, True, None])
def test_bad_format_version(saved, version):
    path, arrays, meta = saved
    meta["format_version"] = version
    write_entries(path, arrays, meta)
    assert_rejected(path, "format_version")


@pytest.mark.parametrize("name", ["metadata", "weights", "means", "covariances", "precisions_cholesky"])
def test_missing_entries(saved, name):
    path, arrays, meta = saved
    if name == "metadata":
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
    else:
        del arrays[name]
        write_entries(path, arrays, meta)
    assert_rejected(path, "missing entries", repr(name))


@pytest.mark.parametrize(
    "name, shape",
    [("weights", (4,)), ("means", (3, 2)), ("means", (3,)), ("covariances", (3, 3)),
     ("precisions_cholesky", (3, 3, 2)), ("weights", ())],
)
def test_wrong_shapes(saved, name, shape):
    path, arrays, meta = saved
    arrays[name] = np.ones(shape)
    write_entries(path, arrays, meta)
    assert_rejected(path, repr(name), "has shape", str(tuple(shape)))


def test_wrong_dtypes(saved):
    path, arrays, meta = saved
    for dtype in (np.int64, np.float32, np.complex128, "U3"):
        bad = dict(arrays)
        bad["means"] = arrays["means"].astype(dtype)
        write_entries(path, bad, meta)
        assert_rejected(path, "'means'", "dtype")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("name", ["weights", "means", "covariances", "precisions_cholesky"])
def test_non_finite_arrays(saved, name, value):
    path, arrays, meta = saved
    arrays[name] = arrays[name].copy()
    arrays[name].flat[1] = value
    write_entries(path, arrays, meta)
    assert_rejected(path, repr(name), "NaN or infinity")


def test_inconsistent_parameters(saved, tmp_path):
    """Finite arrays of the right shapes that are not a mixture."""
    path, arrays, meta = saved

    def rejected(why, **changes):
        bad = {k: v.copy() for k, v in arrays.items()}
        for name, fn in changes.items():
            fn(bad[name])
        write_entries(path, bad, meta)
        assert_rejected(path, why)

    def negate_diagonal(U):
        U[0, 1, 1] = -U[0, 1, 1]

    def fill_lower(U):
        U[1, 2, 0] = 0.5

    def zero_diagonal(U):
        U[2, 0, 0] = 0.0

    def indefinite(C):
        C[0] = np.diag([1.0, -1.0, 1.0])

    def asymmetric(C):
        C[1, 0, 2] += 1.0

    def weights_off(w):
        w[0] += 0.1

    def negative_weight(w):
        w[:] = [1.2, -0.1, -0.1]

    rejected("not upper triangular with a positive diagonal", precisions_cholesky=negate_diagonal)
    rejected("not upper triangular with a positive diagonal", precisions_cholesky=fill_lower)
    rejected("not upper triangular with a positive diagonal", precisions_cholesky=zero_diagonal)
    rejected("covariances are not positive definite", covariances=indefinite)
    rejected("covariances are not symmetric", covariances=asymmetric)
    rejected("weights are not a probability vector", weights=weights_off)
    rejected("weights are not a probability vector", weights=negative_weight)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_non_positive_diagonal_parameters(tmp_path, covariance_type):
    gm, _ = fitted(covariance_type)
    path = tmp_path / "m"
    gm.save(path)
    arrays, meta = read_entries(path)
    for name, words in (("precisions_cholesky", "precisions_cholesky must be positive"),
                        ("covariances", "covariances must be positive")):
        bad = {k: v.copy() for k, v in arrays.items()}
        bad[name].flat[0] = -bad[name].flat[0]
        write_entries(path, bad, meta)
        assert_rejected(path, words)


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(params={"n_components": 0}), "invalid parameters"),
        (dict(params={"covariance_type": "banana"}), "invalid parameters"),
        (dict(params={"bogus": 1}), "unknown parameters ['bogus']"),
        (dict(params=None), "no 'params'"),
        (dict(n_features_in=0), "'n_features_in'"),
        (dict(n_features_in="3"), "'n_features_in'"),
        (dict(dtype="float16"), "dtype 'float16'"),
        (dict(n_iter=-1), "'n_iter'"),
        (dict(n_iter=2.5), "'n_iter'"),
        (dict(converged="yes"), "'converged'"),
        (dict(lower_bound="high"), "'lower_bound'"),
        (dict(lower_bound=float("nan")), "'lower_bound'"),
        (dict(lower_bounds=[1.0, "x"]), "lower_bounds"),
        (dict(reg_covar_used=-1.0), "'reg_covar_used'"),
        (dict(reg_covar_used="big"), "'reg_covar_used'"),
        (dict(n_reseeds=-2), "'n_reseeds'"),
        (dict(n_batch_iter=-1), "'n_batch_iter'"),
        (dict(n_batch_iter=1.5), "'n_batch_iter'"),
        (dict(n_batch_iter="4"), "'n_batch_iter'"),
        (dict(params={"learning_decay": 0.2}), "learning_decay"),
        (dict(params={"learning_offset": -1.0}), "learning_offset"),
        (dict(feature_names_in=["a", "b"]), "feature_names_in"),
        (dict(feature_names_in=[1, 2, 3]), "feature_names_in"),
    ],
)
def test_bad_metadata(saved, change, words):
    path, arrays, meta = saved
    for key, value in change.items():
        if key == "params" and value is not None:
            meta["params"].update(value)
        else:
            meta[key] = value
    write_entries(path, arrays, meta)
    assert_rejected(path, words)


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", "3"])
def test_metadata_not_a_json_object(saved, raw):
    path, arrays, _ = saved
    with open(path, "wb") as fh:
        np.savez(fh, metadata=np.array(raw), **arrays)
    assert_rejected(path, "not a valid gmmfast model file")
    with open(path, "wb") as fh:
        np.savez(fh, metadata=np.arange(3.0), **arrays)
    assert_rejected(path, "metadata is not a JSON string")


def test_forged_huge_shape_is_rejected_before_allocating(saved):
    """A header declaring 2**40 elements (8 TB) is rejected from the header alone."""
    path, arrays, meta = saved
    write_entries(path, arrays, meta)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    header = members["means.npy"]
    members["means.npy"] = header.replace(b"'shape': (3, 3)", b"'shape': (1099511627776, 3)")
    assert members["means.npy"] != header
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    assert_rejected(path, "'means'", "(1099511627776, 3)")
    # and a model claiming an absurd size in its metadata
    meta["n_features_in"] = 2**40
    write_entries(path, arrays, meta)
    assert_rejected(path, "implausibly large")


def test_every_rejection_is_a_model_file_error_and_a_value_error():
    assert issubclass(ModelFileError, ValueError)
    assert gmmfast.ModelFileError is ModelFileError


def test_model_file_defaults_are_the_estimators():
    """A model file without a parameter gets the estimator's default: the table io reads
    (gmmfast._settings.PARAM_DEFAULTS) must be the constructor's defaults, and cover
    every scalar parameter a file stores."""
    from gmmfast._settings import PARAM_DEFAULTS
    from gmmfast.io import _SCALAR_PARAMS

    defaults = GaussianMixture().get_params()
    assert set(PARAM_DEFAULTS) == set(_SCALAR_PARAMS)
    for name, value in PARAM_DEFAULTS.items():
        assert defaults[name] == value and type(defaults[name]) is type(value), name


def test_load_fills_missing_parameters_with_defaults(tmp_path):
    """A file whose metadata lacks some parameters loads with the defaults for them."""
    X = np.random.default_rng(0).normal(size=(60, 2))
    path = tmp_path / "m.npz"
    GaussianMixture(2, covariance_type="diag", tol=1e-4, random_state=0).fit(X).save(path)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays["metadata"]))
    for name in ("tol", "max_iter", "verbose"):
        del meta["params"][name]
    arrays["metadata"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    loaded = gmmfast.load(path)
    assert loaded.covariance_type == "diag" and loaded.tol == 1e-3 and loaded.max_iter == 100
    np.testing.assert_array_equal(loaded.predict(X), GaussianMixture(2, covariance_type="diag", tol=1e-4,
                                                                      random_state=0).fit(X).predict(X))
