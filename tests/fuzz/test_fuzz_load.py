"""A short, bounded run of the coverage-guided model-file fuzzer (fuzz_load.py) from the
seed corpus, so that CI exercises the target and catches regressions it would find
first. Needs atheris (in the `test` extra where wheels exist: Linux x86-64, CPython
3.11-3.13); elsewhere it is skipped, and GMMFAST_REQUIRE_ATHERIS=1 (set by .ci/run)
turns a missing atheris on a supported platform into a failure instead of a skip.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
RUNS = int(os.environ.get("GMMFAST_FUZZ_RUNS", "1500"))


def atheris_supported() -> bool:
    """Where the test extra installs atheris (binary wheels only)."""
    return (sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")
            and (3, 11) <= sys.version_info[:2] < (3, 14))


def test_fuzz_model_loader_bounded(tmp_path):
    try:
        import atheris  # noqa: F401
    except ImportError:
        if atheris_supported() and os.environ.get("GMMFAST_REQUIRE_ATHERIS") == "1":
            pytest.fail("atheris is not installed: install gmmfast's test extra (pip install '.[test]')")
        pytest.skip("atheris is not installed (test extra; binary wheels for Linux x86-64, CPython 3.11-3.13)")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    cmd = [sys.executable, os.path.join(HERE, "fuzz_load.py"), str(corpus), os.path.join(HERE, "seeds"),
           f"-runs={RUNS}", "-seed=1", "-rss_limit_mb=2048", "-timeout=20",
           f"-artifact_prefix={artifacts}{os.sep}", "-print_final_stats=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    findings = sorted(os.listdir(artifacts))
    if proc.returncode != 0 or findings:
        for name in findings:  # keep them where a developer finds them
            shutil.copy(artifacts / name, os.path.join(tempfile_dir(), name))
        pytest.fail(f"the fuzzer found a failure (exit {proc.returncode}, artifacts {findings} copied to "
                    f"{tempfile_dir()}; replay: python {HERE}/fuzz_load.py <artifact>):\n{proc.stderr[-4000:]}")
    assert "Done" in proc.stderr and f"{RUNS} runs" in proc.stderr, proc.stderr[-2000:]


def tempfile_dir() -> str:
    import tempfile

    path = os.path.join(tempfile.gettempdir(), "gmmfast-fuzz-findings")
    os.makedirs(path, exist_ok=True)
    return path
