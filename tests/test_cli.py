"""The gmmfast command-line tool.

Each command runs once end to end in a subprocess (``python -m gmmfast.cli``, and the
installed ``gmmfast`` script) on temporary files; the detailed checks call
:func:`gmmfast.cli.main` in-process (the same code path, without paying the interpreter
and import start-up for every case). Outputs are checked against the Python API: the
same fit, labels, probabilities and scores.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gmmfast
from gmmfast import GaussianMixture
from gmmfast.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def run(*args, cwd=None, check=True, script=False):
    """Run the CLI in a subprocess (``script``: the installed console script)."""
    if script:
        exe = Path(sys.executable).with_name("gmmfast")
        if not exe.exists():
            pytest.skip("the gmmfast script is not next to this interpreter")
        cmd = [str(exe), *map(str, args)]
    else:
        cmd = [sys.executable, "-m", "gmmfast.cli", *map(str, args)]
    env = dict(os.environ)
    env.pop("GMMFAST_DEBUG", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited with {proc.returncode}\nstdout:\n{proc.stdout}\n"
            f"stderr:\n{proc.stderr}"
        )
    return proc


def cli(*args, check=True, cwd=None):
    """main(args) in this process; returns a Result like a subprocess run."""
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as exc:  # argparse: usage errors, --help, --version
                code = exc.code
    finally:
        os.chdir(old)
    res = Result(code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"gmmfast {args} exited with {code}\n{res.stdout}\n{res.stderr}")
    return res


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Three blobs in 3-D, written as CSV with a header, headerless text and .npy."""
    d = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(120, 3)) + c for c in ([0, 0, 0], [6, 0, 0], [0, 6, 3])])
    csv = d / "data.csv"
    with open(csv, "w") as fh:
        fh.write("# three blobs\nx,y,z\n")
        np.savetxt(fh, X, delimiter=",", fmt="%.17g")
    txt = d / "data.txt"
    np.savetxt(txt, X, fmt="%.17g")
    npy = d / "data.npy"
    np.save(npy, X)
    return d, X, csv, txt, npy


@pytest.fixture(scope="module")
def fitted(data):
    """A model fitted by the CLI, and the same fit by the API."""
    d, X, csv, _, _ = data
    model = d / "model.npz"
    proc = run("fit", csv, "-k", 3, "--random-state", 0, "-o", model)
    api = GaussianMixture(3, random_state=0).fit(X)
    return model, api, proc


# -------------------------------------------------------------------------------- fit


def test_fit_matches_the_api(data, fitted):
    _, X, _, _, _ = data
    model, api, proc = fitted
    out = proc.stdout
    for text in ("samples      360", "features     3  (x, y, z)", "converged    yes",
                 f"BIC          {api.bic(X):.4f}", f"lower bound  {api.lower_bound_:.6f}",
                 f"saved to     {model}"):
        assert text in out, out
    loaded = gmmfast.load(model)
    np.testing.assert_array_equal(loaded.means_, api.means_)
    np.testing.assert_array_equal(loaded.covariances_, api.covariances_)
    assert loaded.n_iter_ == api.n_iter_ and loaded.random_state == 0
    assert type(loaded) is GaussianMixture


def test_fit_options_reach_the_estimator(data, tmp_path):
    d, X, _, txt, npy = data
    w = np.random.default_rng(1).integers(1, 4, size=X.shape[0])
    wfile = tmp_path / "w.txt"
    np.savetxt(wfile, w, fmt="%d")
    model = tmp_path / "m.npz"
    cli("fit", txt, "-k", 2, "--covariance-type", "diag", "--max-iter", 50, "--tol", 1e-5,
        "--n-init", 2, "--reg-covar", 1e-4, "--random-state", 4, "--threads", 1,
        "--weights", wfile, "-o", model, "-q")
    api = GaussianMixture(2, covariance_type="diag", max_iter=50, tol=1e-5, n_init=2,
                          reg_covar=1e-4, random_state=4).fit(X, sample_weight=w)
    got = gmmfast.load(model)
    np.testing.assert_array_equal(got.means_, api.means_)
    np.testing.assert_array_equal(got.covariances_, api.covariances_)
    assert got.get_params()["n_threads"] == 1
    # .npy input in float32 is fitted in float32
    model32 = tmp_path / "m32.npz"
    np.save(tmp_path / "x32.npy", X.astype(np.float32))
    cli("fit", tmp_path / "x32.npy", "-k", 2, "--random-state", 0, "-o", model32)
    assert gmmfast.load(model32).means_.dtype == np.float32
    # --dtype, --delimiter and --skip-header
    semi = tmp_path / "semi.csv"
    with open(semi, "w") as fh:
        fh.write("some title line\nanother\n")
        np.savetxt(fh, X, delimiter=";", fmt="%.17g")
    cli("fit", semi, "-k", 2, "--random-state", 0, "--delimiter", ";", "--skip-header", 2,
        "--dtype", "float32", "-o", model32)
    api32 = GaussianMixture(2, random_state=0).fit(X.astype(np.float32))
    np.testing.assert_array_equal(gmmfast.load(model32).means_, api32.means_)


