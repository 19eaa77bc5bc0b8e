"""Import of the native extension, version check, and one-time backend setup."""

from __future__ import annotations

import threading
from pathlib import Path
from types import ModuleType

from .errors import BuildError

PACKAGE_DIR = Path(__file__).resolve().parent
LIB_DIR = PACKAGE_DIR / "lib"

_lock = threading.Lock()
_core: ModuleType | None = None


def core() -> ModuleType:
    """The ``step35._core`` extension, with backends loaded (once, thread-safe)."""
    global _core
    if _core is not None:
        return _core
    from . import _backends

    with _lock:
        if _core is not None:
            return _core
        mod = _import_core()
        _backends.initialize(mod)
        _core = mod
    # Outside the lock and after setup: a warning turned into an error cannot
    # leave the backends half-initialized.
    _backends.warn_failures()
    return _core


def _import_core() -> ModuleType:
    from . import __version__

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
