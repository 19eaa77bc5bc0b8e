"""Shared helpers of the side-by-side benchmark scripts (not part of the package)."""

from __future__ import annotations

import argparse
import json
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


def add_bench_rows_args(ap: argparse.ArgumentParser, ntg: str) -> None:
    """The model and row flags of the batched-bench comparisons (-npp, -ntg, -npl as llama-batched-bench)."""
    ap.add_argument("--size", default="tiny", help="built-in model: tiny, small or mid")
    ap.add_argument("--quant", default=None, help="quantize the built-in model first (e.g. Q4_K_S)")
    ap.add_argument("-m", "--model", help="a GGUF instead of a built-in model")
    ap.add_argument("-npp", default="128,512")
    ap.add_argument("-ntg", default=ntg)
    ap.add_argument("-npl", default="1,4")


def add_generation_args(ap: argparse.ArgumentParser) -> None:
    """The model, prompt, context and repetition flags of the generation comparisons."""
    ap.add_argument("--size", default="tiny", help="built-in model: tiny, small or mid")
    ap.add_argument("--quant", default=None, help="quantize the built-in model first (e.g. Q4_K_S)")
    ap.add_argument("--f32", action="store_true", help="the size's F32 variant (issue 6: tiny, hidden 64, f32)")
    ap.add_argument("-m", "--model", help="a GGUF instead of a built-in model")
    ap.add_argument("-p", "--prompt", default="Once upon a time, in a quiet village by the sea, there lived")
    ap.add_argument("-n", type=int, default=256)
    ap.add_argument("-c", "--ctx", type=int, default=4096)
    ap.add_argument("-b", type=int, default=2048)
    ap.add_argument("-ub", type=int, default=512)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=7,
                    help="alternating repetitions (medians and the per-pair spread are printed)")
    ap.add_argument("--quick", action="store_true", help="16 tokens, 1 repetition (CI smoke run)")


def generation_setup(a: argparse.Namespace) -> tuple[int, str]:
    """Apply --quick; return (threads, model path) for :func:`add_generation_args`' flags."""
    if a.quick:
        a.n, a.reps = 16, 1
    from step35.context import default_threads

    return a.threads or default_threads(), a.model or str(bench_model(a.size, a.quant, f32=a.f32))


def parse_jsonl(text: str) -> dict[tuple[int, int, int], dict]:
    """Rows of a batched-bench JSONL output (llama-batched-bench's or `step35 bench`'s), by (pp, tg, pl)."""
    rows = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            d = json.loads(line)
            rows[(d["pp"], d["tg"], d["pl"])] = d
    return rows


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pair_spread(ours: list[float], ref: list[float]) -> str:
    """The min-max of the per-repetition ratios ours[i] / ref[i] (each pair ran back to back)."""
    ratios = [o / r for o, r in zip(ours, ref) if r]
    return f"{min(ratios):.3f}-{max(ratios):.3f}" if ratios else "n/a"


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env={**os.environ, **(env or {})}, timeout=timeout)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}")
    return p
