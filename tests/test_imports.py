"""The package's modules import downward only: no module imports one that imports it back.

Every import counts, at module level or inside a function (a lazy import is
still an import), relative (``from .x import y``) or absolute (``step35.x``);
only ``if TYPE_CHECKING:`` blocks, which never run, are left out. Importing the
package root (``from . import __version__``) is an import of ``step35``, whose
``__init__`` imports the public modules, so the root counts like any module.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

PKG = "step35"


def _package_dir() -> Path:
    spec = importlib.util.find_spec(PKG)  # locates the installed package without importing it
    assert spec is not None and spec.submodule_search_locations, "step35 is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


def _modules(root: Path) -> dict[str, Path | None]:
    """Every module of the package: its source, or None for a native extension (``_core``, a leaf)."""
    out: dict[str, Path | None] = {PKG: root / "__init__.py"}
    for p in sorted(root.iterdir()):
        if p.suffix in (".so", ".pyd", ".pyi"):
            out.setdefault(f"{PKG}.{p.name.split('.')[0]}", None)
    for p in sorted(root.glob("*.py")):
        if p.name != "__init__.py":
            out[f"{PKG}.{p.stem}"] = p
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import/ImportFrom node, skipping the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str, known: dict[str, Path | None]) -> str | None:
    """The deepest package module ``name`` lies in (``step35.x.y`` -> ``step35.x``)."""
    parts = name.split(".")
    if parts[0] != PKG:
        return None
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts) if parts else None


def _targets(node: ast.Import | ast.ImportFrom, known: dict[str, Path | None]) -> set[str]:
    """The package modules one import statement imports."""
    if isinstance(node, ast.Import):
        found = {_resolve(a.name, known) for a in node.names}
    else:
        if node.level > 1:  # every module here sits directly in step35/
            return set()
        mod = (PKG + (f".{node.module}" if node.module else "")) if node.level else (node.module or "")
        # `from M import a`: the submodule M.a when there is one, else a name defined in M
        found = {f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else _resolve(mod, known) for a in node.names}
    return {m for m in found if m}


def import_graph(root: Path | None = None) -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in it)."""
    mods = _modules(root or _package_dir())
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        if path is None:
            graph[name] = set()
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        deps: set[str] = set()
        for node in _import_nodes(tree):
            deps |= _targets(node, mods)
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _a_cycle(graph: dict[str, set[str]], comp: list[str]) -> list[str]:
    """One concrete cycle inside a component, as a path a -> b -> ... -> a."""
    members = set(comp)
    start = comp[0]
    prev: dict[str, str] = {}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, v, start]
            if w not in prev:
                prev[w] = v
                todo.append(w)
    return comp


def test_the_graph_sees_lazy_relative_and_absolute_imports(tmp_path):
    pkg = tmp_path / PKG
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n    return g\n")  # lazy, relative
    (pkg / "b.py").write_text("import step35.a\n\ng = 1\n")  # absolute
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import f\n")
    (pkg / "d.py").write_text("from . import __version__\n")  # the package root
    graph = import_graph(pkg)
    assert graph == {PKG: {f"{PKG}.a"}, f"{PKG}.a": {f"{PKG}.b"}, f"{PKG}.b": {f"{PKG}.a"}, f"{PKG}.c": set(),
                     f"{PKG}.d": {PKG}}
    assert cycles(graph) == [[f"{PKG}.a", f"{PKG}.b"]]
    assert _a_cycle(graph, [f"{PKG}.a", f"{PKG}.b"]) == [f"{PKG}.a", f"{PKG}.b", f"{PKG}.a"]


def test_no_import_cycles():
    graph = import_graph()
    found = cycles(graph)
    assert not found, "import cycles (each module imports another that imports it back):\n" + "\n".join(
        "  " + " -> ".join(_a_cycle(graph, c)) + f"   (component: {', '.join(c)})" for c in found)
