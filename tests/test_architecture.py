"""Tests of tools/check_architecture.py (import cycles and module sizes).

The checker is a standalone script (tools/ is not a package), loaded here from its file.
Most tests build a small synthetic package in tmp_path and assert exactly which import
edges, cycles and oversized modules the checker finds; the last one runs it on the real
package, python/gmmfast.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tools" / "check_architecture.py"
PACKAGE = REPO / "python" / "gmmfast"


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_architecture", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ca = _load_checker()


def make_package(tmp_path: Path, files: dict, name: str = "pkg") -> Path:
    """Write ``{relative path: source}`` under tmp_path/name; returns the package folder.

    Every folder on the way gets an empty __init__.py unless ``files`` gives one.
    """
    root = tmp_path / name
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip("\n"))
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        init = folder / "__init__.py"
        if not init.exists():
            init.write_text("")
    return root


def edge_lines(result) -> dict:
    """``{(importer, imported): [line, ...]}`` of a check result."""
    return {edge: [site.line for site in sites] for edge, sites in result.edges.items()}


def chain_sites(result, cycle) -> list:
    """``[(importer, imported, file name, first line)]`` along the cycle's chain."""
    out = []
    for src, dst in zip(cycle.chain, cycle.chain[1:]):
        site = result.edges[(src, dst)][0]
        out.append((src, dst, site.path.relative_to(result.root).as_posix(), site.line))
    return out


# --------------------------------------------------------------------------------------
# Cycles


def test_two_module_cycle_through_function_level_imports(tmp_path):
    root = make_package(
        tmp_path,
        {
            "a.py": """
                import os


                def f():
                    from . import b
                    return b
            """,
            "b.py": """
                class C:
                    def method(self):
                        from .a import f
                        return f()
            """,
        },
    )
    result = ca.check(root)
    assert edge_lines(result) == {("pkg.a", "pkg.b"): [5], ("pkg.b", "pkg.a"): [3]}
    assert len(result.cycles) == 1
    cycle = result.cycles[0]
    assert cycle.members == ["pkg.a", "pkg.b"]
    assert cycle.chain == ["pkg.a", "pkg.b", "pkg.a"]
    assert chain_sites(result, cycle) == [
        ("pkg.a", "pkg.b", "a.py", 5),
        ("pkg.b", "pkg.a", "b.py", 3),
    ]
    assert not result.ok
    report = result.report()
    assert "pkg.a -> pkg.b -> pkg.a" in report
    assert "a.py:5" in report and "b.py:3" in report


def test_imports_inside_if_try_and_class_bodies_count(tmp_path):
    root = make_package(
        tmp_path,
        {
            "a.py": """
                import sys

                if sys.platform:
                    try:
                        import pkg.b
                    except ImportError:
                        pass
            """,
            "b.py": """
                class K:
                    from pkg import c
            """,
            "c.py": """
                while True:
                    with open(__file__) as fh:
                        from .a import x
                    break
            """,
        },
    )
    result = ca.check(root)
    assert edge_lines(result) == {
        ("pkg.a", "pkg.b"): [5],
        ("pkg.b", "pkg.c"): [2],
        ("pkg.c", "pkg.a"): [3],
    }
    assert [c.chain for c in result.cycles] == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


def test_cycle_through_version_import_into_init(tmp_path):
    root = make_package(
        tmp_path,
        {
            "__init__.py": """
                __version__ = "1.0"
                from .io import load
            """,
            "io.py": """
                def load():
                    from . import __version__
                    return __version__
            """,
            # `from . import <submodule>` is an edge to the submodule only, not to the
            # package's __init__ (no implicit edge to one's own parent package)
            "other.py": """
                from . import io, _core
            """,
        },
    )
    result = ca.check(root)
    assert edge_lines(result) == {
        ("pkg", "pkg.io"): [2],
        ("pkg.io", "pkg"): [2],
        ("pkg.other", "pkg.io"): [1],
        ("pkg.other", "pkg._core"): [1],  # a known extension module, no file needed
    }
    assert len(result.cycles) == 1
    assert result.cycles[0].members == ["pkg", "pkg.io"]
    assert result.cycles[0].chain == ["pkg", "pkg.io", "pkg"]
    assert chain_sites(result, result.cycles[0]) == [
        ("pkg", "pkg.io", "__init__.py", 2),
        ("pkg.io", "pkg", "io.py", 2),
    ]


