"""Generation throughput: step35's Model.generate against llama.cpp's llama-completion.

Same model, same prompt, same settings (greedy, same threads, context and
batch sizes), alternating native / step35 runs (each a fresh process) for
--reps repetitions. Prints the median tokens/s of each and the ratio.

Definitions (both include sampling, neither includes model loading):
  native  = eval runs / (eval time + sampling time)   from llama-completion's perf log
  step35  = generated tokens / generation time          from Completion.stats
llama-completion's decode-only figure (eval runs / eval time) is printed too.

    python benchmarks/compare_generate.py --size tiny -n 256
    python benchmarks/compare_generate.py --size mid --quant Q4_K_S -n 128
    python benchmarks/compare_generate.py --quick
"""

from __future__ import annotations

import argparse
import json
import re
import sys

from _common import add_generation_args, generation_setup, median, native_bin, pair_spread, run

STEP35_RUN = r"""
import json, sys, step35
a = json.loads(sys.argv[1])
with step35.Model(a["model"], context={"n_ctx": a["ctx"], "n_batch": a["b"], "n_ubatch": a["ub"],
                                        "n_threads": a["t"], "flash_attn": a["fa"]}) as m:
    out = m.generate(a["prompt"], max_tokens=a["n"], temperature=0, stream=a["stream"])
    if a["stream"]:
        for _ in out:
            pass
    s = out.stats
    print(json.dumps({"n_gen": s.generated_tokens, "gen_ms": s.generation_ms, "tps": s.generation_tps,
                      "prompt_tps": s.prompt_tps, "n_prompt": s.prompt_tokens}))
"""

PERF = {
    "sampling": re.compile(r"sampling time =\s*([\d.]+) ms"),
    "eval": re.compile(r"\s eval time =\s*([\d.]+) ms /\s*(\d+) runs"),
    "prompt": re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens"),
}


def parse_native(log: str) -> dict[str, float]:
    s = PERF["sampling"].search(log)
    e = PERF["eval"].search(log)
    p = PERF["prompt"].search(log)
    if not (s and e and p):
        raise SystemExit("could not find llama-completion's perf lines:\n" + log[-3000:])
    t_s, t_e, n_e = float(s[1]), float(e[1]), int(e[2])
    return {"n_gen": n_e, "tps": n_e / ((t_e + t_s) / 1e3), "decode_tps": n_e / (t_e / 1e3),
            "prompt_tps": int(p[2]) / (float(p[1]) / 1e3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generation_args(ap)
    ap.add_argument("-fa", default="auto")
    ap.add_argument("--stream", action="store_true", help="time step35 as a stream (one Python step per piece)")
    a = ap.parse_args()
    threads, model = generation_setup(a)
    bindir = native_bin()
    native_cmd = [str(bindir / "llama-completion"), "-m", model, "-p", a.prompt, "-n", str(a.n), "--temp", "0",
                  "-c", str(a.ctx), "-b", str(a.b), "-ub", str(a.ub), "-fa", a.fa, "-t", str(threads),
                  "-no-cnv", "--ignore-eos", "--no-display-prompt", "--simple-io"]
    args = json.dumps({"model": model, "prompt": a.prompt, "n": a.n, "ctx": a.ctx, "b": a.b, "ub": a.ub,
                       "t": threads, "fa": a.fa, "stream": a.stream})
    ours_cmd = [sys.executable, "-c", STEP35_RUN, args]
    res: dict[str, list[dict[str, float]]] = {"native": [], "step35": []}
    for rep in range(a.reps):
        order = [("native", native_cmd), ("step35", ours_cmd)]
        for name, cmd in order if rep % 2 == 0 else order[::-1]:
            p = run(cmd)
            res[name].append(parse_native(p.stdout + p.stderr) if name == "native" else json.loads(
                p.stdout.strip().splitlines()[-1]))
        print(f"rep {rep + 1}/{a.reps} done", file=sys.stderr)
    n_tps = median([r["tps"] for r in res["native"]])
    n_dec = median([r["decode_tps"] for r in res["native"]])
    o_tps = median([r["tps"] for r in res["step35"]])
    print(f"model: {model}\nthreads: {threads}, n: {a.n}, reps: {a.reps} (alternating), medians, "
          f"step35 {'streaming' if a.stream else 'non-streaming'}\n")
    print("|                         | tokens | tok/s |")
    print("|-------------------------|-------:|------:|")
    print(f"| llama-completion        | {res['native'][0]['n_gen']:6.0f} | {n_tps:5.1f} |")
    print(f"| llama-completion decode | {res['native'][0]['n_gen']:6.0f} | {n_dec:5.1f} |")
    print(f"| step35 generate         | {res['step35'][0]['n_gen']:6.0f} | {o_tps:5.1f} |")
    spread = pair_spread([r["tps"] for r in res["step35"]], [r["tps"] for r in res["native"]])
    print(f"\nratio step35 / llama-completion: {o_tps / n_tps:.3f} (per-repetition pairs: {spread})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
