"""Decode memory-bandwidth efficiency: weight bytes read per generated token / time, against the machine.

For one generated token a Step 3.5 model reads every non-expert weight, the
shared expert, and n_expert_used of n_expert routed experts per MoE layer (the
token embedding contributes one row, not the matrix). This script computes
those "active bytes" exactly from the GGUF tensor table, measures decode
tokens/s of step35 and of native llama-completion (same pin, same settings),
measures the machine's memory bandwidth in the same run (a large NumPy copy:
bytes read + written / time, best of several), and prints each side's
effective bandwidth and its fraction of the machine's.

    python benchmarks/bandwidth.py --size mid -n 64
    python benchmarks/bandwidth.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from _common import bench_model, median, native_bin, run
from compare_generate import STEP35_RUN, parse_native


def machine_bandwidth(gib: float = 1.0, reps: int = 5) -> float:
    """Bytes/s of a large memory copy (read + write), best of ``reps``."""
    n = int(gib * (1 << 30)) // 8
    src = np.ones(n, dtype=np.float64)
    dst = np.empty_like(src)
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        np.copyto(dst, src)
        dt = time.perf_counter() - t
        best = max(best, 2 * src.nbytes / dt)
    return best


def active_bytes(path: str) -> tuple[int, int]:
    """(weight bytes read per decoded token, total weight bytes) from the GGUF header."""
    from step35.gguf import read_header

    h = read_header(path)
    arch = h.architecture
    n_expert = int(h.metadata[f"{arch}.expert_count"])
    n_used = int(h.metadata[f"{arch}.expert_used_count"])
    total = active = 0
    for t in h.tensors:
        b = t.nbytes
        total += b
        if t.name == "token_embd.weight":
            active += b // t.shape[-1]  # one row per token
        elif "_exps." in t.name:
            active += b * n_used // n_expert
        elif ".nextn." in t.name or "nextn" in t.name:
            pass  # MTP head: not used by plain decoding
        else:
            active += b
    return active, total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="mid")
    ap.add_argument("--quant", default=None)
    ap.add_argument("-m", "--model")
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.size, a.n, a.reps = "tiny", 8, 1

    from step35.context import default_threads

    threads = a.threads or default_threads()
    model = a.model or str(bench_model(a.size, a.quant))
    act, total = active_bytes(model)
    bindir = native_bin()
    prompt = "The history of the city begins"
    native_cmd = [str(bindir / "llama-completion"), "-m", model, "-p", prompt, "-n", str(a.n), "--temp", "0",
                  "-c", "4096", "-t", str(threads), "-no-cnv", "--ignore-eos", "--no-display-prompt", "--simple-io"]
    args = json.dumps({"model": model, "prompt": prompt, "n": a.n, "ctx": 4096, "b": 2048, "ub": 512,
                       "t": threads, "fa": "auto", "stream": False})
    bw, native_tps, ours_tps = [machine_bandwidth(0.25 if a.quick else 1.0)], [], []
    ours_cmd = [sys.executable, "-c", STEP35_RUN, args]
    for rep in range(a.reps):
        for name in (("native", "ours") if rep % 2 == 0 else ("ours", "native")):
            if name == "native":
                native_tps.append(parse_native(_both(native_cmd))["decode_tps"])
            else:
                ours_tps.append(json.loads(run(ours_cmd).stdout.strip().splitlines()[-1])["tps"])
        print(f"rep {rep + 1}/{a.reps} done", file=sys.stderr)
    bw.append(machine_bandwidth(0.25 if a.quick else 1.0))  # measured before and after, not between runs
    machine = median(bw)
    print(f"model: {model}\nweights: {total / 1e6:.1f} MB, read per token: {act / 1e6:.1f} MB; threads {threads}\n")
    print("(llama-completion: decode time only; step35: decode + sampling)\n")
    print("|                  | tok/s | GB/s of weights | share of machine |")
    print("|------------------|------:|----------------:|-----------------:|")
    for name, tps in (("llama-completion", median(native_tps)), ("step35 generate", median(ours_tps))):
        gbs = act * tps / 1e9
        print(f"| {name:16s} | {tps:5.1f} | {gbs:15.2f} | {gbs / (machine / 1e9):16.1%} |")
    print(f"\nmachine memory bandwidth (NumPy copy, read+write): {machine / 1e9:.2f} GB/s")
    return 0


def _both(cmd: list[str]) -> str:
    p = run(cmd)
    return p.stdout + p.stderr


if __name__ == "__main__":
    sys.exit(main())
