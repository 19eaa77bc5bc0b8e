"""The installed package: importable on its own, versioned, typed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import step35
from conftest import REPO


def test_imports_from_the_installed_wheel_not_the_checkout() -> None:
    pkg = Path(step35.__file__).resolve().parent
    assert REPO / "python" not in pkg.parents and pkg != REPO / "python" / "step35"
    assert "site-packages" in pkg.parts


def test_import_outside_the_repo_in_a_fresh_interpreter(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", "import step35, step35._core as c; print(step35.__version__, c.__version__)"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    assert r.stdout.split() == [step35.__version__, step35.__version__]


def test_version_is_single_sourced() -> None:
    from importlib.metadata import version

    assert version("step35") == step35.__version__ == step35._core.__version__


def test_typed() -> None:
    pkg = Path(step35.__file__).parent
    assert (pkg / "py.typed").exists()
    assert (pkg / "_core.pyi").exists()


def test_libraries_ship_next_to_the_extension() -> None:
    lib = Path(step35.__file__).parent / "lib"
    names = {p.name for p in lib.iterdir()}
    assert any(n.startswith("libllama") or n.startswith("llama") for n in names)
    assert any("ggml-cpu" in n for n in names)


def test_public_names_have_docstrings() -> None:
    for name in step35.__all__:
        if name in ("__version__", "testing"):
            continue
        obj = getattr(step35, name)
        assert obj.__doc__, name
    for name in dir(step35.Model):
        if not name.startswith("_"):
            assert getattr(step35.Model, name).__doc__, f"Model.{name}"