def test_three_module_cycle_with_level_two_relative_imports(tmp_path):
    root = make_package(
        tmp_path,
        {
            "top.py": """
                from .sub import b
            """,
            "sub/a.py": """
                from ..top import T
            """,
            "sub/b.py": '''
                """Doc."""


                def g():
                    from ..sub.a import A
            ''',
            # level 3, from a sub-subpackage, into the same loop's outside
            "sub/inner/c.py": """
                from ... import top
                from ...sub import a
            """,
        },
    )
    result = ca.check(root)
    assert edge_lines(result) == {
        # importing pkg.sub.b from pkg.top also runs pkg/sub/__init__.py
        ("pkg.top", "pkg.sub"): [1],
        ("pkg.top", "pkg.sub.b"): [1],
        ("pkg.sub.a", "pkg.top"): [1],
        ("pkg.sub.b", "pkg.sub.a"): [5],  # pkg.sub contains pkg.sub.b: no edge to it
        ("pkg.sub.inner.c", "pkg.top"): [1],
        ("pkg.sub.inner.c", "pkg.sub.a"): [2],
    }
    assert len(result.cycles) == 1
    cycle = result.cycles[0]
    assert cycle.members == ["pkg.sub.a", "pkg.sub.b", "pkg.top"]
    assert cycle.chain == ["pkg.sub.a", "pkg.top", "pkg.sub.b", "pkg.sub.a"]
    assert chain_sites(result, cycle) == [
        ("pkg.sub.a", "pkg.top", "sub/a.py", 1),
        ("pkg.top", "pkg.sub.b", "top.py", 1),
        ("pkg.sub.b", "pkg.sub.a", "sub/b.py", 5),
    ]


def test_self_import_is_a_cycle(tmp_path):
    root = make_package(tmp_path, {"a.py": "def f():\n    from . import a\n"})
    result = ca.check(root)
    assert [(c.members, c.chain) for c in result.cycles] == [
        (["pkg.a"], ["pkg.a", "pkg.a"])
    ]


def test_acyclic_package(tmp_path):
    root = make_package(
        tmp_path,
        {
            # the package's __init__ imports its submodules and they import siblings
            # with `from . import ...`: no cycle, since a submodule has no edge to the
            # __init__ of its own package
            "__init__.py": """
                from .api import run
                from . import sub
            """,
            "api.py": """
                import numpy as np
                from os import path
                from . import _core, util
                from .util import helper
                import pkg.sub.leaf as leaf
                from pkg.sub.leaf import X
            """,
            "util.py": """
                import json
                def helper():
                    from . import _cuda
            """,
            "sub/__init__.py": """
                from .leaf import X
            """,
            "sub/leaf.py": """
                from .. import util
                X = 1
            """,
        },
    )
    result = ca.check(root)
    assert edge_lines(result) == {
        ("pkg", "pkg.api"): [1],
        ("pkg", "pkg.sub"): [2],
        ("pkg.api", "pkg._core"): [3],
        ("pkg.api", "pkg.util"): [3, 4],
        ("pkg.api", "pkg.sub.leaf"): [5, 6],
        ("pkg.api", "pkg.sub"): [5, 6],
        ("pkg.util", "pkg._cuda"): [3],
        ("pkg.sub", "pkg.sub.leaf"): [1],
        ("pkg.sub.leaf", "pkg.util"): [1],
    }
    assert result.cycles == []
    assert result.oversized == []
    assert result.ok
    assert result.report() == (
        "architecture check: 5 modules, 9 import edges, no cycles, "
        "largest module api.py (6 lines <= 900)"
    )


