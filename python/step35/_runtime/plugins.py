"""What backend plugin wheels call to hand their library to step35.

A plugin wheel (``step35-cuda12``, ``step35-cuda13``, ``step35-vulkan``) holds
one ggml backend module and a tiny package whose ``libraries()`` function is
registered in the ``step35.backends`` entry-point group. That function calls
:func:`cuda_libraries` or :func:`vulkan_libraries` here, so the policy (which
runtime to preload, what a missing driver looks like, what to tell the user)
lives in the core and is the same for every plugin.

A plugin that cannot work on this machine raises :class:`PluginUnavailable`;
``step35.backends()`` / ``step35 info`` then show its message as the reason,
and everything else keeps working.
"""

from __future__ import annotations

import ctypes
import os
import sys
from importlib import util
from pathlib import Path

from ..errors import PluginUnavailable
from .native import add_dll_directory

__all__ = ["PluginUnavailable", "backend_module", "cuda_libraries", "note", "vulkan_libraries"]

# What a plugin function learned while preparing a library (e.g. where the CUDA
# runtime came from), by library path; shown beside the loaded backend.
_notes: dict[str, str] = {}


# The extra of the core distribution that installs each plugin distribution
# (pyproject.toml, [tool.scikit-build.metadata.optional-dependencies]).
PLUGIN_EXTRAS = {"step35-cuda12": "cuda", "step35-cuda13": "cuda13", "step35-vulkan": "vulkan"}


def install_hint(distribution: str) -> str:
    """``pip install step35[EXTRA]`` for a plugin distribution (by its name)."""
    extra = PLUGIN_EXTRAS.get(distribution.lower().replace("_", "-"))
    return f"pip install step35[{extra}]" if extra else f"pip install {distribution}"


def note(library: str) -> str:
    """The note recorded for a plugin library, or ''."""
    return _notes.get(str(library), "")


def backend_module(lib_dir: Path, name: str) -> Path:
    """The file of ggml backend module ``name`` (``cuda``, ``vulkan``) in ``lib_dir``."""
    file = f"ggml-{name}.dll" if _windows() else f"libggml-{name}.so"
    path = Path(lib_dir) / file
    if not path.is_file():
        raise PluginUnavailable(f"{path} is missing: the plugin is damaged; reinstall it")
    return path


def _open(name: str) -> str | None:
    """dlopen ``name`` for the whole process; None on success, else the loader's reason."""
    try:
        ctypes.CDLL(name, mode=getattr(os, "RTLD_GLOBAL", 0))
    except OSError as e:
        return str(e)
    return None


# ---- CUDA -------------------------------------------------------------------

# Where NVIDIA's wheels put the runtime libraries, relative to site-packages:
# CUDA 12 wheels use one folder per component, CUDA 13 wheels share nvidia/cu13.
# On Windows the DLLs are under bin/, and CUDA 13's under bin/x86_64/ (checked
# in nvidia-cuda-runtime 13.5.37's win_amd64 wheel: nvidia/cu13/bin/x86_64/cudart64_13.dll;
# nvidia-cuda-runtime-cu12 12.9.79: nvidia/cuda_runtime/bin/cudart64_12.dll).
_CUDA_WHEEL_DIRS = {
    "posix": {
        12: ("nvidia/cuda_runtime/lib", "nvidia/cublas/lib"),
        13: ("nvidia/cu13/lib",),
    },
    "win32": {
        12: ("nvidia/cuda_runtime/bin", "nvidia/cublas/bin"),
        13: ("nvidia/cu13/bin/x86_64", "nvidia/cu13/bin"),
    },
}
_CUDA_WHEELS = {
    12: "nvidia-cuda-runtime-cu12 nvidia-cublas-cu12",
    13: "nvidia-cuda-runtime nvidia-cublas",
}


def _windows() -> bool:
    return sys.platform == "win32"


def _cuda_runtime_files(major: int) -> list[str]:
    """Runtime libraries in load order (cuBLAS needs cuBLASLt, both need cudart)."""
    if _windows():
        return [f"cudart64_{major}.dll", f"cublasLt64_{major}.dll", f"cublas64_{major}.dll"]
    return [f"libcudart.so.{major}", f"libcublasLt.so.{major}", f"libcublas.so.{major}"]


def _site_dirs() -> list[Path]:
    spec = util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(p).parent for p in spec.submodule_search_locations]


def _wheel_runtime(major: int) -> dict[str, Path]:
    """Runtime libraries found in NVIDIA's wheels: file name -> path."""
    found: dict[str, Path] = {}
    layout = _CUDA_WHEEL_DIRS["win32" if _windows() else "posix"]
    for site in _site_dirs():
        for rel in layout.get(major, ()):
            folder = site / rel
            for f in _cuda_runtime_files(major):
                if f not in found and (folder / f).is_file():
                    found[f] = folder / f
    return found


