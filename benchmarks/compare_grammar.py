"""Constrained generation: step35 under a JSON Schema against llama-completion --json-schema.

Three runs on the same model and prompt, greedy, same threads and context,
alternating for --reps repetitions (each a fresh process):

  native      llama-completion --json-schema SCHEMA (llama.cpp's common sampler:
              sample, check the token against the grammar, resample on rejection)
  step35      Model.generate(grammar=json_schema_to_grammar(SCHEMA)) (the same
              converter and grammar sampler, the same sample-then-check order)
  step35 free Model.generate without a grammar

Tokens/s include sampling (and the grammar), not loading; definitions as in
compare_generate.py. The schema is a long array of small integers, so that
the model writes -n tokens inside the grammar before it could end. Prints
medians with min-max spreads and the ratios step35 / native and
step35 / step35 free.

    python benchmarks/compare_grammar.py --size mid --quant Q4_K_S -n 128 --reps 7
    python benchmarks/compare_grammar.py --quick
"""

from __future__ import annotations

import argparse
import json
import sys

from _common import add_generation_args, generation_setup, median, native_bin, run
from compare_generate import parse_native

SCHEMA = {"type": "object", "properties": {
    "values": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999},
               "minItems": 400, "maxItems": 400}},
    "required": ["values"], "additionalProperties": False}

STEP35_RUN = r"""
import json, sys, step35
a = json.loads(sys.argv[1])
grammar = step35.json_schema_to_grammar(a["schema"]) if a["schema"] else None
with step35.Model(a["model"], context={"n_ctx": a["ctx"], "n_batch": a["b"], "n_ubatch": a["ub"],
                                        "n_threads": a["t"], "flash_attn": a["fa"]}) as m:
    out = m.generate(a["prompt"], max_tokens=a["n"], temperature=0, grammar=grammar)
    s = out.stats
    print(json.dumps({"n_gen": s.generated_tokens, "tps": s.generation_tps, "text": out.text[:60]}))
"""


def spread(xs: list[float]) -> str:
    return f"{median(xs):6.1f} ({min(xs):.1f}-{max(xs):.1f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_generation_args(ap)
    ap.add_argument("-fa", default="auto")
    a = ap.parse_args()
    threads, model = generation_setup(a)
    bindir = native_bin()
    schema = json.dumps(SCHEMA)
    native_cmd = [str(bindir / "llama-completion"), "-m", model, "-p", a.prompt, "-n", str(a.n), "--temp", "0",
                  "-c", str(a.ctx), "-b", str(a.b), "-ub", str(a.ub), "-fa", a.fa, "-t", str(threads),
                  "-no-cnv", "--no-display-prompt", "--simple-io", "--json-schema", schema]

    def ours(constrained: bool) -> list[str]:
        args = {"model": model, "prompt": a.prompt, "n": a.n, "ctx": a.ctx, "b": a.b, "ub": a.ub, "t": threads,
                "fa": a.fa, "schema": SCHEMA if constrained else None}
        return [sys.executable, "-c", STEP35_RUN, json.dumps(args)]

    runs = [("native", native_cmd), ("step35", ours(True)), ("step35 free", ours(False))]
    res: dict[str, list[dict[str, float]]] = {name: [] for name, _ in runs}
    for rep in range(a.reps):
        order = runs[rep % len(runs):] + runs[:rep % len(runs)]  # rotate who goes first
        for name, cmd in order:
            p = run(cmd)
            res[name].append(parse_native(p.stdout + p.stderr) if name == "native"
                             else json.loads(p.stdout.strip().splitlines()[-1]))
        print(f"rep {rep + 1}/{a.reps} done", file=sys.stderr)
    tps = {name: [r["tps"] for r in rs] for name, rs in res.items()}
    print(f"model: {model}\nthreads: {threads}, n: {a.n}, reps: {a.reps} (rotating order), "
          f"medians (min-max)\nschema: {schema}\n")
    print("| run                                    | tokens | tok/s |")
    print("|----------------------------------------|-------:|------:|")
    print(f"| llama-completion --json-schema         | {res['native'][0]['n_gen']:6.0f} | {spread(tps['native'])} |")
    print(f"| step35 generate(grammar=schema)        | {res['step35'][0]['n_gen']:6.0f} | {spread(tps['step35'])} |")
    print(f"| step35 generate, no grammar            | {res['step35 free'][0]['n_gen']:6.0f} "
          f"| {spread(tps['step35 free'])} |")
    print(f"\nstep35 output starts: {res['step35'][0]['text']!r}")
    print(f"ratio step35 constrained / llama-completion constrained: {median(tps['step35']) / median(tps['native']):.3f}")
    print(f"ratio step35 constrained / step35 unconstrained:        "
          f"{median(tps['step35']) / median(tps['step35 free']):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
