"""The package's modules import downward only: no module imports one that imports it back.

Every import counts, at module level or inside a function (a lazy import is
still an import), relative (``from .x import y``) or absolute (``step35.x``);
only ``if TYPE_CHECKING:`` blocks, which never run, are left out. Importing the
package root (``from . import __version__``) is an import of ``step35``, whose
``__init__`` imports the public modules, so the root counts like any module.
"""

from __future__ import annotations

import ast
import fnmatch
import importlib.util
from pathlib import Path

PKG = "step35"


def _package_dir() -> Path:
    spec = importlib.util.find_spec(PKG)  # locates the installed package without importing it
    assert spec is not None and spec.submodule_search_locations, "step35 is not installed"
    return Path(next(iter(spec.submodule_search_locations)))


def _modules(root: Path) -> dict[str, Path | None]:
    """Every module of the package and its subpackages: its source, or None for a native extension
    (``_core``, a leaf)."""
    out: dict[str, Path | None] = {}
    for p in sorted(root.rglob("*")):
        if "__pycache__" in p.parts or not p.is_file() or not (p.parent / "__init__.py").is_file():
            continue  # (lib/ holds shared libraries, not modules)
        parts = (PKG, *p.relative_to(root).parent.parts)
        if p.suffix in (".so", ".pyd", ".pyi"):
            out.setdefault(".".join((*parts, p.name.split(".")[0])), None)
        elif p.suffix == ".py":
            out[".".join(parts if p.name == "__init__.py" else (*parts, p.stem))] = p
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


def _parents(name: str, known: dict[str, Path | None]) -> set[str]:
    """The subpackages an import of ``name`` runs first (``step35.a.b`` -> ``step35.a``); the root, which
    every module needs, is an edge only where it is imported itself."""
    parts = name.split(".")
    return {p for p in (".".join(parts[:i]) for i in range(2, len(parts))) if p in known}


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             known: dict[str, Path | None]) -> set[str]:
    """The package modules one import statement in ``module`` imports."""
    if isinstance(node, ast.Import):
        found = {_resolve(a.name, known) for a in node.names}
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        # `from M import a`: the submodule M.a when there is one, else a name defined in M
        found = {f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else _resolve(mod, known) for a in node.names}
    found = {m for m in found if m}
    return found.union(*(_parents(m, known) for m in found))


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
            deps |= _targets(node, name, path.name == "__init__.py", mods)
        # a module's own packages are loaded before it, and sibling imports do not run them again
        graph[name] = {d for d in deps if d != name and (d == PKG or not name.startswith(d + "."))}
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


#: The package's layers, lowest first: a module imports only modules of its own layer or of layers
#: below (``fnmatch`` patterns; the first that matches places a module). A new module needs a place here.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base: version, errors, the extension", ("step35._version", "step35.errors", "step35._core")),
    ("runtime", ("step35._runtime", "step35._runtime.*")),
    ("file and text formats", ("step35.gguf", "step35.gguf.*", "step35.chat", "step35.chat.template",
                               "step35.chat.toolcalls")),
    ("generation and contexts", ("step35.generation", "step35.generation.*", "step35.context")),
    ("tools the model uses", ("step35.tools", "step35.tools.hub", "step35.tools.rpc", "step35.tools.presets",
                              "step35.tools.quantize", "step35.tools.fit")),
    ("chat responses, prepared requests", ("step35.chat.openai", "step35.requests")),
    ("engine", ("step35.engine",)),
    ("model", ("step35.model",)),
    ("applications", ("step35", "step35.__main__", "step35.tools.bench", "step35.cli", "step35.cli.*",
                      "step35.serving", "step35.serving.*", "step35.testing", "step35.testing.*")),
]


def _layer(module: str) -> int | None:
    return next((i for i, (_, pats) in enumerate(LAYERS) if any(fnmatch.fnmatchcase(module, p) for p in pats)),
                None)


def test_every_module_has_a_layer():
    unplaced = sorted(m for m in import_graph() if _layer(m) is None)
    assert not unplaced, f"modules with no layer in LAYERS: {unplaced}"


def test_imports_only_go_down_the_layers():
    graph = import_graph()
    upward = [f"{m} ({LAYERS[_layer(m)][0]}) imports {d} ({LAYERS[_layer(d)][0]})"
              for m in sorted(graph) for d in sorted(graph[m])
              if _layer(m) is not None and _layer(d) is not None and _layer(d) > _layer(m)]
    assert not upward, "imports that go up a layer:\n  " + "\n  ".join(upward)


def test_the_layer_check_sees_an_upward_import(tmp_path):
    pkg = tmp_path / PKG
    (pkg / "gguf").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "gguf" / "__init__.py").write_text("")
    (pkg / "gguf" / "reader.py").write_text("def f():\n    from ..model import Model\n")  # lazy, two levels up
    (pkg / "model.py").write_text("from .gguf.reader import f\n")
    graph = import_graph(pkg)
    assert graph[f"{PKG}.gguf.reader"] == {f"{PKG}.model"}
    assert graph[f"{PKG}.model"] == {f"{PKG}.gguf", f"{PKG}.gguf.reader"}  # the subpackage's __init__ runs too
    assert _layer(f"{PKG}.model") > _layer(f"{PKG}.gguf.reader")
    assert cycles(graph) == [[f"{PKG}.gguf.reader", f"{PKG}.model"]]


def test_public_modules_keep_the_names_users_import_them_by():
    import importlib
    import subprocess
    import sys

    import step35

    for name, home in step35.MODULE_HOMES.items():
        module = importlib.import_module(f"{PKG}.{name}")
        assert module is importlib.import_module(home) is getattr(step35, name)
        assert module.__spec__.name == home and module.__package__ == home.rpartition(".")[0]  # relative imports work
    assert callable(step35.quantize)  # the function, not the module of that name
    code = ("import step35.fit, step35.tools.fit as home; from step35.hub import resolve_model; "
            "from step35 import rpc, presets, mtp, plugins, testing; "
            "assert step35.fit is home and callable(resolve_model) and testing.model_path and plugins.install_hint")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
