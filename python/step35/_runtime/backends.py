"""Which compute backends to load, in what order, and the report of what happened.

The core wheel carries one CPU backend library per instruction-set level
(``libggml-cpu-<variant>``) in ``step35/lib``. We ask each variant's
``ggml_backend_score()`` whether this CPU can run it and load the best one
(llama.cpp's own search looks beside the Python interpreter, which is the
wrong place for us). Other backends come from plugin wheels (``step35[cuda]``,
``step35[vulkan]``) that advertise their libraries through the
``step35.backends`` entry-point group. A backend that fails to load is recorded
with the reason and a warning; it never stops the CPU from working.

:func:`core` hands out the native extension with all of this done, once.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from .._version import __version__
from ..errors import PluginUnavailable
from .native import LIB_DIR, PACKAGE_DIR, import_core
from .plugins import install_hint
from .plugins import note as plugin_note

ENTRY_POINT_GROUP = "step35.backends"
# Names one CPU variant to load instead of the best-scoring one (testing the
# kernels another processor would get; only variants this CPU can run).
CPU_VARIANT_ENV = "STEP35_CPU_VARIANT"

#: Device types as the binding names them (``device["type"]`` in :func:`backends`;
#: ggml's CPU / GPU / IGPU / ACCEL). A ``GPU`` has its own memory; an ``IGPU``
#: (integrated, e.g. DGX Spark's GB10, Ryzen AI Max's Radeon) uses system RAM.
DEVICE_CPU, DEVICE_GPU, DEVICE_IGPU, DEVICE_ACCEL = "cpu", "gpu", "igpu", "accel"
#: The types that are GPUs (what ``devices=`` selects and what the memory plan gives a pool).
GPU_TYPES = (DEVICE_GPU, DEVICE_IGPU)

if sys.platform == "win32":
    _PREFIX, _EXT = "ggml-", ".dll"
else:
    _PREFIX, _EXT = "libggml-", ".so"
# Libraries in lib/ that are not backends.
_NOT_BACKENDS = {"base"}


@dataclass
class CpuVariant:
    """One CPU backend build and whether this machine can run it."""

    name: str
    library: str
    score: int
    error: str | None = None


@dataclass
class LoadedBackend:
    """A backend that loaded, with its devices (dicts: name, description, type, memory)."""

    name: str
    library: str | None
    source: str
    devices: list[dict[str, Any]] = field(default_factory=list)
    features: dict[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass
class FailedBackend:
    """A backend that did not load, and why."""

    name: str
    library: str | None
    source: str
    reason: str


@dataclass
class BackendReport:
    """What :func:`backends` returns: versions, loaded and failed backends, CPU variants."""

    version: str
    llama_commit: str
    patches: list[str]
    loaded: list[LoadedBackend]
    failed: list[FailedBackend]
    cpu_variants: list[CpuVariant]
    cpu_variant: str | None
    system_info: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for JSON)."""
        from dataclasses import asdict

        return asdict(self)


_loaded: list[LoadedBackend] = []
_failed: list[FailedBackend] = []
_cpu_variants: list[CpuVariant] = []
_cpu_choice: str | None = None


def _lib_name(path: Path) -> str:
    stem = path.name
    return stem[len(_PREFIX): -len(_EXT)] if stem.startswith(_PREFIX) and stem.endswith(_EXT) else stem


def _set_log_level(core: ModuleType) -> None:
    levels = {"debug": core.LOG_DEBUG, "info": core.LOG_INFO, "warn": core.LOG_WARN,
              "warning": core.LOG_WARN, "error": core.LOG_ERROR, "none": 1000}
    wanted = os.environ.get("STEP35_LOG_LEVEL", "none").strip().lower()
    core.set_log_echo_level(levels.get(wanted, 1000))


