#!/usr/bin/env python3
"""What a GPU machine proves about an installed step35 + GPU plugin: one summary.

Run by ``scripts/gpu-check.sh`` after it has built and installed the core and
the CUDA plugin (see backends/README.md). Each check records PASS, FAIL or
SKIP with its numbers; one failing check never hides the others. Checks:

- ``device``: ``step35 info`` lists the GPU device (CUDA0 by default);
- ``logits``: the F32 tiny model with every layer on the GPU vs the CPU
  backend, over the prompt and the greedy continuation: normalized mean
  squared error (NMSE = sum((gpu-cpu)^2) / sum(cpu^2)) within ``NMSE_TOL``;
- ``greedy``: the same greedy tokens on the GPU and the CPU;
- ``bench``: ``step35 bench`` on the mid model (Q4_K_S) with ``-ngl 99`` and
  the seeds' flags (``-c 16384 -b 2048 -ub 2048 -fa on``), plus a CPU row;
- ``fit``: the memory plan's figure for the GPU vs what the GPU really used
  (``nvidia-smi`` before/after, and llama.cpp's own breakdown).

``--dry-run`` runs every step that needs no GPU (model building, the CPU
side of each comparison, the bench's CPU row, the plan) and marks the rest
SKIP: a rehearsal for the machine that has one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import step35
from step35 import testing

# Tolerances, stated once. F32 weights on both sides; the GPU's flash
# attention and matrix kernels round differently from the CPU's.
NMSE_TOL = 1e-4
PROMPT = "Once upon a time, in a land far away,"
N_GEN = 48
CONTEXT = {"n_ctx": 512, "flash_attn": "on"}
# The seeds' llama-batched-bench settings (DESIGN.md), short rows.
BENCH_FLAGS = ["-c", "16384", "-b", "2048", "-ub", "2048", "-fa", "on", "-npp", "2048", "-ntg", "128", "-npl", "1"]
CPU_BENCH_FLAGS = ["-c", "4096", "-b", "2048", "-ub", "512", "-fa", "on", "-npp", "512", "-ntg", "32", "-npl", "1"]
FIT_CONTEXT = {"n_ctx": 16384, "n_batch": 2048, "n_ubatch": 2048, "flash_attn": "on"}


class Report:
    """Results by check name, printed as one table and saved as JSON."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        t0 = time.perf_counter()
        try:
            detail = fn()
        except Skip as e:
            self.rows.append({"check": name, "status": "SKIP", "detail": str(e)})
            return None
        except Exception as e:  # a failed check is reported with its traceback, the others still run
            self.rows.append({"check": name, "status": "FAIL", "detail": f"{type(e).__name__}: {e}",
                              "traceback": traceback.format_exc()})
            print(traceback.format_exc(), file=sys.stderr)
            return None
        status = "PASS" if detail.pop("ok", True) else "FAIL"
        detail["seconds"] = round(time.perf_counter() - t0, 1)
        self.rows.append({"check": name, "status": status, **detail})
        return detail

    def print(self) -> None:
        print("\n=== step35 GPU check: summary")
        for r in self.rows:
            extra = {k: v for k, v in r.items() if k not in ("check", "status", "traceback")}
            print(f"{r['status']:4}  {r['check']:8}  {json.dumps(extra, default=str)}")
        print(f"=== {sum(r['status'] == 'PASS' for r in self.rows)} passed, "
              f"{sum(r['status'] == 'FAIL' for r in self.rows)} failed, "
              f"{sum(r['status'] == 'SKIP' for r in self.rows)} skipped")


class Skip(Exception):
    """A check that cannot run here (dry run, no GPU)."""


def gpu_device(name: str) -> dict[str, Any] | None:
    for b in step35.backends().loaded:
        for d in b.devices:
            if d.get("name") == name:
                return {"backend": b.name, "source": b.source, **d}
    return None


