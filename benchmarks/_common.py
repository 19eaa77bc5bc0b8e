"""Shared helpers of the side-by-side benchmark scripts (not part of the package)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def native_bin(native: bool = False) -> Path:
    """Build (or reuse) llama.cpp's tools from the pinned source; return their bin/ directory."""
    args = ["bash", str(REPO / "benchmarks" / "build_native.sh")] + (["--native"] if native else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    return REPO / out.stdout.strip().splitlines()[-1]


def bench_model(size: str, quant: str | None, f32: bool = False) -> Path:
    """A built-in benchmark model (mid: Q4_K_S unless ``quant`` says otherwise; cached).

    ``f32``: the size's F32 variant (every weight and the embeddings F32, not
    quantized), e.g. issue 6's "tiny Step 3.5 model (hidden 64, f32)".
    """
    import dataclasses

    from step35 import testing

    if f32:
        spec = testing.SIZES[size]
        return testing.model_path(dataclasses.replace(spec, name=f"{spec.name}-f32", dtype="f32", embd_dtype="f32"))
    return testing.bench_model_path(size, quant if quant else "default")


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env={**os.environ, **(env or {})}, timeout=timeout)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}")
    return p
