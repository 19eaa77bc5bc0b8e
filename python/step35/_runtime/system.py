"""What this machine has: system memory (honouring a container's limit) and the default thread count."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _cgroup_limit() -> tuple[int | None, int | None]:
    base = Path("/sys/fs/cgroup")
    try:
        raw = (base / "memory.max").read_text().strip()
        if raw != "max":
            return int(raw), int((base / "memory.current").read_text().strip())
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        lim = int((base / "memory" / "memory.limit_in_bytes").read_text().strip())
        if lim < 1 << 60:
            return lim, int((base / "memory" / "memory.usage_in_bytes").read_text().strip())
    except (OSError, ValueError):
        pass
    return None, None


def system_memory() -> tuple[int, int]:
    """(total, available) bytes of system RAM, honouring a container's memory limit.

    Available is what can be had without swapping: Linux's MemAvailable (free
    memory plus reclaimable page cache), macOS' free + inactive + purgeable pages,
    Windows' available physical memory.
    """
    total = avail = None
    if sys.platform.startswith("linux"):
        try:
            info = {}
            with open("/proc/meminfo") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    info[k] = int(v.split()[0]) * 1024
            total, avail = info["MemTotal"], info.get("MemAvailable", info.get("MemFree"))
        except (OSError, KeyError, ValueError):
            pass
        lim, used = _cgroup_limit()
        if lim is not None and total is not None:
            total = min(total, lim)
            avail = min(avail or total, max(lim - (used or 0), 0))
    elif sys.platform == "darwin":
        import subprocess

        try:
            total = int(subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True,
                                       check=True).stdout)
            out = subprocess.run(["vm_stat"], capture_output=True, text=True, check=True).stdout
            page = int(out.split("page size of ")[1].split()[0]) if "page size of " in out else 16384
            pages = {k.strip(): int(v.strip().rstrip(".")) for k, v in
                     (ln.split(":", 1) for ln in out.splitlines()[1:] if ":" in ln) if v.strip().rstrip(".").isdigit()}
            avail = page * sum(pages.get(k, 0) for k in
                               ("Pages free", "Pages inactive", "Pages purgeable", "Pages speculative"))
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            pass
    elif sys.platform == "win32":
        import ctypes

        class _MS(ctypes.Structure):
            _fields_ = [("dwLength", ctypes.c_ulong), ("dwMemoryLoad", ctypes.c_ulong),
                        ("ullTotalPhys", ctypes.c_ulonglong), ("ullAvailPhys", ctypes.c_ulonglong),
                        ("ullTotalPageFile", ctypes.c_ulonglong), ("ullAvailPageFile", ctypes.c_ulonglong),
                        ("ullTotalVirtual", ctypes.c_ulonglong), ("ullAvailVirtual", ctypes.c_ulonglong),
                        ("ullAvailExtendedVirtual", ctypes.c_ulonglong)]

        ms = _MS()
        ms.dwLength = ctypes.sizeof(_MS)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(ms)):  # type: ignore[attr-defined]
            total, avail = int(ms.ullTotalPhys), int(ms.ullAvailPhys)
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            total = 0
    return int(total), int(avail if avail is not None else total)


def default_threads() -> int:
    """Threads used when none are given: the number of physical cores, as llama.cpp's tools count them.

    (llama.cpp's library default is a fixed 4, which oversubscribes small
    machines and underuses big ones.)
    """
    siblings = set()
    cpu = 0
    while True:
        try:
            with open(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings") as f:
                siblings.add(f.read().strip())
        except OSError:
            break
        cpu += 1
    return len(siblings) if siblings else max(1, os.cpu_count() or 1)