def _load_cpu(core: ModuleType, lib_dir: Path) -> None:
    global _cpu_choice
    candidates = sorted(lib_dir.glob(f"{_PREFIX}cpu*{_EXT}"))
    for path in candidates:
        score, error = core.score_backend(str(path))
        name = _lib_name(path)
        variant = name[len("cpu-"):] if name.startswith("cpu-") else "default"
        _cpu_variants.append(CpuVariant(variant, str(path), score, error))
    if not candidates:
        _failed.append(FailedBackend("CPU", None, "core", f"no CPU backend library in {lib_dir}: reinstall step35"))
        return
    ranked = sorted((v for v in _cpu_variants if v.score > 0), key=lambda v: -v.score)
    forced = os.environ.get(CPU_VARIANT_ENV, "").strip()
    if forced and ranked:
        chosen = [v for v in ranked if v.name == forced]
        if chosen:
            ranked = chosen
        else:
            known = ", ".join(v.name for v in _cpu_variants)
            runnable = ", ".join(v.name for v in ranked)
            _failed.append(FailedBackend(
                "CPU", None, "core",
                f"{CPU_VARIANT_ENV}={forced} cannot be used: "
                + (f"this processor cannot run it (it can run: {runnable})"
                   if any(v.name == forced for v in _cpu_variants) else f"no such variant (built: {known})")
                + f"; using {ranked[0].name} instead"))
    if not ranked:
        _failed.append(FailedBackend(
            "CPU", None, "core",
            "no CPU backend variant can run on this processor: "
            + "; ".join(f"{v.name}: {v.error or 'score 0'}" for v in _cpu_variants)))
        return
    for v in ranked:
        try:
            reg_name = core.load_backend(v.library)
        except Exception as e:  # BackendLoadError: try the next best
            _failed.append(FailedBackend("CPU", v.library, "core", str(e)))
            continue
        _cpu_choice = v.name
        supported = sum(1 for x in _cpu_variants if x.score > 0)
        why = (f"forced by {CPU_VARIANT_ENV}" if forced == v.name else f"highest score ({v.score})")
        _loaded.append(LoadedBackend(
            reg_name, v.library, "core",
            note=(f"variant {v.name}: {why} of the {supported} of "
                  f"{len(_cpu_variants)} built variants this CPU supports")))
        return


def _load_other_bundled(core: ModuleType, lib_dir: Path) -> None:
    for path in sorted(lib_dir.glob(f"{_PREFIX}*{_EXT}")):
        name = _lib_name(path)
        if name.startswith("cpu") or name in _NOT_BACKENDS:
            continue
        _load_one(core, name, path, "core")


def _load_one(core: ModuleType, name: str, path: Path, source: str, note: str = "") -> None:
    score, error = core.score_backend(str(path))
    if error is not None and score < 0 and "ggml_backend_score" not in error:
        _failed.append(FailedBackend(name, str(path), source, f"cannot open {path.name}: {error}"))
        return
    if score == 0:
        _failed.append(FailedBackend(
            name, str(path), source,
            f"{path.name} reports it cannot run on this system (no supported device or driver)"))
        return
    try:
        reg_name = core.load_backend(str(path))
    except Exception as e:
        _failed.append(FailedBackend(name, str(path), source, str(e)))
        return
    _loaded.append(LoadedBackend(reg_name, str(path), source, note=note))


def _load_plugins(core: ModuleType, version: str) -> None:
    if os.environ.get("STEP35_NO_PLUGINS"):
        return
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        source = f"{dist.name} {dist.version} (plugin)" if dist else f"{ep.value} (plugin)"
        if dist is not None and dist.version != version:
            _failed.append(FailedBackend(
                ep.name, None, source,
                f"version skew: {dist.name} {dist.version} is installed but step35 is {version}; "
                f"run `pip install \"{dist.name}=={version}\"` (or `{install_hint(dist.name)}`)"))
            continue
        try:
            provider = ep.load()
            paths = [Path(p) for p in provider()]
        except PluginUnavailable as e:  # no driver / runtime: the plugin says why
            _failed.append(FailedBackend(ep.name, None, source, str(e)))
            continue
        except Exception as e:
            _failed.append(FailedBackend(ep.name, None, source, f"plugin failed to initialize: {e}"))
            continue
        for p in paths:
            _load_one(core, ep.name, p, source, note=plugin_note(str(p)))


def initialize(core: ModuleType, lib_dir: Path = LIB_DIR) -> None:
    """Load the CPU variant, bundled backends and plugins, then init llama.cpp. Runs once."""
    _set_log_level(core)
    _load_cpu(core, lib_dir)
    _load_other_bundled(core, lib_dir)
    _load_plugins(core, __version__)
    core.backend_init()
    by_name = {r["name"]: r for r in core.registries()}
    for b in _loaded:
        reg = by_name.get(b.name)
        if reg is not None:
            b.devices = reg["devices"]
            b.features = reg["features"]


def warn_failures() -> None:
    """One RuntimeWarning per backend that did not load (called once, after setup)."""
    for f in _failed:
        warnings.warn(f"step35: backend {f.name} not loaded: {f.reason}", RuntimeWarning, stacklevel=4)


