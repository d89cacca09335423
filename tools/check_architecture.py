#!/usr/bin/env python3
"""Check two architecture rules of the gmmfast Python package.

Run it from anywhere (standard library only, nothing is imported from the package)::

    python3 tools/check_architecture.py                 # checks <repo>/python/gmmfast
    python3 tools/check_architecture.py --max-lines 1200
    python3 tools/check_architecture.py --graph         # also print every resolved import
    python3 tools/check_architecture.py --root some/other/package -q

Exit status: 0 when both rules hold, 1 when at least one is broken (the report says
which, where, and how to fix it), 2 when the check could not run (no such folder, a
file that does not parse).

Rule 1 - no import cycles
    No module may (directly or through other modules) import itself. Every ``import``
    statement in a file counts, wherever it is: at module level, inside a function, a
    method, a class body, an ``if`` or a ``try`` block. A function-level ("lazy") import
    only postpones the cycle to the first call; it does not remove the dependency, so it
    counts like any other.

    How imports are turned into edges of the module graph:

    * ``import gmmfast.torch as gt`` is an edge to ``gmmfast.torch``.
    * ``from P import name`` (P absolute, or relative: ``from . import x``,
      ``from .mod import y``, ``from ..streaming import z``) is an edge to ``P.name``
      when that is a module of the package (a ``.py`` file, a folder with an
      ``__init__.py``, or one of the compiled extension modules ``_core`` / ``_cuda``),
      and an edge to ``P`` itself otherwise: ``from . import __version__`` in
      ``gmmfast/io.py`` is the edge ``gmmfast.io -> gmmfast`` (``__version__`` lives in
      ``gmmfast/__init__.py``), while ``from . import _core`` is the edge
      ``gmmfast.io -> gmmfast._core``.
    * A package's ``__init__.py`` is the module named by the package: ``gmmfast``,
      ``gmmfast.torch``.
    * Importing a module also runs the ``__init__.py`` of every package that contains it.
      Those parent packages get an edge too (``from .torch import _ops`` in
      ``gmmfast/sources/tensor.py`` is an edge to ``gmmfast.torch._ops`` *and* to
      ``gmmfast.torch``) -- except the packages that contain the importing module
      itself. There is deliberately no edge from a submodule to its own parent packages
      (``gmmfast.torch.per_sample`` -> ``gmmfast.torch`` -> ``gmmfast``): Python does run
      the parents' ``__init__.py`` first when it imports a submodule, but counting that
      would make every package whose ``__init__.py`` imports one of its own submodules
      (``gmmfast/__init__.py`` imports ``.mixture``) cyclic. For the same reason
      ``from . import _core`` inside ``gmmfast/io.py`` has no edge to ``gmmfast``.
    * Imports under ``if TYPE_CHECKING:`` (or ``if typing.TYPE_CHECKING:``) do not count:
      that block never runs, it only feeds type checkers. Its ``else:`` branch counts.
    * Imports of anything outside the package (numpy, torch, ...) are ignored, and so are
      dynamic imports (``importlib.import_module("...")``, ``__import__``), which are not
      import statements.

    The cycles are found as the strongly connected components of the graph (Tarjan's
    algorithm, iterative): a component of more than one module, or a module importing
    itself, is a cycle group. For each group the report prints its modules, one concrete
    (shortest) cycle as a chain ``a -> b -> c -> a`` with the ``file:line`` of the import
    statement behind each arrow, and every import between modules of the group (all of
    them must be considered: removing one arrow of the shown cycle may leave another).

Rule 2 - module size limit
    No Python module of the package is longer than ``--max-lines`` lines (default 900).
    The report lists every offender with its line count.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

DEFAULT_MAX_LINES = 900

#: Compiled extension modules of the package (relative to the top-level package). They
#: exist only as built .so files, which may be missing in a source checkout, so they are
#: always known to be modules; any other compiled module found in the tree is added too.
EXTENSION_MODULES = ("_core", "_cuda")

_EXTENSION_SUFFIXES = (".so", ".pyd")


class Module:
    """One module of the package: its dotted name and (for Python modules) its file."""

    __slots__ = ("name", "path", "is_package", "lines")

    def __init__(self, name: str, path: Path | None, is_package: bool = False):
        self.name = name
        self.path = path  # None for a compiled extension module
        self.is_package = is_package  # True for a package's __init__.py
        self.lines = 0

    @property
    def is_extension(self) -> bool:
        return self.path is None

    def __repr__(self) -> str:
        return f"Module({self.name!r}, {self.path!r})"


class ImportSite:
    """Where an import statement is: the file and its 1-based line."""

    __slots__ = ("path", "line")

    def __init__(self, path: Path, line: int):
        self.path = path
        self.line = line

    def __repr__(self) -> str:
        return f"{self.path}:{self.line}"

    def __lt__(self, other: ImportSite) -> bool:
        return (str(self.path), self.line) < (str(other.path), other.line)


class Cycle:
    """One group of mutually importing modules (a strongly connected component)."""

    def __init__(self, members: list, chain: list, edges: dict):
        self.members = members  # sorted module names of the component
        self.chain = chain  # a concrete cycle: [a, b, ..., a]
        self.edges = edges  # {(src, dst): [ImportSite, ...]} for every edge inside it

    def __repr__(self) -> str:
        return "Cycle(" + " -> ".join(self.chain) + ")"


class CheckError(Exception):
    """The check could not run (missing folder, file that does not parse)."""


# --------------------------------------------------------------------------------------
# Finding the modules


def find_modules(root, extension_modules=EXTENSION_MODULES) -> dict:
    """Map each dotted module name of the package at ``root`` to its :class:`Module`.

    ``root`` is the top-level package folder; its name is the package name. Python
    modules have their line count filled in. ``extension_modules`` are names relative to
    the package (``"_core"`` means ``<package>._core``) that count as modules even when
    no built file is present.
    """
    root = Path(root)
    if not root.is_dir():
        raise CheckError(f"{root} is not a folder")
    if not (root / "__init__.py").is_file():
        raise CheckError(f"{root} has no __init__.py, so it is not a Python package")
    package = root.name
    modules = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts or not path.is_file():
            continue
        if path.suffix == ".py":
            parts = list(rel.with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join([package, *parts])
            module = Module(name, path, is_package)
            module.lines = _count_lines(path)
            modules[name] = module
        elif path.suffix in _EXTENSION_SUFFIXES:
            # _core.cpython-311-x86_64-linux-gnu.so -> _core
            parts = [*rel.parent.parts, path.name.split(".")[0]]
            name = ".".join([package, *parts])
            modules.setdefault(name, Module(name, None))
    for ext in extension_modules:
        name = f"{package}.{ext}"
        modules.setdefault(name, Module(name, None))
    return modules


def _count_lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8", errors="replace").splitlines())


# --------------------------------------------------------------------------------------
# Resolving the imports to edges


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``<anything>.TYPE_CHECKING`` (typing.TYPE_CHECKING)."""
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    if isinstance(test, ast.Attribute):
        return test.attr == "TYPE_CHECKING"
    return False


