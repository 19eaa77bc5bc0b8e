"""Windows DLL loading, checked on any OS: the folders given to os.add_dll_directory and the files loaded.

On Windows, Python 3.8+ resolves an extension's (and a ctypes-loaded DLL's)
dependencies from the system folders, the DLL's own folder and folders added
with ``os.add_dll_directory``, never from ``PATH``; and ``ctypes.CDLL`` of a
bare name does not search ``PATH`` either. So ``_core.pyd`` (in ``step35\\``)
needs ``step35\\lib`` (llama.dll, ggml*.dll) added before it is imported, and a
CUDA plugin must load NVIDIA's runtime DLLs by full path from the folders the
wheels really use. Here ``sys.platform`` is set to ``win32`` and
``os.add_dll_directory`` and ``ctypes.CDLL`` are stubs that record their calls.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import types
from pathlib import Path

import pytest

import step35
from step35._runtime import native as _native
from step35._runtime import plugins
from step35.errors import PluginUnavailable


class _Handle:
    """What os.add_dll_directory returns (``path`` and ``close``, as CPython's)."""

    def __init__(self, path: str, log: list[str]) -> None:
        self.path = path
        self._log = log

    def close(self) -> None:
        self._log.append(f"close {self.path}")


@pytest.fixture
def windows(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Pretend to be Windows: returns the log of add_dll_directory (and close) calls."""
    log: list[str] = []
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(os, "add_dll_directory", lambda path: (log.append(path), _Handle(path, log))[1],
                        raising=False)
    monkeypatch.setattr(_native, "_dll_directories", [])
    return log


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """ctypes.CDLL recorded (every load succeeds): returns the names/paths loaded, in order."""
    opened: list[str] = []

    def cdll(name: str, mode: int = 0) -> object:
        opened.append(name)
        return object()

    monkeypatch.setattr(plugins.ctypes, "CDLL", cdll)
    return opened


@pytest.fixture
def no_system_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in [k for k in os.environ if k.upper().startswith("CUDA_PATH")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("PATH", "")


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"MZ")
    return path


def _plugin_lib(tmp_path: Path, windows: bool = True) -> Path:
    lib = tmp_path / "step35_cudaN" / "lib"
    _touch(lib / ("ggml-cuda.dll" if windows else "libggml-cuda.so"))
    return lib


# ---- the core: step35\lib before _core.pyd -----------------------------------

def test_lib_dir_is_lib_beside_the_package_as_installed() -> None:
    assert _native.PACKAGE_DIR == Path(os.path.abspath(_native.__file__)).parent.parent  # step35/, above _runtime/
    assert _native.LIB_DIR == _native.PACKAGE_DIR / "lib"


def test_core_import_adds_step35_lib_first(windows: list[str], monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    lib = tmp_path / "site-packages" / "step35" / "lib"
    lib.mkdir(parents=True)
    monkeypatch.setattr(_native, "LIB_DIR", lib)

    class FakeCore(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        """Stands in for _core.pyd: its import is logged where add_dll_directory logs."""

        def find_spec(self, name: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
            return importlib.machinery.ModuleSpec(name, self) if name == "step35._core" else None

        def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
            windows.append("import step35._core")
            mod = types.ModuleType(spec.name)
            mod.__version__ = step35.__version__  # type: ignore[attr-defined]
            # the error kinds step35 registers its classes for at import (none here)
            mod.ErrorKind = types.SimpleNamespace(__members__={})  # type: ignore[attr-defined]
            mod.register_error_classes = lambda classes: None  # type: ignore[attr-defined]
            return mod

        def exec_module(self, module: types.ModuleType) -> None:
            pass

    # the real module first, so that monkeypatch puts it back after the test (else the stand-in
    # would stay in sys.modules for the tests that run next)
    importlib.import_module("step35._core")
    monkeypatch.delattr(step35, "_core")
    monkeypatch.delitem(sys.modules, "step35._core")
    monkeypatch.setattr(sys, "meta_path", [FakeCore(), *sys.meta_path])
    mod = _native.import_core()
    assert mod.__version__ == step35.__version__
    assert windows == [str(lib), "import step35._core"]
    # the handle is kept (a collected handle would take the folder off the search path)
    assert [h.path for h in _native._dll_directories] == [str(lib)]


def test_a_folder_is_added_once_and_never_closed(windows: list[str], tmp_path: Path) -> None:
    assert _native.add_dll_directory(tmp_path) is True
    assert _native.add_dll_directory(str(tmp_path)) is False
    assert _native.add_dll_directory(tmp_path / "missing") is False
    assert windows == [str(tmp_path)]


def test_not_windows_adds_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[str] = []
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "add_dll_directory", calls.append, raising=False)
    monkeypatch.setattr(_native, "_dll_directories", [])
    assert _native.add_dll_directory(tmp_path) is False
    assert calls == []


# ---- CUDA plugins: NVIDIA's runtime wheels, by full path ---------------------

def test_cuda12_wheels_windows_layout(windows: list[str], loads: list[str], no_system_cuda: None,
                                      monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    cudart = _touch(site / "nvidia" / "cuda_runtime" / "bin" / "cudart64_12.dll")
    lt = _touch(site / "nvidia" / "cublas" / "bin" / "cublasLt64_12.dll")
    blas = _touch(site / "nvidia" / "cublas" / "bin" / "cublas64_12.dll")
    monkeypatch.setattr(plugins, "_site_dirs", lambda: [site])
    lib = _plugin_lib(tmp_path)

    assert plugins.cuda_libraries(lib, 12) == [str(lib / "ggml-cuda.dll")]
    assert windows == sorted([str(site / "nvidia" / "cublas" / "bin"), str(site / "nvidia" / "cuda_runtime" / "bin")])
    # the driver from System32 by name, then the runtime by full path, in dependency order
    assert loads == ["nvcuda.dll", str(cudart), str(lt), str(blas)]


def test_cuda13_wheels_windows_layout_is_bin_x86_64(windows: list[str], loads: list[str], no_system_cuda: None,
                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    folder = site / "nvidia" / "cu13" / "bin" / "x86_64"
    files = [_touch(folder / f) for f in ("cudart64_13.dll", "cublasLt64_13.dll", "cublas64_13.dll")]
    monkeypatch.setattr(plugins, "_site_dirs", lambda: [site])
    lib = _plugin_lib(tmp_path)

    assert plugins.cuda_libraries(lib, 13) == [str(lib / "ggml-cuda.dll")]
    assert windows == [str(folder)]
    assert loads == ["nvcuda.dll", *map(str, files)]
    assert str(folder) in plugins.note(str(lib / "ggml-cuda.dll"))


def test_windows_system_cuda_by_full_path(windows: list[str], loads: list[str], no_system_cuda: None,
                                          monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No NVIDIA wheels: a CUDA 13 toolkit's DLLs (CUDA_PATH\\bin\\x64), loaded by full path."""
    toolkit = tmp_path / "CUDA" / "v13.0"
    folder = toolkit / "bin" / "x64"
    files = [_touch(folder / f) for f in ("cudart64_13.dll", "cublasLt64_13.dll", "cublas64_13.dll")]
    monkeypatch.setenv("CUDA_PATH", str(toolkit))
    monkeypatch.setattr(plugins, "_site_dirs", lambda: [])
    lib = _plugin_lib(tmp_path)

    plugins.cuda_libraries(lib, 13)
    assert windows == [str(folder)]
    assert loads == ["nvcuda.dll", *map(str, files)]


def test_windows_runtime_missing_is_a_reason(windows: list[str], no_system_cuda: None,
                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def cdll(name: str, mode: int = 0) -> object:
        if name != "nvcuda.dll":
            raise OSError(f"[WinError 126] {name}")
        return object()

    monkeypatch.setattr(plugins.ctypes, "CDLL", cdll)
    monkeypatch.setattr(plugins, "_site_dirs", lambda: [])
    with pytest.raises(PluginUnavailable, match=r"CUDA 13 runtime is incomplete: cannot load cudart64_13\.dll"):
        plugins.cuda_libraries(_plugin_lib(tmp_path), 13)
    assert windows == []


def test_linux_cuda13_wheels_by_full_path_no_dll_directories(loads: list[str], monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    calls: list[str] = []
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "add_dll_directory", calls.append, raising=False)
    site = tmp_path / "site-packages"
    folder = site / "nvidia" / "cu13" / "lib"
    files = [_touch(folder / f) for f in ("libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13")]
    monkeypatch.setattr(plugins, "_site_dirs", lambda: [site])
    lib = _plugin_lib(tmp_path, windows=False)

    assert plugins.cuda_libraries(lib, 13) == [str(lib / "libggml-cuda.so")]
    assert loads == ["libcuda.so.1", *map(str, files)]
    assert calls == []
