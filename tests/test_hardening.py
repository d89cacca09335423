"""Hardening (issue 8): degenerate data, resource limits, Ctrl-C, adversarial model files.

- Degenerate data: every case below is fitted with every covariance type in float32 and
  float64; the outcome is the documented one (a fit with finite parameters thanks to
  reg_covar, scikit-learn's ill-defined-covariance error, or a clear float32 overflow
  error), never NaN in fitted parameters.
- Resource limits: calls that would need more memory than is available raise
  MemoryError naming the size and what to do, before allocating (tested both with real
  impossible sizes and with a small artificial limit, ``_core.memory_limit``).
- KeyboardInterrupt: a subprocess running a long em_stats / k-means / fit receives
  SIGINT and raises KeyboardInterrupt within a second.
- Model files: malicious files (zip bombs, forged headers, huge metadata, deep JSON,
  FIFOs, devices, symlinks, huge numbers) are rejected with ModelFileError, and saving
  is atomic.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
import zipfile

import numpy as np
import pytest

import gmmfast
from gmmfast import GaussianMixture, ModelFileError, _core, ops
from gmmfast._types import ILL_DEFINED_COVARIANCE
from gmmfast.io import ModelFileTooLarge

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
PARAMS = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")


# ======================================================================================
# degenerate data


def _degenerate(name, rng):
    N, D = 60, 3
    base = rng.normal(size=(N, D))
    if name == "identical_rows":
        return np.full((N, D), 3.25)
    if name == "single_distinct_point":  # every row the same but one
        X = np.zeros((N, D))
        X[17] = 1.0
        return X
    if name == "two_distinct_points_duplicated":
        return np.repeat([[0.0, 1.0, 2.0], [5.0, 5.0, 5.0]], N // 2, axis=0)
    if name == "collinear":
        return np.outer(rng.normal(size=N), [1.0, 2.0, -1.0]) + 4.0
    if name == "constant_column":
        return np.c_[base[:, :2], np.full(N, -7.0)]
    if name == "integer":
        return rng.integers(0, 3, size=(N, D))  # int64, many duplicates
    if name == "offset_1e8":
        return base + 1e8
    if name == "scale_1e-20":
        return base * 1e-20
    if name == "scale_1e-30":
        return base * 1e-30
    if name == "scale_1e20":
        return base * 1e20
    if name == "more_features_than_samples":
        return rng.normal(size=(6, 20))
    raise AssertionError(name)


FIT_CASES = ("identical_rows", "single_distinct_point", "two_distinct_points_duplicated", "collinear",
             "constant_column", "integer", "offset_1e8", "scale_1e-20", "scale_1e-30", "scale_1e20",
             "more_features_than_samples")


def _expected(name, dtype):
    """The documented outcome: 'fit', or the error's type and words."""
    if name == "scale_1e20" and dtype == np.float32:
        # (x - mu)^2 overflows float32 (1e40 > 3.4e38): no finite log-likelihood
        return ValueError, ("float32", "overflow", "float64")
    return "fit"


def assert_finite_model(gm, X):
    for name in PARAMS:
        value = getattr(gm, name)
        assert np.all(np.isfinite(value)), f"{name} is not finite"
    assert np.all(gm.weights_ > 0) and abs(gm.weights_.sum() - 1) < 1e-5
    assert np.isfinite(gm.lower_bound_)
    for out in (gm.score_samples(X), gm.predict_proba(X)):
        assert np.all(np.isfinite(out))
    assert np.all((gm.predict(X) >= 0) & (gm.predict(X) < gm.n_components))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("name", FIT_CASES)
