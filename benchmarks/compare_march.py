"""Portable build (all CPU variants, chosen at run time) against a -march=native build.

Both are llama.cpp's llama-batched-bench from the same pinned, patched source
and the same CMake configuration except GGML_NATIVE=ON / one CPU backend for
the native one (benchmarks/build_native.sh --native). The portable build is
exactly what the wheel ships. Alternating runs, medians, ratio portable / native.

    python benchmarks/compare_march.py --size mid -npp 512 -ntg 32 -npl 1,4
    python benchmarks/compare_march.py --quick
"""

from __future__ import annotations

import argparse
import sys

from _common import bench_model, median, native_bin, run
from compare_bench import parse_jsonl


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="mid")
    ap.add_argument("--quant", default=None)
    ap.add_argument("-m", "--model")
    ap.add_argument("-npp", default="512")
    ap.add_argument("-ntg", default="32")
    ap.add_argument("-npl", default="1,4")
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.size, a.npp, a.ntg, a.npl, a.reps = "tiny", "16", "4", "1", 1

    from step35.context import default_threads

    threads = str(a.threads or default_threads())
    model = a.model or str(bench_model(a.size, a.quant))
    builds = {"portable": native_bin(), "native": native_bin(native=True)}
    args = ["-m", model, "-npp", a.npp, "-ntg", a.ntg, "-npl", a.npl, "-t", threads, "-c", "0",
            "--output-format", "jsonl"]
    samples: dict[str, dict] = {k: {} for k in builds}
    for rep in range(a.reps):
        order = list(builds.items()) if rep % 2 == 0 else list(builds.items())[::-1]
        for name, bindir in order:
            for key, row in parse_jsonl(run([str(bindir / "llama-batched-bench"), *args]).stdout).items():
                samples[name].setdefault(key, []).append(row)
        print(f"rep {rep + 1}/{a.reps} done", file=sys.stderr)
    print(f"model: {model}\nthreads: {threads}, reps: {a.reps}, medians; ratio = portable / -march=native\n")
    print("|   PP |   TG |   B | S_PP native | S_PP portable | ratio | S_TG native | S_TG portable | ratio |")
    print("|-----:|-----:|----:|------------:|--------------:|------:|------------:|--------------:|------:|")
    for key in sorted(samples["native"]):
        n, p = samples["native"][key], samples["portable"][key]
        pp_n, pp_p = median([r["speed_pp"] for r in n]), median([r["speed_pp"] for r in p])
        tg_n, tg_p = median([r["speed_tg"] for r in n]), median([r["speed_tg"] for r in p])
        print(f"| {key[0]:4d} | {key[1]:4d} | {key[2]:3d} | {pp_n:11.1f} | {pp_p:13.1f} | {pp_p / pp_n:5.3f} | "
              f"{tg_n:11.1f} | {tg_p:13.1f} | {tg_p / tg_n:5.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
