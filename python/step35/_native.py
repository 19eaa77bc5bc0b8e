"""Import of the native extension and its version check (no backends: see :mod:`step35._backends`)."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

from ._version import __version__
from .errors import BuildError

# The folder the package was imported from (symlinks not followed: lib/ and the
# extension sit beside the module as installed).
PACKAGE_DIR = Path(os.path.abspath(__file__)).parent
LIB_DIR = PACKAGE_DIR / "lib"


def import_core() -> ModuleType:
    """The ``step35._core`` extension as built, checked against the package version (no backends loaded)."""
    try:
        from . import _core as mod
    except ImportError as e:
        raise BuildError(
            f"step35's native extension could not be imported ({e}). "
            "If you are running from a source checkout, install the package "
            "(`pip install .`) and import it from outside the checkout; otherwise "
            "reinstall step35 (`pip install --force-reinstall step35`)."
        ) from e
    if mod.__version__ != __version__:
        raise BuildError(
            f"step35 {__version__} found a native extension built for {mod.__version__}: "
            "the installation is stale. Reinstall step35."
        )
    return mod