def _import_statements(tree: ast.AST):
    """Every Import / ImportFrom node of the tree, except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)  # the else branch does run
            continue
        stack.extend(ast.iter_child_nodes(node))


def _parents(name: str) -> list:
    """``a.b.c`` -> ``["a", "a.b"]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _importer_packages(module: Module) -> set:
    """The packages that contain ``module`` (itself too, if it is a package)."""
    own = set(_parents(module.name))
    if module.is_package:
        own.add(module.name)
    return own


def resolve_import(node: ast.AST, module: Module, modules: dict, package: str):
    """The in-package module names that one import statement makes ``module`` depend on.

    Returns ``(targets, problem)``: ``targets`` a sorted list of module names (empty for
    imports of other packages), ``problem`` a message when a relative import goes above
    the top-level package (else None).
    """

    def in_package(name: str) -> bool:
        return name == package or name.startswith(package + ".")

    targets = set()
    if isinstance(node, ast.Import):
        # import a.b.c [as x]: the module a.b.c
        for alias in node.names:
            if in_package(alias.name):
                targets.add(_known_prefix(alias.name, modules))
    else:
        # from P import name: P.name when that is a module, else P (name is defined in
        # P's code: a function, a class, __version__, or '*')
        if node.level:
            base = module.name if module.is_package else module.name.rpartition(".")[0]
            parts = base.split(".")
            if node.level - 1 >= len(parts):
                dots = "." * node.level
                return [], (
                    f"'from {dots}{node.module or ''} import ...' goes above the "
                    f"top-level package {package!r}"
                )
            parts = parts[: len(parts) - (node.level - 1)]
            if node.module:
                parts.extend(node.module.split("."))
            source = ".".join(parts)
        else:
            source = node.module or ""
        if not in_package(source):
            return [], None
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if alias.name != "*" and submodule in modules:
                targets.add(submodule)
            else:
                targets.add(_known_prefix(source, modules))
    # Importing a module runs the __init__ of the packages that contain it: an edge to
    # each of them, except the packages that contain the importer (see the docstring).
    own = _importer_packages(module)
    for target in list(targets):
        targets.update(p for p in _parents(target) if p not in own and p in modules)
    targets.discard(None)
    return sorted(targets), None