def test_type_checking_imports_do_not_count(tmp_path):
    root = make_package(
        tmp_path,
        {
            "a.py": """
                from __future__ import annotations
                import typing
                from typing import TYPE_CHECKING

                if TYPE_CHECKING:
                    from .b import B
                if typing.TYPE_CHECKING:
                    import pkg.b
                else:
                    from . import c   # the else branch runs: it counts


                def f(x: B) -> None:
                    pass
            """,
            "b.py": """
                from .a import f
            """,
            "c.py": "",
        },
    )
    result = ca.check(root)
    assert edge_lines(result) == {("pkg.a", "pkg.c"): [10], ("pkg.b", "pkg.a"): [1]}
    assert result.cycles == []
    assert result.ok


def test_relative_import_above_the_package_is_reported(tmp_path):
    root = make_package(tmp_path, {"sub/a.py": "from ... import x\n"})
    result = ca.check(root)
    assert result.edges == {}
    assert len(result.problems) == 1
    assert "a.py:1" in result.problems[0]
    assert "above the top-level package" in result.problems[0]


def test_tarjan_is_iterative_and_finds_every_component():
    n = 5000  # far deeper than Python's default recursion limit
    graph = {f"n{i}": [f"n{i + 1}"] for i in range(n - 1)}
    graph[f"n{n - 1}"] = ["n0"]  # one big ring
    graph["x"] = ["y"]
    graph["y"] = ["x", "n0"]
    graph["z"] = ["x"]
    components = ca.strongly_connected_components(graph)
    assert sorted(map(len, components)) == [1, 2, n]
    assert ["x", "y"] in components and ["z"] in components


# --------------------------------------------------------------------------------------
# Module sizes


def test_over_long_module(tmp_path):
    root = make_package(
        tmp_path,
        {
            "long.py": "x = 1\n" * 11,
            "limit.py": "x = 1\n" * 10,
            "sub/longer.py": "x = 1\n" * 30,
        },
    )
    result = ca.check(root, max_lines=10)
    assert [(m.name, lines) for m, lines in result.oversized] == [
        ("pkg.sub.longer", 30),
        ("pkg.long", 11),
    ]
    assert result.cycles == []
    assert not result.ok
    report = result.report()
    assert "2 module(s) longer than 10 lines" in report
    assert "30 lines (20 over)" in report and "11 lines (1 over)" in report
    assert "limit.py" not in report.split("Rule 2")[1]
    assert ca.check(root, max_lines=30).ok


def test_command_line(tmp_path, capsys):
    good = make_package(tmp_path, {"a.py": "from . import b\n", "b.py": ""}, "good")
    assert ca.main(["--root", str(good)]) == 0
    assert capsys.readouterr().out == (
        "architecture check: 3 modules, 1 import edges, no cycles, "
        "largest module a.py (1 lines <= 900)\n"
    )
    assert ca.main(["--root", str(good), "-q"]) == 0
    assert capsys.readouterr().out == ""
    assert ca.main(["--root", str(good), "--graph", "-q"]) == 0
    assert "good.a -> good.b" in capsys.readouterr().out

    bad = make_package(tmp_path, {"a.py": "from . import b\n", "b.py": "import bad.a\n"}, "bad")
    assert ca.main(["--root", str(bad), "-q"]) == 1
    out = capsys.readouterr().out
    assert "architecture check FAILED" in out and "bad.a -> bad.b -> bad.a" in out
    assert ca.main(["--root", str(good), "--max-lines", "1", "-q"]) == 0
    with pytest.raises(SystemExit) as excinfo:
        ca.main(["--root", str(good), "--max-lines", "0"])
    assert excinfo.value.code == 2
    capsys.readouterr()

    assert ca.main(["--root", str(tmp_path / "missing")]) == 2
    assert "could not run" in capsys.readouterr().err


def test_script_runs_standalone(tmp_path):
    root = make_package(tmp_path, {"a.py": "x = 1\n"})
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("architecture check: 2 modules, 0 import edges")


# --------------------------------------------------------------------------------------
# The real package


def test_gmmfast_package_architecture():
    result = ca.check(PACKAGE)
    assert result.n_python_modules > 10  # the right folder was checked
    assert result.ok, "\n" + result.report()
