"""Import of the native extension and its version check (no backends: see :mod:`step35._runtime.backends`)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from .. import errors
from .._version import __version__
from ..errors import BuildError

# The folder the package was imported from (symlinks not followed: lib/ and the
# extension sit in step35/ as installed, one folder above this module).
PACKAGE_DIR = Path(os.path.abspath(__file__)).parent.parent
LIB_DIR = PACKAGE_DIR / "lib"

# Handles from os.add_dll_directory, kept for the life of the process: a handle
# that is closed (or garbage-collected) takes its folder off the search path.
_dll_directories: list[Any] = []


def add_dll_directory(folder: Path | str) -> bool:
    """Windows: put ``folder`` on the DLL search path of this process (once); elsewhere a no-op.

    Python 3.8+ loads an extension's dependent DLLs from the system folders, the
    extension's own folder and folders added with ``os.add_dll_directory`` only,
    not from ``PATH`` (https://docs.python.org/3/library/os.html#os.add_dll_directory).
    Returns whether the folder was added now.
    """
    if sys.platform != "win32" or not hasattr(os, "add_dll_directory"):
        return False
    folder = os.path.abspath(str(folder))
    if not os.path.isdir(folder) or any(getattr(h, "path", None) == folder for h in _dll_directories):
        return False
    _dll_directories.append(os.add_dll_directory(folder))
    return True


# At import of the package (step35/__init__ imports this module), so that even a
# direct ``import step35._core`` finds step35\lib.
add_dll_directory(LIB_DIR)


def import_core() -> ModuleType:
    """The ``step35._core`` extension as built, checked against the package version (no backends loaded)."""
    # Windows: _core.pyd sits in step35\ and llama.dll, ggml*.dll beside their CPU
    # variants in step35\lib, which the loader does not search by itself.
    add_dll_directory(LIB_DIR)
    try:
        from .. import _core as mod
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
    _register_errors(mod)
    return mod


def _register_errors(mod: ModuleType) -> None:
    """Give the native layer the class of each of its error kinds (step35.errors has one per name)."""
    missing = [name for name in mod.ErrorKind.__members__ if not hasattr(errors, name)]
    if missing:  # a build whose kinds step35.errors does not know: stale, as above
        raise BuildError(f"the native extension raises {', '.join(missing)}, which step35.errors does not define: "
                         "the installation is stale. Reinstall step35.")
    mod.register_error_classes({kind: getattr(errors, name) for name, kind in mod.ErrorKind.__members__.items()})