def _known_prefix(name: str, modules: dict):
    """``name`` if it is a module, else its longest prefix that is (None if none is)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_edges(modules: dict, package: str):
    """All import edges between modules of the package.

    Returns ``(edges, problems)``: ``edges`` maps ``(importer, imported)`` to the sorted
    list of :class:`ImportSite` that create the edge; ``problems`` lists messages about
    relative imports that go above the package.
    """
    edges = {}
    problems = []
    for module in modules.values():
        if module.is_extension:
            continue
        source = module.path.read_text(encoding="utf-8")
        try:
            tree = ast.parse(source, filename=str(module.path))
        except SyntaxError as exc:
            raise CheckError(f"{module.path}:{exc.lineno}: cannot parse: {exc.msg}") from exc
        for node in _import_statements(tree):
            targets, problem = resolve_import(node, module, modules, package)
            site = ImportSite(module.path, node.lineno)
            if problem:
                problems.append(f"{_show(site)}: {problem}")
            for target in targets:
                edges.setdefault((module.name, target), []).append(site)
    for sites in edges.values():
        sites.sort()
    return edges, problems


# --------------------------------------------------------------------------------------
# Cycles


def strongly_connected_components(graph: dict) -> list:
    """Tarjan's algorithm, iterative (no recursion limit to hit).

    ``graph`` maps a node to its successors; a node only mentioned as a successor is a
    node too. Returns every component as a sorted list, in an order where a component
    comes before the components that depend on it.
    """
    nodes = sorted(set(graph) | {w for succ in graph.values() for w in succ})
    index = {}
    low = {}
    on_stack = set()
    stack = []
    components = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        work = [(start, iter(sorted(graph.get(start, ()))))]
        while work:
            v, successors = work[-1]
            descended = False
            for w in successors:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    descended = True
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            if descended:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                components.append(sorted(component))
    return components


def _shortest_cycle(graph: dict, members: set) -> list:
    """The shortest cycle inside ``members`` (ties: alphabetical), as [a, ..., a]."""
    best = None
    for start in sorted(members):
        # breadth-first search from start back to start, staying inside the component
        previous = {start: None}
        frontier = [start]
        found = None
        while frontier and found is None:
            following = []
            for v in frontier:
                for w in sorted(graph.get(v, ())):
                    if w == start:
                        found = v
                        break
                    if w in members and w not in previous:
                        previous[w] = v
                        following.append(w)
                if found is not None:
                    break
            frontier = following
        if found is None:
            continue
        path = [start]
        v = found
        while v is not None and v != start:
            path.append(v)
            v = previous[v]
        chain = [start, *reversed(path[1:]), start]
        if best is None or len(chain) < len(best):
            best = chain
    return best


def find_cycles(edges: dict) -> list:
    """Every import cycle group of the edge map, as :class:`Cycle` objects."""
    graph = {}
    for src, dst in edges:
        graph.setdefault(src, set()).add(dst)
    cycles = []
    for component in strongly_connected_components(graph):
        members = set(component)
        if len(component) == 1 and component[0] not in graph.get(component[0], ()):
            continue  # a lone module that does not import itself
        chain = _shortest_cycle(graph, members)
        inner = {
            (src, dst): sites
            for (src, dst), sites in sorted(edges.items())
            if src in members and dst in members
        }
        cycles.append(Cycle(component, chain, inner))
    cycles.sort(key=lambda c: c.members)
    return cycles


# --------------------------------------------------------------------------------------
# Module sizes


def oversized_modules(modules: dict, max_lines: int) -> list:
    """``[(module, lines)]`` of the Python modules longer than ``max_lines``, longest first."""
    found = [
        (m, m.lines) for m in modules.values() if not m.is_extension and m.lines > max_lines
    ]
    found.sort(key=lambda item: (-item[1], item[0].name))
    return found


def largest_module(modules: dict):
    python = [m for m in modules.values() if not m.is_extension]
    return max(python, key=lambda m: (m.lines, m.name)) if python else None


# --------------------------------------------------------------------------------------
# The whole check and its report


class Result:
    """Everything :func:`check` found; :meth:`report` turns it into text."""

    def __init__(self, root, modules, edges, problems, cycles, oversized, max_lines):
        self.root = root
        self.modules = modules
        self.edges = edges
        self.problems = problems
        self.cycles = cycles
        self.oversized = oversized
        self.max_lines = max_lines

    @property
    def ok(self) -> bool:
        return not self.cycles and not self.oversized

    @property
    def n_python_modules(self) -> int:
        return sum(1 for m in self.modules.values() if not m.is_extension)

    def summary(self) -> str:
        largest = largest_module(self.modules)
        text = (
            f"{self.n_python_modules} modules, {len(self.edges)} import edges, "
            + (f"{len(self.cycles)} import cycle group(s)" if self.cycles else "no cycles")
        )
        if largest is not None:
            relation = "<=" if largest.lines <= self.max_lines else ">"
            text += (
                f", largest module {_relative(largest.path, self.root)} "
                f"({largest.lines} lines {relation} {self.max_lines})"
            )
        return text

    def graph_text(self) -> str:
        lines = [f"import edges ({len(self.edges)}), importer -> imported:"]
        for (src, dst), sites in sorted(self.edges.items()):
            lines.append(f"  {src} -> {dst}    [{_show_sites(sites)}]")
        return "\n".join(lines)

    def report(self) -> str:
        if self.ok:
            out = [f"architecture check: {self.summary()}"]
            out += [f"warning: {p}" for p in self.problems]
            return "\n".join(out)
        out = [f"architecture check FAILED: {self.summary()}", ""]
        if self.cycles:
            out += self._cycles_text()
        if self.oversized:
            out += self._sizes_text()
        for problem in self.problems:
            out.append(f"warning: {problem}")
        return "\n".join(out).rstrip() + "\n"

    def _cycles_text(self) -> list:
        out = [
            f"Rule 1 broken: {len(self.cycles)} group(s) of modules import each other "
            "in a loop.",
            "  Every import counts, including the ones inside functions: a lazy import",
            "  only delays the loop to the first call. To fix a group, make the imports",
            "  go one way: move the shared code into a lower-level module that both",
            "  import, or pass the object in as an argument instead of importing it.",
            "",
        ]
        for number, cycle in enumerate(self.cycles, 1):
            out.append(
                f"  Cycle group {number}: {len(cycle.members)} module(s): "
                + ", ".join(cycle.members)
            )
            out.append("    one cycle: " + " -> ".join(cycle.chain))
            width = max(len(f"{a} -> {b}") for a, b in zip(cycle.chain, cycle.chain[1:]))
            for src, dst in zip(cycle.chain, cycle.chain[1:]):
                where = _show_sites(cycle.edges[(src, dst)])
                out.append(f"      {f'{src} -> {dst}':<{width}}  {where}")
            chain_edges = set(zip(cycle.chain, cycle.chain[1:]))
            others = [e for e in cycle.edges if e not in chain_edges]
            if others:
                out.append(
                    "    other imports inside this group (each one lies on a loop too, "
                    "so breaking the cycle above may not be enough):"
                )
                width = max(len(f"{a} -> {b}") for a, b in others)
                for src, dst in others:
                    where = _show_sites(cycle.edges[(src, dst)])
                    out.append(f"      {f'{src} -> {dst}':<{width}}  {where}")
            out.append("")
        return out

    def _sizes_text(self) -> list:
        out = [
            f"Rule 2 broken: {len(self.oversized)} module(s) longer than "
            f"{self.max_lines} lines (--max-lines).",
            "  Split them into smaller modules along their natural seams.",
        ]
        width = max(len(_show_path(m.path)) for m, _ in self.oversized)
        for module, lines in self.oversized:
            out.append(
                f"    {_show_path(module.path):<{width}}  {lines:>5} lines "
                f"({lines - self.max_lines} over)"
            )
        out.append("")
        return out


def check(root, max_lines: int = DEFAULT_MAX_LINES, extension_modules=EXTENSION_MODULES):
    """Run both rules on the package folder ``root``; returns a :class:`Result`."""
    root = Path(root)
    modules = find_modules(root, extension_modules)
    edges, problems = import_edges(modules, root.name)
    cycles = find_cycles(edges)
    oversized = oversized_modules(modules, max_lines)
    return Result(root, modules, edges, problems, cycles, oversized, max_lines)


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _show_path(path: Path) -> str:
    """The path relative to the current folder when it is under it (clickable)."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def _show(site: ImportSite) -> str:
    return f"{_show_path(site.path)}:{site.line}"


