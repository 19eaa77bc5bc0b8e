"""Shared fixtures: the installed step35 package and tiny models built once per session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


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
