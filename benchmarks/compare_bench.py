"""step35.tools.bench against llama.cpp's own llama-batched-bench, same model, same run.

Builds llama-batched-bench from the same pinned, patched source and CMake
configuration as the wheel (benchmarks/build_native.sh), then alternates
native / step35 runs (each a fresh process) for --reps repetitions and prints,
per row, the median S_PP and S_TG of each and their ratio (step35 / native).

    python benchmarks/compare_bench.py --size tiny
    python benchmarks/compare_bench.py --size mid --quant Q4_K_S -npp 128,512 -ntg 64 -npl 1,4
    python benchmarks/compare_bench.py --quick      # CI: proves the script works, numbers meaningless
"""

from __future__ import annotations

import argparse
import sys

from _common import add_bench_rows_args, bench_model, median, native_bin, pair_spread, parse_jsonl, run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_rows_args(ap, ntg="128")
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-b", default="2048")
    ap.add_argument("-ub", default="512")
    ap.add_argument("-fa", default="auto")
    ap.add_argument("--reps", type=int, default=7, help="alternating repetitions")
    ap.add_argument("--quick", action="store_true", help="tiny rows, 1 repetition (CI smoke run)")
    a = ap.parse_args()
    if a.quick:
        a.npp, a.ntg, a.npl, a.reps = "16", "4", "1,2", 1

    from step35.context import default_threads

    threads = str(a.threads or default_threads())
    model = a.model or str(bench_model(a.size, a.quant))
    bindir = native_bin()
    common = ["-m", model, "-npp", a.npp, "-ntg", a.ntg, "-npl", a.npl, "-t", threads, "-b", a.b, "-ub", a.ub,
              "-fa", a.fa]
    native_cmd = [str(bindir / "llama-batched-bench"), *common, "-c", "0", "--output-format", "jsonl"]
    ours_cmd = [sys.executable, "-m", "step35", "bench", *common, "--output-format", "jsonl"]
    # llama-batched-bench with -c 0 takes the model's training context; give step35 the same.
    import step35

    with step35.Model(model, vocab_only=True) as m:
        ours_cmd += ["-c", str(m.n_ctx_train)]

    samples: dict[str, dict[tuple[int, int, int], list[dict]]] = {"native": {}, "step35": {}}
    for rep in range(a.reps):
        for name, cmd in (("native", native_cmd), ("step35", ours_cmd)) if rep % 2 == 0 else (
                ("step35", ours_cmd), ("native", native_cmd)):
            out = run(cmd).stdout
            for key, row in parse_jsonl(out).items():
                samples[name].setdefault(key, []).append(row)
        print(f"rep {rep + 1}/{a.reps} done", file=sys.stderr)

    print(f"model: {model}\nthreads: {threads}, reps: {a.reps} (alternating), medians; ratio = step35 / native "
          "(its spread: the min-max of the per-repetition pairs)\n")
    print("|   PP |   TG |   B | S_PP native | S_PP step35 | ratio | spread | S_TG native | S_TG step35 | ratio "
          "| spread |")
    print("|-----:|-----:|----:|------------:|------------:|------:|-------:|------------:|------------:|------:"
          "|-------:|")
    worst = float("inf")
    for key in sorted(samples["native"]):
        n, o = samples["native"][key], samples["step35"].get(key, [])
        spp_n, spp_o = median([r["speed_pp"] for r in n]), median([r["speed_pp"] for r in o])
        stg_n, stg_o = median([r["speed_tg"] for r in n]), median([r["speed_tg"] for r in o])
        r_pp, r_tg = spp_o / spp_n, stg_o / stg_n
        worst = min(worst, r_pp, r_tg)
        pp_spread = pair_spread([r["speed_pp"] for r in o], [r["speed_pp"] for r in n])
        tg_spread = pair_spread([r["speed_tg"] for r in o], [r["speed_tg"] for r in n])
        print(f"| {key[0]:4d} | {key[1]:4d} | {key[2]:3d} | {spp_n:11.1f} | {spp_o:11.1f} | {r_pp:5.3f} | {pp_spread} | "
              f"{stg_n:11.1f} | {stg_o:11.1f} | {r_tg:5.3f} | {tg_spread} |")
    print(f"\nworst ratio: {worst:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
