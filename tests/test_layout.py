"""The package's shape: library below application, no import circle (lazy imports included),
method names only in the registry, doctests run, no module over 400 lines."""

from __future__ import annotations

import ast
import doctest
from pathlib import Path

import oes_mri
from oes_mri import defaults
from oes_mri.app import chain
from oes_mri.methods import METHODS

PKG = Path(oes_mri.__file__).parent


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """``oes_mri`` modules ``path`` imports anywhere: at module level, inside functions (lazy)
    and under TYPE_CHECKING alike; relative imports resolved."""
    out, here = set(), _module(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base.startswith("oes_mri"):
                out.add(base)
                out.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("oes_mri"))
    return out


def _graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (a package's ``__init__`` counts for its name)."""
    graph = {_module(p): _imports(p) for p in PKG.rglob("*.py")}
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_library_below_application():
    """Nothing outside ``oes_mri/app/`` imports from it, but the CLI entry ``oes_mri.recon``."""
    for m, deps in _graph().items():
        if m.startswith("oes_mri.app") or m == "oes_mri.recon":
            continue
        up = sorted(d for d in deps if d == "oes_mri.app" or d.startswith("oes_mri.app."))
        assert not up, f"{m} (library) imports the application: {up}"


def test_tests_are_laid_out_like_the_package():
    """Each folder of ``tests/`` mirrors a package of ``oes_mri`` (``fixtures`` holds data)."""
    tests = Path(__file__).parent
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))} - {"fixtures"}
    packages = {p.parent.name for p in PKG.glob("*/__init__.py")}
    assert folders and folders <= packages, folders - packages
    for f in folders:
        assert (tests / f / "__init__.py").exists() and list((tests / f).glob("test_*.py")), f


def test_modules_are_short():
    for path in PKG.rglob("*.py"):
        n = len(path.read_text().splitlines())
        assert n <= 400, f"{path.relative_to(PKG.parent)}: {n} lines (split it: one job a module)"


def test_no_import_circle():
    graph = {m: {d for d in deps if not m.startswith(d + ".") and d != "oes_mri"} for m, deps in _graph().items()}
    graph = {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}
    graph = {m: {d for d in deps if not m.startswith(d + ".") and d != "oes_mri"} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            assert state.get(d) != 1, "import circle: " + " -> ".join(path + [m, d])
            if d not in state:
                visit(d, path + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_method_names_only_in_the_registry():
    """No ``x == "oes"`` (or any method name) outside :mod:`oes_mri.methods`: a method's
    capabilities are its attributes. (The pruning package dispatches on pruning kinds, which
    share the names "oes", "random", ...: a setting's values, not methods.)"""
    for path in PKG.rglob("*.py"):
        if path.parent.name in ("methods", "pruning"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                consts = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                consts += [e.value for c in node.comparators if isinstance(c, (ast.Tuple, ast.List, ast.Set))
                           for e in c.elts if isinstance(e, ast.Constant)]
                named = [c for c in consts if c in METHODS]
                assert not named, f"{path.name}:{node.lineno} compares with method name(s) {named}"


def test_chain_doctests():
    assert doctest.testmod(chain).failed == 0
    assert doctest.testmod(defaults).failed == 0
