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
    from importlib import import_module
    from importlib.metadata import version

    # imported here: the test must not depend on an earlier test having loaded the extension
    assert version("step35") == step35.__version__ == import_module("step35._core").__version__


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


def test_every_native_error_kind_raises_its_own_class(tiny_path: Path) -> None:
    """The native layer exports its error kinds; each one raises the step35.errors class of
    that name (registered at import), never a generic RuntimeError."""
    from step35 import errors
    from step35._runtime.backends import core

    c = core()
    kinds = c.ErrorKind.__members__
    assert "ContextOverflowError" in kinds and "GrammarError" in kinds
    for name in kinds:
        cls = getattr(errors, name)
        assert issubclass(cls, Exception), name
    # one raised through the translator: a grammar llama.cpp cannot parse
    with step35.Model(tiny_path, vocab_only=True) as m:
        try:
            c.Constraint(m._handle, "root ::= (")
        except errors.GrammarError as e:
            assert type(e) is errors.GrammarError and "grammar" in str(e).lower()
        else:
            raise AssertionError("an unparsable grammar was accepted")


def test_settings_names_match_the_native_enums() -> None:
    """ContextParams' names for the flash-attention setting and the KV-cache types are the native
    enums' names, and the ggml ids step35.tools.fit plans with are the ones the native layer uses."""
    from step35._runtime.backends import core
    from step35.context import FLASH_ATTN, KV_TYPES

    c = core()
    assert set(FLASH_ATTN) == set(c.FlashAttn.__members__)
    assert {name: int(kind.value) for name, kind in c.KVType.__members__.items()} == KV_TYPES
    assert set(c.Outputs.__members__) == {"all", "last", "none"}
