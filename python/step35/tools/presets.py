"""The platforms StepFun validated Step 3.5 Flash on, with their install line and settings.

The settings are the ones of StepFun's own llama.cpp instructions: 16K context
with ``-b 2048 -ub 2048 -fa on`` everywhere, and what each machine needs for
long contexts. ``step35 info`` shows the preset of
the machine it recognises (``step35 info --preset NAME`` shows any of them).
"""

from __future__ import annotations

import platform
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Preset", "PRESETS", "cpu_brand", "detect", "get"]


@dataclass(frozen=True)
class Preset:
    """A validated platform: how to install, which flags to use, what to watch out for."""

    name: str
    title: str
    backend: str
    install: str
    run: str
    bench: str
    long_context: str
    notes: tuple[str, ...] = field(default=())
    # Recognised when the CPU brand or a device description matches one of these.
    match: tuple[str, ...] = field(default=(), repr=False)
    system: str = ""  # platform.system() the preset applies to ("" = any)

    def describe(self) -> str:
        """The preset as the lines ``step35 info`` prints."""
        lines = [f"{self.title} ({self.backend})",
                 f"  install:      {self.install}",
                 f"  run:          {self.run}",
                 f"  bench:        {self.bench}",
                 f"  long context: {self.long_context}"]
        lines += [f"  note:         {n}" for n in self.notes]
        return "\n".join(lines)


_SHORT = "-c 16384 -b 2048 -ub 2048 -fa on"
_MODEL = "-m stepfun-ai/Step-3.5-Flash-Int4:Q4_K_S"

PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        name="mac-m4-max",
        title="Mac Studio M4 Max, 128 GB unified memory",
        backend="Metal, built into the macOS arm64 wheel",
        install="pip install step35",
        run=f"step35 run {_MODEL} {_SHORT} -p \"What's your name?\"",
        bench=f"step35 bench {_MODEL} {_SHORT} -npp 0,2048,8192,16384 -ntg 128 -npl 1",
        long_context=(f"sudo sysctl iogpu.wired_limit_mb=122880, then step35 bench {_MODEL} -c 262150 -b 2048 "
                      "-ub 1024 -ctk q8_0 -ctv q8_0 -npp 0,2048,8192,16384,32768,65536,262144 -ntg 128 -npl 1"),
        notes=("macOS lets the GPU wire only part of the unified memory by default; the sysctl above raises "
               "it to 120 GB (until reboot). With -ub 1024 up to a 256K context runs.",),
        match=(r"\bApple M4 Max\b",),
        system="Darwin",
    ),
    Preset(
        name="dgx-spark",
        title="NVIDIA DGX Spark (GB10, 128 GB unified memory, linux aarch64)",
        backend="CUDA plugin wheel step35-cuda12 (architecture 121)",
        install="pip install step35[cuda]",
        run=f"step35 run {_MODEL} {_SHORT} -p \"What's your name?\"",
        bench=f"step35 bench {_MODEL} {_SHORT} -npp 0,2048,8192,16384 -ntg 128 -npl 1",
        long_context=(f"GGML_CUDA_ENABLE_UNIFIED_MEMORY=1 step35 bench {_MODEL} -c 262150 -b 2048 -ub 1024 "
                      "-ctk q8_0 -ctv q8_0 -npp 0,2048,8192,16384,32768,65536,262144 -ntg 128 -npl 1"),
        notes=("Long contexts can run out of memory: GGML_CUDA_ENABLE_UNIFIED_MEMORY=1 and a q8_0 KV cache help, "
               "and so does dropping the page cache first: sudo sh -c 'sync; echo 3 > /proc/sys/vm/drop_caches'.",),
        match=(r"\bGB10\b", r"DGX Spark"),
        system="Linux",
    ),
    Preset(
        name="ryzen-ai-max-395",
        title="AMD Ryzen AI Max+ 395 (Radeon 8060S, 128 GB unified memory), Windows",
        backend="Vulkan plugin wheel step35-vulkan",
        install="pip install step35[vulkan]",
        run=f"step35 run {_MODEL} {_SHORT} -p \"What's your name?\"",
        bench=f"step35 bench {_MODEL} {_SHORT} -npp 0,2048,8192,16384 -ntg 128 -npl 1",
        long_context=(f"step35 bench {_MODEL} -c 65540 -b 2048 -ub 2048 -npp 0,2048,8192,16384,32768,65536 "
                      "-ntg 128 -npl 1 --mmap -t 32"),
        notes=("Give the GPU most of the memory in the BIOS/AMD software (variable graphics memory) so that "
               "the 111 GB of Q4_K_S weights fit in GPU-visible memory.",),
        match=(r"Ryzen AI MAX\+? 395", r"Radeon 8060S"),
    ),
)}


def get(name: str) -> Preset:
    """The preset called ``name``; ValueError listing the names when there is none."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"no preset {name!r}; presets: {', '.join(PRESETS)}") from None


def cpu_brand() -> str:
    """This machine's CPU name (e.g. 'AMD RYZEN AI MAX+ 395 w/ Radeon 8060S', 'Apple M4 Max'), or ''."""
    try:
        if sys.platform == "darwin":
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip()
        if sys.platform == "win32":
            import winreg

            key = winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"HARDWARE\DESCRIPTION\System\CentralProcessor\0")
            return str(winreg.QueryValueEx(key, "ProcessorNameString")[0]).strip()
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        if m:
            return m.group(1).strip()
        dt = Path("/proc/device-tree/model")  # arm boards (DGX Spark: NVIDIA ... GB10 ...)
        return dt.read_text(errors="replace").strip("\x00\n ") if dt.exists() else ""
    except Exception:  # noqa: BLE001 - detection is best effort, never an error
        return ""


def detect(cpu: str | None = None, devices: Iterable[str] | None = None, system: str | None = None) -> Preset | None:
    """The preset of this machine (or of the given CPU name, device descriptions and OS), or None."""
    cpu = cpu_brand() if cpu is None else cpu
    if devices is None:
        from .._runtime.backends import backends

        devices = [d["description"] for b in backends().loaded for d in b.devices]
    system = platform.system() if system is None else system
    names = [cpu, *devices]
    for p in PRESETS.values():
        if p.system and p.system != system:
            continue
        if any(re.search(rx, n, re.I) for rx in p.match for n in names if n):
            return p
    return None
