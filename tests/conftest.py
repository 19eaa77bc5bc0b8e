"""Shared fixtures: the installed step35 package and tiny models built once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# ---- the source tree --------------------------------------------------------
# The tests normally run from a checkout (tests/ inside the repository). The
# wheel matrix runs them elsewhere too: cibuildwheel installs the wheel into a
# clean venv and copies only its `test-sources` (tests/ and pyproject.toml,
# pyproject.toml [tool.cibuildwheel]) into an empty directory
# (https://cibuildwheel.pypa.io/en/stable/options/#test-sources);
# scripts/cibw_replica.py does the same here. There REPO is that directory,
# with no llama.cpp/, fuzz/ or scripts/ beside tests/. This is the one place
# that decides whether a file of the source tree is here: a test that needs one
# calls source_file() (a skip with the reason when absent, never a collection
# error); what the installed wheel ships (the chat template, the vocabulary)
# comes from the package instead (step35._runtime.data).

#: Why a file of the source tree may be missing (the skip reason's tail).
NO_SOURCE_TREE = ("absent here: the tests run outside a source checkout (cibuildwheel copies only "
                  "tests/ and pyproject.toml into an empty directory; scripts/cibw_replica.py does the same)")


def in_source_tree(relpath: str) -> Path | None:
    """``REPO / relpath`` when the tests run from a checkout that has it, else None."""
    path = REPO / relpath
    return path if path.exists() else None


def source_file(relpath: str, why: str) -> Path:
    """``REPO / relpath``, or skip the calling module (at import) or test: ``why`` says what needs it."""
    path = in_source_tree(relpath)
    if path is None:
        pytest.skip(f"needs {relpath} from the source tree ({why}); {NO_SOURCE_TREE}", allow_module_level=True)
    return path


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private model cache so tests never depend on (or pollute) the user's."""
    d = tmp_path_factory.mktemp("step35-cache")
    os.environ["STEP35_CACHE"] = str(d)
    return d


@pytest.fixture(scope="session")
def tiny_path(model_cache: Path) -> Path:
    """The built-in tiny Step 3.5 model (built once per session)."""
    from step35 import testing

    return testing.model_path("tiny")


@pytest.fixture(scope="session")
def tiny_model(tiny_path: Path):
    """The tiny model, loaded once per session (read-only use only)."""
    import step35

    with step35.Model(tiny_path) as m:
        yield m


@pytest.fixture(scope="session")
def tiny_split(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> list[Path]:
    """The tiny model written as a 3-part split set."""
    from step35 import testing

    d = tmp_path_factory.mktemp("split")
    return testing.build_model(d / "tiny.gguf", "tiny", n_split=3)


def have_git_checkout() -> bool:
    return (REPO / ".git").exists() and shutil.which("git") is not None


@pytest.fixture(scope="session")
def tiny32_path(model_cache: Path) -> Path:
    """The tiny model in F32 with 32-wide heads: exact enough for greedy-equality
    checks across kernels, and head sizes the quantized KV-cache types accept."""
    import dataclasses

    from step35 import testing

    spec = dataclasses.replace(testing.SIZES["tiny"], name="tiny32", dtype="f32", embd_dtype="f32", head_dim=32)
    return testing.model_path(spec)