def _windows_system_runtime(major: int) -> dict[str, Path]:
    """Windows: the runtime DLLs of a system CUDA toolkit of that major version: file name -> path.

    ``ctypes.CDLL("cudart64_13.dll")`` does not search ``PATH`` (Python 3.8+
    loads with LOAD_LIBRARY_SEARCH_DEFAULT_DIRS), so the folders are searched
    here: ``CUDA_PATH_V<major>_*`` and ``CUDA_PATH`` (``bin``, and ``bin\\x64``
    where CUDA 13 installers put them), then ``PATH``.
    """
    roots = [v for k, v in sorted(os.environ.items(), reverse=True) if k.upper().startswith(f"CUDA_PATH_V{major}_")]
    if os.environ.get("CUDA_PATH"):
        roots.append(os.environ["CUDA_PATH"])
    folders = [Path(r) / sub for r in roots for sub in ("bin", os.path.join("bin", "x64"))]
    folders += [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    found: dict[str, Path] = {}
    for folder in folders:
        for f in _cuda_runtime_files(major):
            if f not in found and (folder / f).is_file():
                found[f] = folder / f
    return found


def _driver_problem() -> str | None:
    lib = "nvcuda.dll" if _windows() else "libcuda.so.1"
    reason = _open(lib)
    if reason is None:
        return None
    return (f"CUDA plugin installed, no NVIDIA driver found ({lib} cannot be loaded: {reason}). "
            "Install the NVIDIA driver (or use a machine with an NVIDIA GPU); the CPU backend still works")


def cuda_libraries(lib_dir: Path, cuda_major: int) -> list[str]:
    """Check the driver, preload the CUDA runtime and cuBLAS, return the CUDA backend module.

    The runtime comes from NVIDIA's wheels when they are installed (the plugin
    depends on them), else from a system CUDA of the same major version found
    by the dynamic loader (``LD_LIBRARY_PATH``, ``ldconfig``; on Windows searched here by
    :func:`_windows_system_runtime`, as ``CDLL`` of a bare name does not search ``PATH``).
    Raises :class:`PluginUnavailable` with the reason and the fix.
    """
    module = backend_module(lib_dir, "cuda")
    problem = _driver_problem()
    if problem:
        raise PluginUnavailable(problem)
    wheel = _wheel_runtime(cuda_major)
    system: dict[str, Path] = {}
    if _windows():
        system = {f: p for f, p in _windows_system_runtime(cuda_major).items() if f not in wheel}
        # Full paths below; the folders also go on the DLL search path (kept for
        # the process) for what these DLLs load themselves.
        for folder in sorted({str(p.parent) for p in (*wheel.values(), *system.values())}):
            add_dll_directory(folder)
    missing = []
    for f in _cuda_runtime_files(cuda_major):
        # By full path where we know it (a bare name is left to the dynamic
        # loader: LD_LIBRARY_PATH / ldconfig on Linux).
        target = str(wheel[f]) if f in wheel else str(system[f]) if f in system else f
        reason = _open(target)
        if reason is not None:
            missing.append(f"{f} ({reason})")
    if missing:
        raise PluginUnavailable(
            f"CUDA plugin installed, but the CUDA {cuda_major} runtime is incomplete: cannot load "
            + ", ".join(missing)
            + f". Install NVIDIA's wheels (`pip install {_CUDA_WHEELS.get(cuda_major, 'the CUDA runtime')}`,"
            f" which `{install_hint(f'step35-cuda{cuda_major}')}` does)"
            f" or a CUDA {cuda_major} toolkit")
    folders = sorted({str(p.parent) for p in wheel.values()})
    _notes[str(module)] = (f"CUDA {cuda_major} runtime from NVIDIA's wheels ({', '.join(folders)})" if folders
                           else f"CUDA {cuda_major} runtime from the system (no NVIDIA runtime wheels installed)")
    return [str(module)]


# ---- Vulkan -----------------------------------------------------------------

def vulkan_libraries(lib_dir: Path) -> list[str]:
    """Check for a Vulkan loader and return the Vulkan backend module.

    Raises :class:`PluginUnavailable` when no loader is installed (the GPU
    driver provides it; on Linux also the ``libvulkan1`` package).
    """
    module = backend_module(lib_dir, "vulkan")
    if sys.platform == "win32":
        loader = "vulkan-1.dll"
    elif sys.platform == "darwin":
        loader = "libvulkan.1.dylib"
    else:
        loader = "libvulkan.so.1"
    reason = _open(loader)
    if reason is not None:
        raise PluginUnavailable(
            f"Vulkan plugin installed, no Vulkan loader found ({loader}: {reason}). Install your GPU "
            "driver's Vulkan support (Linux: `apt install libvulkan1 mesa-vulkan-drivers` or the vendor driver)")
    return [str(module)]