def test_degenerate_data(name, covariance_type, dtype):
    """Default reg_covar=1e-6 keeps every covariance positive definite, so collapsed,
    constant, duplicated, collinear, integer, offset and tiny-scale data all fit (as in
    scikit-learn, where the same data fit or raise its ill-defined-covariance error);
    only float32 data whose squared deviations overflow float32 raise, saying so."""
    X = _degenerate(name, np.random.default_rng(0))
    if X.dtype.kind == "f":
        X = X.astype(dtype)
    expected = _expected(name, dtype if X.dtype.kind == "f" else np.float64)
    K = min(3, X.shape[0])
    gm = GaussianMixture(K, covariance_type=covariance_type, random_state=0, max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning on collapsed data
        if expected == "fit":
            gm.fit(X)
        else:
            with pytest.raises(expected[0]) as info:
                gm.fit(X)
            for word in expected[1]:
                assert word in str(info.value), str(info.value)
            return
    assert_finite_model(gm, X)
    # the regularisation is what keeps collapsed covariances positive definite
    if covariance_type in ("full", "tied"):
        diag = np.diagonal(np.atleast_3d(gm.covariances_.T).T, axis1=-2, axis2=-1)
    else:
        diag = gm.covariances_
    assert np.all(diag >= 0.99 * gm.reg_covar)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_collapsed_data_without_regularisation(covariance_type):
    """reg_covar=0 on identical rows: scikit-learn's ill-defined-covariance ValueError
    (its exact words) with recovery=None, and a fit with finite parameters and a raised
    reg_covar_ (plus a RuntimeWarning) with recovery='reg_covar'."""
    X = np.full((40, 3), 2.0)
    with pytest.raises(ValueError, match="ill-defined empirical covariance") as info:
        GaussianMixture(2, covariance_type=covariance_type, reg_covar=0.0, random_state=0).fit(X)
    assert ILL_DEFINED_COVARIANCE in str(info.value)
    with pytest.warns(RuntimeWarning, match="reg_covar raised"):
        gm = GaussianMixture(2, covariance_type=covariance_type, reg_covar=0.0, recovery="reg_covar",
                             random_state=0).fit(X)
    assert gm.reg_covar_ > 0
    assert_finite_model(gm, X)


def test_kmeans_on_tiny_float32_scales():
    """float32 data at 1e-30: squared deviations underflow to 0 while their sums do not,
    which used to make the column variance (and k-means' tolerance) negative:
    'ValueError: tol must be >= 0'. Regression test."""
    X = (np.random.default_rng(0).normal(size=(50, 3)) * 1e-30).astype(np.float32)
    res = ops.kmeans(X, 2, random_state=0)
    assert np.all(np.isfinite(res.centres))
    GaussianMixture(2, random_state=0).fit(X)


# ======================================================================================
# resource limits


@pytest.fixture
def memory_limit():
    """Sets an artificial available-memory figure (bytes) for the native checks."""
    before = _core.memory_limit()

    def set_limit(nbytes):
        _core.memory_limit(nbytes)

    yield set_limit
    _core.memory_limit(before)


def test_available_memory_is_known_on_linux():
    avail = _core.available_memory()
    if sys.platform.startswith("linux"):
        assert 0 < avail < 1 << 60
    assert _core.memory_limit() == -1  # measured by default


def _assert_memory_error(info, *words):
    msg = str(info.value)
    assert "would need about" in msg and "is available" in msg, msg
    for w in words:
        assert w in msg, (w, msg)


def test_impossible_log_prob_output_raises_memory_error_before_allocating():
    """(10^6 samples) x (10^6 components) of log-responsibilities is 7.3 TiB: a
    MemoryError naming the output and the size, at once, whatever the machine."""
    N = K = 1_000_000
    X = np.zeros((N, 1))
    t0 = time.perf_counter()
    with pytest.raises(MemoryError) as info:
        ops.log_prob(X, np.full(K, -np.log(K)), np.zeros((K, 1)), np.ones((K, 1)), "diag", "log_resp")
    assert time.perf_counter() - t0 < 5
    _assert_memory_error(info, "gmmfast.log_prob", "TiB", "output (n_samples, n_components)", "fewer rows")


def test_impossible_full_covariance_statistics_raise_memory_error():
    """1000 full 3000 x 3000 covariances: ~270 GiB of per-thread accumulators."""
    K, D, N = 1000, 3000, 1000
    X = np.zeros((N, D))
    with pytest.raises(MemoryError) as info:
        ops.em_stats(X, None, np.zeros((K, D)), None, "full", labels=np.arange(N) % K)
    _assert_memory_error(info, "gmmfast.em_stats", "GiB", "accumulators", "covariance_type")


def test_check_fit_memory():
    """The estimate of a whole fit, cheap enough to call before starting one."""
    with pytest.raises(MemoryError) as info:
        ops.check_fit_memory(10_000, 3000, 1000, "full")
    _assert_memory_error(info, "GaussianMixture.fit", "statistics accumulators", "n_threads")
    ops.check_fit_memory(10_000, 3000, 1000, "diag")  # 1000 x 3000 diagonal: fine
    ops.check_fit_memory(10**6, 50, 20, "full")
    # bad arguments are named, never estimated (a negative size would pass any check)
    for args, words in [((-5, 3, 2), "n_samples"), ((10, 0, 2), "n_features"), ((10, 3, 2.5), "n_components"),
                        ((10, 3, True), "n_components"), ((10, "x", 2), "n_features")]:
        with pytest.raises(ValueError, match=words):
            ops.check_fit_memory(*args)
    with pytest.raises(ValueError, match="covariance_type"):
        ops.check_fit_memory(10, 3, 2, "banana")
    with pytest.raises(ValueError, match="init_params"):
        ops.check_fit_memory(10, 3, 2, init_params="banana")
    with pytest.raises(ValueError, match="n_threads"):
        ops.check_fit_memory(10, 3, 2, n_threads=-1)


def test_every_op_checks_memory(memory_limit):
    """With only 1 MiB 'available', every op that would allocate more raises MemoryError
    naming itself; with the limit lifted the same calls work."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200_000, 2))
    K, D = 64, 64
    Xf = rng.normal(size=(2000, D))
    means = Xf[:K]
    pc = np.broadcast_to(np.eye(D), (K, D, D)).copy()
    lw = np.full(K, -np.log(K))
    st = ops.em_stats(Xf, lw, means, pc, "full")
    calls = {
        "log_prob": lambda: ops.log_prob(X, [0.0], [[0.0, 0.0]], [[1.0, 1.0]], "diag"),
        "em_stats": lambda: ops.em_stats(Xf, lw, means, pc, "full"),
        "log_prob_grad_x": lambda: _core.log_prob_grad_x(X, np.zeros(1), np.zeros((1, 2)), np.ones((1, 2)), "diag"),
        "finalize": lambda: ops.finalize(st),
        "precision_cholesky": lambda: ops.precision_cholesky(pc, "full"),
        "kmeans_plusplus": lambda: ops.kmeans_plusplus(X, 4, random_state=0),
        "kmeans_lloyd": lambda: ops.kmeans_lloyd(X, X[:4], max_iter=2),
        "initial_params": lambda: ops.initial_params(X, 8, "diag", init_params="random", random_state=0),
    }
    memory_limit(1 << 20)
    for name, call in calls.items():
        with pytest.raises(MemoryError) as info:
            call()
        _assert_memory_error(info, f"gmmfast.{name}", "1 MiB is available")
    with pytest.raises(MemoryError):
        GaussianMixture(4, random_state=0).fit(X)
    memory_limit(0)  # no check
    for call in calls.values():
        call()


# ======================================================================================
# KeyboardInterrupt

INTERRUPT_SETUP = """
import numpy as np
from gmmfast import ops, GaussianMixture
rng = np.random.default_rng(0)
"""

INTERRUPT_CASES = {
    # each call takes well over 10 s, so SIGINT lands inside the native kernel
    "em_stats": """
        X = rng.normal(size=(100_000, 32)).astype(np.float32)
        K = 512
        means = X[:K].copy()
        pc = np.broadcast_to(np.eye(32, dtype=np.float32), (K, 32, 32)).copy()
        call = lambda: ops.em_stats(X, np.full(K, -np.log(K)), means, pc, "full")
    """,
    "kmeans_plusplus": """
        X = rng.normal(size=(200_000, 16))
        call = lambda: ops.kmeans_plusplus(X, 5000, random_state=0)
    """,
    "kmeans_lloyd": """
        X = rng.uniform(size=(400_000, 16))
        call = lambda: ops.kmeans_lloyd(X, X[:3000], max_iter=100_000)
    """,
    "GaussianMixture.fit": """
        X = rng.normal(size=(50_000, 32))
        call = lambda: GaussianMixture(256, covariance_type="full", tol=0, max_iter=100_000,
                                       init_params="random_from_data", random_state=0).fit(X)
    """,
}


def _reader(stream, lines):
    for line in stream:
        lines.put(line.strip())
    lines.put(None)


def test_sigint_interrupts_long_native_calls():
    """SIGINT during a long native call (em_stats, k-means++, Lloyd, a whole fit) raises
    KeyboardInterrupt in that call within ~1 s: the kernels poll Python's signal
    handlers (every 50 ms) between row blocks. One interpreter runs the calls one after
    the other (one import instead of four); the last KeyboardInterrupt is not caught, so
    the process must also exit with it."""
    names = list(INTERRUPT_CASES)
    script = textwrap.dedent(INTERRUPT_SETUP) + "import sys, time\n"
    for i, name in enumerate(names):
        last = i == len(names) - 1
        script += textwrap.dedent(INTERRUPT_CASES[name]) + textwrap.dedent(f"""
            print("ready {name}", flush=True)
            t0 = time.perf_counter()
            try:
                call()
                print("finished {name} %.1f" % (time.perf_counter() - t0), flush=True)
            except KeyboardInterrupt:
                print("interrupted {name}", flush=True)
                {"raise" if last else "pass"}
        """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    latencies = {}
    try:
        for name in names:
            line = lines.get(timeout=120)
            assert line == f"ready {name}", (line, "" if line else proc.stderr.read())
            time.sleep(0.4)  # inside the native call by now
            sent = time.monotonic()
            proc.send_signal(signal.SIGINT)
            line = lines.get(timeout=60)
            latencies[name] = round(time.monotonic() - sent, 3)
            assert line == f"interrupted {name}", (line, "" if line else proc.stderr.read())
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    print("KeyboardInterrupt latencies (s):", latencies)
    assert proc.returncode != 0 and stderr.rstrip().endswith("KeyboardInterrupt"), stderr
    # ~1 s: 50 ms polling plus one row block, with slack for a loaded CI machine
    assert max(latencies.values()) < 1.0, f"KeyboardInterrupt latencies (s): {latencies}"


# ======================================================================================
# model files


@pytest.fixture(scope="module")
def _model_bytes(tmp_path_factory):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    gm = GaussianMixture(3, random_state=0).fit(X)
    path = tmp_path_factory.mktemp("model") / "m.gmm"
    gm.save(path)
    return path.read_bytes()


@pytest.fixture
def model(tmp_path, _model_bytes):
    """(path of a valid model file, its arrays, its metadata dict)."""
    path = tmp_path / "model.gmm"
    path.write_bytes(_model_bytes)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "metadata"}
        meta = json.loads(str(z["metadata"]))
    return path, arrays, meta


def write_model(path, arrays, meta=None, raw_meta=None):
    with open(path, "wb") as fh:
        np.savez(fh, metadata=np.array(raw_meta if raw_meta is not None else json.dumps(meta)), **arrays)


def rejected(path, *words):
    with pytest.raises(ModelFileError) as info:
        gmmfast.load(path)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    return info.value


def test_deeply_nested_metadata_json(model):
    path, arrays, _ = model
    write_model(path, arrays, raw_meta="[" * 100_000 + "]" * 100_000)  # RecursionError before
    rejected(path, "metadata is not valid JSON")


@pytest.mark.parametrize("field", ["lower_bound", "lower_bounds", "n_iter", "n_features_in"])
def test_huge_numbers_in_metadata(model, field):
    """10**400 overflowed float() (OverflowError escaped); a 5000-digit literal exceeds
    Python's int-parsing limit (a plain ValueError escaped)."""
    path, arrays, meta = model
    meta = dict(meta)
    meta[field] = [10**400] if field == "lower_bounds" else 10**400
    write_model(path, arrays, meta)
    rejected(path)
    raw = json.dumps(dict(meta, **{field: 0})).replace(f'"{field}": 0', f'"{field}": ' + "9" * 5000)
    write_model(path, arrays, raw_meta=raw)
    rejected(path, "not valid JSON")


def test_non_scalar_parameters(model):
    path, arrays, meta = model
    meta = json.loads(json.dumps(meta))
    meta["params"]["random_state"] = {"__class__": "os.system"}
    write_model(path, arrays, meta)
    rejected(path, "'random_state'", "expected a number, string or null")


def _rewrite_member(path, name, data, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[name] = data
    with zipfile.ZipFile(path, "w") as z:
        for n, d in members.items():
            z.writestr(n, d, compress_type=compression if n == name else zipfile.ZIP_STORED)


def _npy_header(descr, shape):
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_forged_metadata_header_is_not_allocated(model):
    """A metadata member whose header declares 20 strings of 10^8 characters (8 GB):
    rejected from its header, without allocating."""
    path, _, _ = model
    _rewrite_member(path, "metadata.npy", _npy_header("<U100000000", (20,)) + b"\0" * 1000)
    t0 = time.perf_counter()
    rejected(path, "metadata")
    _rewrite_member(path, "metadata.npy", _npy_header("<U100000000", ()) + b"\0" * 1000)
    rejected(path, "metadata is implausibly large")
    assert time.perf_counter() - t0 < 2


def test_zip_bomb(model):
    """A deflated member expanding 64 MiB from ~64 kB (ratio ~1000): rejected from the
    zip directory before anything is decompressed."""
    path, _, _ = model
    header = _npy_header("<f8", (3, 3))
    _rewrite_member(path, "means.npy", header + b"\0" * (64 << 20), compression=zipfile.ZIP_DEFLATED)
    assert os.path.getsize(path) < 1 << 20
    rejected(path, "zip bomb")


def test_tied_model_declaring_huge_features(model):
    """A tied model's (D, D) arrays were not bounded by the size check (only K·D was):
    D = 2**20 declared 8 TiB."""
    path, arrays, meta = model
    meta = json.loads(json.dumps(meta))
    meta["params"]["covariance_type"] = "tied"
    meta["n_features_in"] = 2**20
    write_model(path, arrays, meta)
    rejected(path, "implausibly large")


def test_model_larger_than_memory_is_a_model_file_error_and_memory_error(model, memory_limit):
    path, _, _ = model
    memory_limit(1000)
    with pytest.raises(ModelFileTooLarge) as info:
        gmmfast.load(path)
    assert isinstance(info.value, ModelFileError) and isinstance(info.value, MemoryError)
    assert "gmmfast.load would need about" in str(info.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_and_devices_are_rejected_without_blocking(tmp_path, model):
    """A FIFO used to block load() forever in open(); a device never ends. Symlinks
    are followed: to a valid model they load, to a FIFO they are rejected."""
    fifo = tmp_path / "fifo.gmm"
    os.mkfifo(fifo)
    rejected(fifo, "not a regular file")
    link = tmp_path / "link.gmm"
    link.symlink_to(fifo)
    rejected(link, "not a regular file")
    if os.path.exists("/dev/zero"):
        rejected("/dev/zero", "not a regular file")
    good = tmp_path / "good-link.gmm"
    good.symlink_to(model[0])
    assert isinstance(gmmfast.load(good), GaussianMixture)
    dangling = tmp_path / "dangling.gmm"
    dangling.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError):
        gmmfast.load(dangling)


def test_loading_never_executes_code(tmp_path, model):
    """An object array (a pickle whose __reduce__ would create a file) in place of an
    array or of the metadata: rejected, and nothing ran."""
    path, arrays, meta = model
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = np.empty(1, dtype=object)
    evil[0] = Evil()
    with open(path, "wb") as fh:
        np.savez(fh, metadata=np.array(json.dumps(meta)), **dict(arrays, means=evil))
    rejected(path)
    with open(path, "wb") as fh:
        np.savez(fh, metadata=evil, **arrays)
    rejected(path)
    assert not marker.exists()


def test_save_is_atomic(tmp_path, model, monkeypatch):
    """A save that fails half-way (here: np.savez raising after writing a partial file)
    leaves the previous model intact and no temporary file behind; a successful save
    keeps the file's permissions and writes through a symlink to its target."""
    path, _, _ = model
    before = path.read_bytes()
    os.chmod(path, 0o640)
    gm = gmmfast.load(path)

    def broken_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        gm.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gmm"]
    gm.save(path)
    assert (os.stat(path).st_mode & 0o777) == 0o640
    link = tmp_path / "link.gmm"
    link.symlink_to(path)
    gm.save(link)
    assert link.is_symlink() and isinstance(gmmfast.load(link), GaussianMixture)


# ======================================================================================
# regressions: what the fuzzers found (tests/test_fuzz.py, tests/fuzz/fuzz_load.py)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_em_stats_padding_rows_do_not_leak_nan(covariance_type):
    """float32 data at 1000 with a spread of 1e-30: the zero-padded rows of the last
    row block are so far from the component that their log-sum-exp was NaN, and 0 · NaN
    made nk = NaN (and a fit fail with 'statistics must be finite')."""
    X = np.array([[1000.0]], np.float32)
    means = X.copy()
    pc = {"full": [[[1.3e30]]], "tied": [[1.3e30]], "diag": [[1.3e30]], "spherical": [1.3e30]}[covariance_type]
    st = ops.em_stats(X, [0.0], means, np.array(pc, np.float32), covariance_type)
    assert st.nk.tolist() == [1.0] and np.all(st.s1 == 0) and np.all(st.s2 == 0)
    assert np.isfinite(st.log_likelihood)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_torch_em_stats_non_finite_row_poisons_only_the_log_likelihood(covariance_type, bad):
    """The torch ops check no values (no host synchronisation): a non-finite row makes the
    log-likelihood non-finite, which is how the caller learns of it, and contributes
    nothing to N_k, S1 and S2, for every covariance type alike (the diagonal and tied
    statistics used to pick up 0 · NaN from the row's data)."""
    torch = pytest.importorskip("torch")
    import gmmfast.torch as gt

    from conftest import random_mixture

    rng = np.random.default_rng(5)
    mix = random_mixture(rng, covariance_type, 3, 4)
    X = rng.normal(scale=2.0, size=(300, 4))
    X[37, 2] = bad
    args = [torch.as_tensor(a) for a in mix.args()[:3]]
    got = gt.em_stats(torch.as_tensor(X), *args, covariance_type)
    ref = ops.em_stats(np.delete(X, 37, axis=0), *mix.args())
    assert not np.isfinite(float(got.log_likelihood))
    for name in ("nk", "s1", "s2"):
        np.testing.assert_allclose(getattr(got, name).numpy(), getattr(ref, name), rtol=1e-12, atol=1e-12)


def test_precision_cholesky_rejects_nan_in_the_unread_triangle():
    """The factorisation reads the lower triangle only: a NaN above it was ignored."""
    cov = np.eye(3)[None].copy()
    cov[0, 0, 2] = np.nan
    with pytest.raises(ValueError, match="ill-defined empirical covariance"):
        ops.precision_cholesky(cov, "full")


def test_kmeans_empty_clusters_with_every_point_on_a_centre_match_reference():
    """Duplicate seeds (more clusters than distinct points): nothing to relocate, the
    empty cluster joins the heaviest one as in the reference (it used to take row 0)."""
    from gmmfast import reference as ref

    X = np.array([[-2.0], [0.0], [1.0], [0.0]])
    for init in ([[0.0], [-2.0], [1.0], [0.0]], [[0.0], [0.0], [1.0], [-2.0]]):
        got = ops.kmeans_lloyd(X, np.array(init), max_iter=50)
        want = ref.kmeans_lloyd(X, np.array(init), max_iter=50)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_big_endian_float32_runs_float32_kernels():
    X = np.ones((3, 2), dtype=">f4")
    assert ops.log_prob(X, [0.0], [[0.0, 0.0]], [[1.0, 1.0]], "diag").dtype == np.float32


def test_absurd_thread_counts():
    """2**31 threads: a ValueError naming n_threads (was a pybind11 TypeError); 10**5 is
    capped natively (libgomp aborts the process when it cannot create threads)."""
    X = np.zeros((10, 1))
    with pytest.raises(ValueError, match="n_threads must be at most"):
        ops.log_prob(X, [0.0], [[0.0]], [[1.0]], "diag", n_threads=2**31)
    ops.log_prob(np.zeros((100_000, 1)), [0.0], [[0.0]], [[1.0]], "diag", n_threads=100_000)


def test_float32_overflow_is_a_clear_error_everywhere():
    """float32 data at 1e20: squared deviations overflow float32. em_stats used to return
    inf statistics, k-means an inf inertia, and a tied fit (whose statistics are float64)
    inf covariances_ in float32; each is now a ValueError saying to pass float64."""
    X = (np.random.default_rng(0).normal(size=(40, 2)) * 1e20).astype(np.float32)
    words = "float32 arithmetic overflowed|distances overflowed float32"
    with pytest.raises(ValueError, match=words):
        ops.em_stats(X, None, X[:2], None, "full", labels=np.arange(40) % 2)
    with pytest.raises(ValueError, match=words):
        ops.kmeans_lloyd(X, X[:3])
    for t in COVARIANCE_TYPES:
        with pytest.raises(ValueError, match="float64"):
            GaussianMixture(2, covariance_type=t, random_state=0).fit(X)
    GaussianMixture(2, random_state=0).fit(X.astype(np.float64))  # fine in float64


def test_loader_rejects_precisions_overflowing_float32_and_inconsistent_arrays(model, tmp_path):
    """Found by fuzz_load.py: a float32 model whose precisions_cholesky is ~1e20 loaded
    with precisions_ = inf; and covariances need to match precisions_cholesky."""
    path, arrays, meta = model
    bad = dict(arrays, covariances=arrays["covariances"] * 4.0)
    write_model(path, bad, meta)
    rejected(path, "do not describe the same Gaussians")
    meta32 = dict(meta, dtype="float32")
    huge = {k: v.astype(np.float32) for k, v in arrays.items()}
    huge["precisions_cholesky"] = huge["precisions_cholesky"] * np.float32(1e20)
    huge["covariances"] = huge["covariances"] * np.float32(1e-40)
    write_model(path, huge, meta32)
    rejected(path, "overflow float32")