def _show_sites(sites: list) -> str:
    """``a.py:1, 5, 9; b.py:3`` -- the sites grouped by file."""
    by_file = {}
    for site in sites:
        by_file.setdefault(_show_path(site.path), []).append(str(site.line))
    return "; ".join(f"{path}:{', '.join(lines)}" for path, lines in by_file.items())


def default_root() -> Path:
    """<repo>/python/gmmfast, the repository being the folder above tools/."""
    return Path(__file__).resolve().parent.parent / "python" / "gmmfast"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=(
            "Check that the gmmfast package has no import cycles (imports inside "
            "functions included) and no module longer than --max-lines lines."
        ),
        epilog="Exit status: 0 ok, 1 a rule is broken, 2 the check could not run.",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="the package folder to check (default: <repo>/python/gmmfast next to tools/)",
    )
    parser.add_argument(
        "--max-lines",
        type=int,
        default=DEFAULT_MAX_LINES,
        metavar="N",
        help=f"longest allowed module, in lines (default {DEFAULT_MAX_LINES})",
    )
    parser.add_argument(
        "--graph", action="store_true", help="also print every resolved import edge"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing when the check passes"
    )
    args = parser.parse_args(argv)
    if args.max_lines < 1:
        parser.error("--max-lines must be at least 1")
    root = args.root if args.root is not None else default_root()
    try:
        result = check(root, args.max_lines)
    except CheckError as exc:
        print(f"architecture check could not run: {exc}", file=sys.stderr)
        return 2
    if args.graph:
        print(result.graph_text())
        print()
    if result.ok:
        if not args.quiet:
            print(result.report())
        return 0
    print(result.report(), end="")
    return 1


if __name__ == "__main__":
    sys.exit(main())