def _stamp() -> dict[str, Any]:
    try:
        return json.loads((PACKAGE_DIR / "llama_cpp_stamp.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


_lock = threading.Lock()
_core: ModuleType | None = None


def core() -> ModuleType:
    """The ``step35._core`` extension, with backends loaded (once, thread-safe)."""
    global _core
    if _core is not None:
        return _core
    with _lock:
        if _core is not None:
            return _core
        mod = import_core()
        initialize(mod)
        _core = mod
    # Outside the lock and after setup: a warning turned into an error cannot
    # leave the backends half-initialized.
    warn_failures()
    return _core


def backends() -> BackendReport:
    """Report the package version, the llama.cpp it carries, and every backend.

    Loads the backends on first call. Example::

        >>> report = step35.backends()
        >>> report.cpu_variant            # e.g. 'haswell'
        >>> [d["description"] for b in report.loaded for d in b.devices]
    """
    c = core()
    stamp = _stamp()
    return BackendReport(
        version=__version__,
        llama_commit=c.LLAMA_COMMIT,
        patches=[p["name"] for p in stamp.get("patches", [])],
        loaded=list(_loaded),
        failed=list(_failed),
        cpu_variants=list(_cpu_variants),
        cpu_variant=_cpu_choice,
        system_info=c.system_info(),
    )


#: The registry name ggml gives the devices of RPC workers (``ggml_backend_reg_name`` of their device).
RPC_BACKEND = "RPC"


def is_remote(device: dict[str, Any]) -> bool:
    """Whether a device dict (as :func:`backends` lists them) belongs to an RPC worker."""
    return device.get("backend") == RPC_BACKEND


def note_remote(endpoint: str, device_names: Sequence[str]) -> None:
    """Record (or refresh) the RPC worker at ``endpoint`` as a loaded backend, with its devices' memory now."""
    name = f"{RPC_BACKEND}[{endpoint}]"
    wanted = set(device_names)
    devices = [d for r in core().registries() if r["name"] == name for d in r["devices"] if d["name"] in wanted]
    entry = LoadedBackend(name, None, f"RPC worker {endpoint}", devices,
                          note="remote: its devices take layers like local GPUs (step35.tools.rpc)")
    with _lock:
        for i, b in enumerate(_loaded):
            if b.name == name:
                _loaded[i] = entry
                break
        else:
            _loaded.append(entry)


def local_gpus() -> list[str]:
    """The GPUs llama.cpp uses by default, without RPC workers' devices.

    As llama.cpp chooses them: every discrete GPU (one per physical device when
    two backends see the same one); when there is none, the first integrated GPU.
    """
    local = [d for b in backends().loaded for d in b.devices if not is_remote(d)]
    gpus: list[str] = []
    seen: set[str] = set()
    for d in local:
        if d["type"] != DEVICE_GPU:
            continue
        if d.get("device_id"):
            if d["device_id"] in seen:
                continue
            seen.add(d["device_id"])
        gpus.append(d["name"])
    if not gpus:
        gpus = [d["name"] for d in local if d["type"] == DEVICE_IGPU][:1]
    return gpus


def check_tensor_split(split: Sequence[float] | None, devices: Sequence[str] | None) -> list[float]:
    """``tensor_split`` checked against the devices used: non-negative shares, at most one per device."""
    if split is None:
        return []
    values = list(split)
    n = len(devices) if devices is not None else None
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 for v in values) \
            or sum(values) <= 0:
        raise ValueError(f"tensor_split takes non-negative shares, not all zero (e.g. [3, 1]), got {split!r}")
    if n is not None and len(values) > n:
        raise ValueError(f"tensor_split has {len(values)} shares but the model uses {n} device(s)"
                         f"{' (' + ', '.join(devices) + ')' if devices else ''}")
    return [float(v) for v in values]


def resolve_devices(devices: Sequence[str] | str | None,
                    available: Sequence[dict[str, Any]] | None = None) -> list[str] | None:
    """Check ``devices`` (names, or one comma-separated string) against the devices there are.

    ``available`` are device dicts as :func:`backends` lists them (default: the
    loaded backends' devices). ``None`` stays None (every GPU); ``[]`` means the
    CPU only. A ValueError names the devices there are.
    """
    if devices is None:
        return None
    if isinstance(devices, str):
        devices = [d for d in devices.split(",") if d]
    if available is None:
        available = [d for b in backends().loaded for d in b.devices]
    known = [d["name"] for d in available if d["type"] != DEVICE_CPU]
    wrong = [d for d in devices if d not in known]
    if wrong:
        raise ValueError(f"no device named {', '.join(map(repr, wrong))}; the devices here are "
                         f"{', '.join(known) if known else 'none besides the CPU (no GPU backend loaded)'}; "
                         "see `step35 info`")
    return list(devices)
