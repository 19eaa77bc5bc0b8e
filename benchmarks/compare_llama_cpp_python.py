"""Streaming generation throughput: step35 against llama-cpp-python (PyPI, same upstream llama.cpp).

Same model, prompt, greedy sampling, threads, context and batch sizes; each run
a fresh process, alternating llama-cpp-python / step35 for --reps repetitions.
Both are timed the same way, from Python, as a user sees a stream: from the
first streamed piece to the last one, so (pieces - 1) / that time. Neither
includes loading or the prompt. Prints the medians and the ratio.

llama-cpp-python is not a dependency of step35: point --lcp-python at an
interpreter that has it (pip install llama-cpp-python==0.3.36; it builds
from source, 10-20 minutes on 2 cores).

    python benchmarks/compare_llama_cpp_python.py --lcp-python .venv-lcp/bin/python --size tiny [--f32]
    python benchmarks/compare_llama_cpp_python.py --lcp-python .venv-lcp/bin/python --size mid -n 128
    python benchmarks/compare_llama_cpp_python.py --lcp-python .venv-lcp/bin/python --quick
"""

from __future__ import annotations

import argparse
import json
import sys

from _common import add_generation_args, generation_setup, median, run

LCP_RUN = r"""
import json, sys, time
import llama_cpp
a = json.loads(sys.argv[1])
llm = llama_cpp.Llama(model_path=a["model"], n_ctx=a["ctx"], n_batch=a["b"], n_ubatch=a["ub"], n_threads=a["t"],
                      n_threads_batch=a["t"], verbose=False)
times = []
for chunk in llm.create_completion(a["prompt"], max_tokens=a["n"], temperature=0.0, stream=True):
    times.append(time.perf_counter())
n = len(times)
print(json.dumps({"version": llama_cpp.__version__, "pieces": n,
                  "tps": (n - 1) / (times[-1] - times[0]) if n > 1 else 0.0}))
"""

STEP35_RUN = r"""
import json, sys, time
import step35
a = json.loads(sys.argv[1])
with step35.Model(a["model"], context={"n_ctx": a["ctx"], "n_batch": a["b"], "n_ubatch": a["ub"],
                                        "n_threads": a["t"]}) as m:
    times = []
    for piece in m.generate(a["prompt"], max_tokens=a["n"], temperature=0, stream=True):
        times.append(time.perf_counter())
    n = len(times)
    print(json.dumps({"version": step35.__version__, "pieces": n,
                      "tps": (n - 1) / (times[-1] - times[0]) if n > 1 else 0.0}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lcp-python", required=True, help="a Python interpreter with llama-cpp-python installed")
    add_generation_args(ap)
    a = ap.parse_args()
    threads, model = generation_setup(a)
    args = json.dumps({"model": model, "prompt": a.prompt, "n": a.n, "ctx": a.ctx, "b": a.b, "ub": a.ub,
                       "t": threads})
    cmds = {"llama-cpp-python": [a.lcp_python, "-c", LCP_RUN, args], "step35": [sys.executable, "-c", STEP35_RUN, args]}
    res: dict[str, list[dict]] = {k: [] for k in cmds}
    for rep in range(a.reps):
        order = list(cmds) if rep % 2 == 0 else list(cmds)[::-1]
        for name in order:
            res[name].append(json.loads(run(cmds[name]).stdout.strip().splitlines()[-1]))
        print(f"rep {rep + 1}/{a.reps} done", file=sys.stderr)
    lcp = median([r["tps"] for r in res["llama-cpp-python"]])
    ours = median([r["tps"] for r in res["step35"]])
    print(f"model: {model}\nthreads: {threads}, n: {a.n}, reps: {a.reps} (alternating), medians, "
          f"both streaming, greedy\n")
    print("|                                  | pieces | tok/s |")
    print("|----------------------------------|-------:|------:|")
    v = res["llama-cpp-python"][0]["version"]
    print(f"| llama-cpp-python {v:<16}| {res['llama-cpp-python'][0]['pieces']:6d} | {lcp:5.1f} |")
    print(f"| step35 {res['step35'][0]['version']:<26}| {res['step35'][0]['pieces']:6d} | {ours:5.1f} |")
    print(f"\nratio step35 / llama-cpp-python: {ours / lcp:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