def test_fit_reports_progress_on_stderr(data):
    _, _, csv, _, _ = data
    proc = cli("fit", csv, "-k", 3, "--random-state", 0, "--progress-interval", 0)
    assert "iteration 1: lower bound" in proc.stderr
    assert "converged: lower bound" in proc.stderr
    assert "not saved" in proc.stdout
    quiet = cli("fit", csv, "-k", 3, "--random-state", 0, "--progress-interval", 0, "-q")
    assert quiet.stderr == ""


def test_fit_reports_non_convergence_as_one_line(data):
    _, _, csv, _, _ = data
    proc = cli("fit", csv, "-k", 3, "--max-iter", 1, "-q")
    assert "NO: stopped at max_iter" in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gmmfast: warning: Best performing")


# ------------------------------------------------------------------- predict, score


def test_predict_labels_and_probabilities(data, fitted, tmp_path):
    _, X, csv, txt, npy = data
    model, api, _ = fitted
    labels = api.predict(X)
    stdout = run("predict", model, csv).stdout
    np.testing.assert_array_equal(np.array(stdout.split(), dtype=int), labels)
    cli("predict", model, npy, "-o", tmp_path / "labels.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), labels)
    proc = cli("predict", model, txt, "-o", tmp_path / "labels.csv")
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "labels.csv", dtype=int), labels)
    assert "wrote labels of 360 samples" in proc.stderr
    cli("predict", model, csv, "--proba", "-o", tmp_path / "proba.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "proba.npy"), api.predict_proba(X))
    cli("predict", model, csv, "--proba", "-o", tmp_path / "proba.csv")
    proba = np.loadtxt(tmp_path / "proba.csv", delimiter=",")
    np.testing.assert_allclose(proba, api.predict_proba(X), rtol=1e-9, atol=1e-12)


def test_score(data, fitted):
    _, X, csv, _, _ = data
    model, api, _ = fitted
    got = json.loads(run("score", model, csv, "--json").stdout)
    assert got == {"n_samples": 360, "log_likelihood": api.score(X), "bic": api.bic(X),
                   "aic": api.aic(X)}
    text = cli("score", model, csv).stdout
    assert f"{api.score(X):.10g}" in text and f"{api.bic(X):.10g}" in text


# ------------------------------------------------------------------------------- info


def test_info_model(data, fitted):
    model, api, _ = fitted
    text = run("info", model).stdout
    for piece in ("components       3", "features         3", "covariance type  full",
                  "dtype            float64", f"written by gmmfast {gmmfast.__version__}",
                  "random_state=0"):
        assert piece in text, text
    doc = json.loads(cli("info", model, "--json").stdout)
    np.testing.assert_array_equal(doc["weights"], api.weights_)
    np.testing.assert_array_equal(doc["means"], api.means_)
    assert doc["n_components"] == 3 and doc["converged"] is True


def test_info_build():
    text = run("info", script=True).stdout  # the installed console script
    info = gmmfast.build_info()
    assert text.startswith(f"gmmfast {gmmfast.__version__}")
    assert info["compiler"] in text and info["isa"] in text and "CUDA" in text
    assert json.loads(cli("info", "--json").stdout)["version"] == info["version"]
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"gmmfast {gmmfast.__version__}"


# ------------------------------------------------------------------------------- demo


def test_demo_writes_a_picture(tmp_path):
    pytest.importorskip("matplotlib")
    proc = run("demo", cwd=tmp_path)
    out = proc.stdout
    png = tmp_path / "old_faithful_gmm.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    assert png.stat().st_size > 20_000
    for piece in ("272 eruptions", "short eruptions", "long eruptions", "35.6%", "64.4%",
                  "NumPy reference", "faster", "both reach mean log-likelihood",
                  "Picture: old_faithful_gmm.png", "select_model"):
        assert piece in out, out
    assert "WARNING" not in out
    assert proc.stderr == ""
    other = tmp_path / "sub" / "pic.png"
    other.parent.mkdir()
    cli("demo", "--plot", other, cwd=tmp_path)
    assert other.read_bytes()[:8] == PNG_SIGNATURE


def test_demo_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    proc = cli("demo", cwd=tmp_path)
    assert "pip install matplotlib" in proc.stdout
    assert not (tmp_path / "old_faithful_gmm.png").exists()
    proc = cli("demo", "--no-plot", cwd=tmp_path)
    assert "skipped (--no-plot)" in proc.stdout
    assert not (tmp_path / "old_faithful_gmm.png").exists()


# ----------------------------------------------------------------------------- errors


def _bad_files(d: Path, model: Path):
    (d / "bad.csv").write_text("a,b,c\n1,2,3\n4,x,6\n")
    (d / "ragged.csv").write_text("1,2,3\n4,5\n")
    (d / "two.csv").write_text("1,2\n3,4\n5,6\n")
    (d / "empty.csv").write_text("# nothing\n")
    (d / "corrupt.npz").write_bytes(model.read_bytes()[: len(model.read_bytes()) // 2])
    (d / "w.txt").write_text("1\n2\n")
    (d / "nan.csv").write_text("1,2,3\n4,nan,6\n")


@pytest.mark.parametrize(
    "args, status, message",
    [
        (["fit", "{d}/missing.csv", "-k", "2"], 1, "missing.csv: no such file"),
        (["fit", "{d}/bad.csv", "-k", "2"], 1, "line 3, column 2: 'x' is not a number"),
        (["fit", "{d}/ragged.csv", "-k", "2"], 1, "line 2 has 2 columns"),
        (["fit", "{d}/empty.csv", "-k", "2"], 1, "no data"),
        (["fit", "{d}/two.csv", "-k", "5"], 1, "need at least as many samples"),
        (["predict", "{model}", "{d}/nan.csv"], 1, "data row 2 contains NaN"),
        (["fit", "{csv}", "-k", "2", "--weights", "{d}/w.txt"], 1, "2 weights for 360 samples"),
        (["fit", "{csv}", "-k", "2", "-o", "{d}/no/such/dir/m.npz", "-q"], 1, "cannot write"),
        (["predict", "{model}", "{d}/two.csv"], 1, "has 2 feature column(s), but the model"),
        (["score", "{model}", "{d}/two.csv"], 1, "fitted on 3"),
        (["predict", "{d}/corrupt.npz", "{csv}"], 1, "not a valid gmmfast model file"),
        (["info", "{d}/corrupt.npz"], 1, "not a valid gmmfast model file"),
        (["info", "{d}/missing.npz"], 1, "no such model file"),
        (["predict", "{model}", "{model}"], 1, "is an .npz archive"),
        (["fit", "{csv}"], 2, "required: -k"),
        (["fit", "{csv}", "-k", "0"], 2, "expected a positive integer"),
        (["fit", "{csv}", "-k", "2", "--covariance-type", "round"], 2, "invalid choice"),
        (["fit", "{csv}", "-k", "2", "--tol", "nan"], 2, "--tol"),
        (["frobnicate"], 2, "invalid choice"),
        ([], 2, "usage"),
    ],
)
def test_errors_are_one_line_with_status(data, fitted, args, status, message):
    d, _, csv, _, _ = data
    model = fitted[0]
    if not (d / "bad.csv").exists():
        _bad_files(d, model)
    args = [a.format(d=d, csv=csv, model=model) for a in args]
    proc = cli(*args, check=False)
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr, proc.stderr
    if args:  # (no command at all prints the help)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_errors_in_a_real_process(data):
    d, _, csv, _, _ = data
    proc = run("fit", d / "missing.csv", "-k", 2, check=False)
    assert proc.returncode == 1
    assert proc.stderr == f"gmmfast: error: {d / 'missing.csv'}: no such file\n"
    # (usage errors, exit status 2, are checked in-process above: argparse's SystemExit)


def test_fit_with_a_checkpoint_resumes_and_cleans_up(data, tmp_path):
    """--checkpoint: a checkpoint of the same fit (written here by the API, interrupted
    after 3 iterations) is resumed by the command, which gives the uninterrupted model
    and removes the file; --mini-batch refuses it."""
    d, X, csv, _, npy = data
    ckpt = tmp_path / "fit.ckpt"

    class Stop(GaussianMixture):
        def _on_iteration(self, n_iter, lower_bound, change):
            if n_iter == 3:
                raise KeyboardInterrupt

    kw = dict(random_state=0, tol=1e-9, checkpoint=ckpt, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        Stop(3, **kw).fit(np.load(npy))
    assert ckpt.exists()
    out = tmp_path / "m.npz"
    cli("fit", npy, "-k", 3, "--random-state", 0, "--tol", 1e-9, "--checkpoint", ckpt,
        "--checkpoint-every", 2, "-o", out, "-q")
    assert not ckpt.exists()
    want = GaussianMixture(3, random_state=0, tol=1e-9).fit(np.load(npy))
    np.testing.assert_array_equal(gmmfast.load(out).means_, want.means_)
    res = cli("fit", npy, "-k", 3, "--mini-batch", "--checkpoint", ckpt, check=False)
    assert res.returncode == 1 and "--checkpoint applies to exact EM" in res.stderr