def check_device(args: argparse.Namespace) -> dict[str, Any]:
    r = subprocess.run([sys.executable, "-m", "step35", "info"], capture_output=True, text=True, timeout=120)
    print(r.stdout)
    report = step35.backends()
    failed = {f.name: f.reason for f in report.failed}
    dev = gpu_device(args.device)
    if args.dry_run and dev is None:
        raise Skip(f"dry run: no {args.device} here (backends not loaded: {failed or 'none'})")
    return {"ok": dev is not None and f"device {args.device}:" in r.stdout, "device": dev,
            "cpu_variant": report.cpu_variant, "not_loaded": failed}


def _run_tiny(path: Path, devices: list[str], n_gpu_layers: int) -> dict[str, Any]:
    with step35.Model(path, n_gpu_layers=n_gpu_layers, devices=devices, context=CONTEXT) as m:
        ids = m.tokenize(PROMPT)
        done = m.generate(PROMPT, max_tokens=N_GEN, temperature=0.0)
        with m.new_context(CONTEXT) as ctx:
            logits = ctx.logits(ids + done.tokens)
            parts = ctx.memory_breakdown()
    return {"ids": ids, "tokens": list(done.tokens), "logits": np.asarray(logits, dtype=np.float64), "parts": parts}


def check_tiny(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    import dataclasses

    spec = dataclasses.replace(testing.SIZES["tiny"], name="tiny32", dtype="f32", embd_dtype="f32", head_dim=32)
    path = testing.model_path(spec)
    cpu = _run_tiny(path, [], 0)
    gpu = None if args.dry_run and gpu_device(args.device) is None else _run_tiny(path, [args.device], -1)
    state["tiny"] = (cpu, gpu)
    return {"model": path.name, "positions": int(cpu["logits"].shape[0]), "greedy_tokens": len(cpu["tokens"]),
            "gpu_run": gpu is not None}


def check_logits(state: dict[str, Any]) -> dict[str, Any]:
    cpu, gpu = state["tiny"]
    if gpu is None:
        raise Skip(f"dry run: CPU reference computed ({cpu['logits'].shape[0]} positions), no GPU to compare")
    n = min(len(gpu["logits"]), len(cpu["logits"]))
    a, b = gpu["logits"][:n], cpu["logits"][:n]
    nmse = float(((a - b) ** 2).sum() / (b ** 2).sum())
    on_gpu = sum(p["model"] for p in gpu["parts"] if (p.get("device") or "").startswith(("CUDA", "Vulkan")))
    return {"ok": nmse <= NMSE_TOL and on_gpu > 0, "nmse": nmse, "tolerance": NMSE_TOL, "positions": n,
            "max_abs_diff": float(np.abs(a - b).max()), "weights_on_gpu_bytes": on_gpu}


def check_greedy(state: dict[str, Any]) -> dict[str, Any]:
    cpu, gpu = state["tiny"]
    if gpu is None:
        raise Skip(f"dry run: CPU greedy tokens computed ({len(cpu['tokens'])}), no GPU to compare")
    same = gpu["tokens"] == cpu["tokens"]
    first = next((i for i, (x, y) in enumerate(zip(gpu["tokens"], cpu["tokens"])) if x != y), None)
    detail: dict[str, Any] = {"ok": same, "tokens": len(cpu["tokens"]), "first_difference": first}
    if first is not None:  # how close the CPU's top two were there (a near-tie explains a flip)
        row = cpu["logits"][len(cpu["ids"]) + first - 1]
        top2 = np.sort(row)[-2:]
        detail["cpu_top2_margin_there"] = float(top2[1] - top2[0])
    return detail


def _bench(path: Path, flags: list[str], timeout: int) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-m", "step35", "bench", "-m", str(path), *flags, "--output-format", "json"]
    print("$", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"step35 bench exited {r.returncode}: {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def check_bench(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    path = testing.bench_model_path("mid")
    state["mid"] = path
    cpu_rows = _bench(path, ["-dev", "none", *CPU_BENCH_FLAGS], 600)
    out: dict[str, Any] = {"model": path.name, "cpu": cpu_rows}
    if args.dry_run and gpu_device(args.device) is None:
        raise Skip(f"dry run: CPU row {json.dumps(cpu_rows)}; GPU rows need {args.device}")
    out["gpu"] = _bench(path, ["-ngl", "99", "-dev", args.device, *BENCH_FLAGS], 600)
    out["ok"] = all(r["speed_tg"] > 0 and r["speed_pp"] > 0 for r in out["gpu"])
    return out


def _nvidia_used_mib() -> int | None:
    if shutil.which("nvidia-smi") is None:
        return None
    r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                       capture_output=True, text=True, timeout=30)
    return int(r.stdout.strip().splitlines()[0]) if r.returncode == 0 and r.stdout.strip() else None


def check_fit(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    from step35.tools import fit

    path = state.get("mid") or testing.bench_model_path("mid")
    have_gpu = gpu_device(args.device) is not None
    devices = [args.device] if have_gpu else []
    p = fit.plan(path, n_ctx=FIT_CONTEXT["n_ctx"], n_batch=FIT_CONTEXT["n_batch"], n_ubatch=FIT_CONTEXT["n_ubatch"],
                 flash_attn=FIT_CONTEXT["flash_attn"], n_gpu_layers=99, devices=devices)
    print(p)
    pools = {pool.name: {"need": pool.need, "weights": pool.weights, "kv": pool.kv, "compute": pool.compute,
                         "shares_ram": pool.shares_ram} for pool in p.pools}
    if not have_gpu:
        raise Skip(f"dry run: plan made ({json.dumps(pools)}), no {args.device} to measure")
    planned = pools.get(args.device)
    before = _nvidia_used_mib()
    with step35.Model(path, n_gpu_layers=99, devices=devices, context=FIT_CONTEXT) as m, \
            m.new_context(FIT_CONTEXT) as ctx:
        ctx.logits(m.tokenize(PROMPT * 8))  # one decode: compute buffers in use
        after = _nvidia_used_mib()
        parts = ctx.memory_breakdown()
    ggml_gpu = sum(p_["model"] + p_["context"] + p_["compute"] for p_ in parts
                   if (p_.get("device") or p_.get("buffer_type") or "").startswith(args.device))
    used = (after - before) * (1 << 20) if before is not None and after is not None else None
    detail: dict[str, Any] = {"planned": planned, "llama_breakdown_bytes": ggml_gpu, "nvidia_smi_delta_bytes": used,
                              "pools": pools}
    if planned:
        detail["planned_over_breakdown"] = round(planned["need"] / ggml_gpu, 4) if ggml_gpu else None
        detail["planned_over_nvidia_smi"] = round(planned["need"] / used, 4) if used else None
    # The plan must count the GPU as its own pool and be within 10% of llama.cpp's own figure.
    detail["ok"] = bool(planned) and bool(ggml_gpu) and abs(planned["need"] / ggml_gpu - 1) <= 0.10
    return detail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="CUDA0", help="the GPU device to check (as step35 info names it)")
    ap.add_argument("--dry-run", action="store_true", help="no GPU here: run what needs none, skip the rest")
    ap.add_argument("--json", type=Path, help="also write the summary here")
    args = ap.parse_args()
    os.environ.setdefault("STEP35_CACHE", str(Path.home() / ".cache" / "step35-gpu-check"))
    report = Report()
    state: dict[str, Any] = {}
    report.run("device", lambda: check_device(args))
    report.run("tiny", lambda: check_tiny(args, state))  # the F32 tiny model on the CPU (and the GPU)
    if "tiny" in state:
        report.run("logits", lambda: check_logits(state))
        report.run("greedy", lambda: check_greedy(state))
    report.run("bench", lambda: check_bench(args, state))
    report.run("fit", lambda: check_fit(args, state))
    report.print()
    if args.json:
        args.json.write_text(json.dumps(report.rows, indent=2, default=str))
    return 1 if any(r["status"] == "FAIL" for r in report.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
