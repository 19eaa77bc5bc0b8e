"""Multi-token prediction: step35's MTP drafting against llama.cpp's own, draft 0 to 3.

The model is the built-in ``mid-mtp`` (mid, Q4_K_S, three MTP heads that agree
with its token-map trunk: acceptance near 1; the attention and FFN weights are
there and computed like any model of that shape). For each draft length
0, 1, 2, 3:

* llama.cpp: ``llama-server`` built from the same pinned source with the
  wheel's configuration (benchmarks/build_native.sh --server), started with
  ``--spec-type draft-mtp --spec-draft-n-max N --spec-draft-n-min 0
  --spec-draft-p-min 0`` (no speculative flags for 0), one slot, the same
  context, batch sizes and threads; one ``/completion`` request per repetition
  (temperature 0, ignore_eos, cache_prompt false). Its tok/s is the server's
  own ``timings.predicted_per_second`` (generated tokens - 1 over the time from
  the first to the last), its acceptance ``draft_n_accepted / draft_n``.
* step35: ``Model(path, mtp=True).generate(prompt, max_tokens=N, temperature=0,
  draft=D)`` in this process, on a cleared context; tok/s measured the same
  way from its stats ((generated - 1) over generation time after the first
  token), acceptance from ``stats.draft``.

The two alternate within each repetition (the order flips every repetition);
medians over --reps (default 7) with min-max spreads, the ratio step35 /
llama.cpp per draft length, and each one's speed-up over its own draft 0.

Bytes per emitted token: a verification batch of b tokens reads the dense
weights once and, in each MoE layer, the experts its tokens are routed to. The
table gives the expected bytes of the target's weights read per batch under
uniform routing (E[distinct experts of b tokens choosing k of X] =
X(1 - (1 - k/X)^b)), divided by the tokens each step emits (1 + mean accepted):
the trade-off of a bigger verify batch against more tokens per step. The MTP
heads' own reads (one head per draft position) are listed separately.

    python benchmarks/compare_mtp.py                # mid-mtp Q4_K_S, 128 tokens, 7 reps
    python benchmarks/compare_mtp.py --quick        # CI: tiny-mtp, 16 tokens, 1 rep

Exit status 0 when both ran every draft length and gave the same text at
temperature 0; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, bench_model  # noqa: E402
from compare_serve import Server, ServerError, free_port, kill_all, llama_server_binary  # noqa: E402


def server_cmd(binary: Path, model: str, a: argparse.Namespace, threads: int, port: int, draft: int) -> list[str]:
    cmd = [str(binary), "-m", model, "--host", "127.0.0.1", "--port", str(port), "-np", "1", "-c", str(a.ctx),
           "-b", str(a.b), "-ub", str(a.ub), "-t", str(threads), "-tb", str(threads), "--no-webui"]
    if draft:
        cmd += ["--spec-type", "draft-mtp", "--spec-draft-n-max", str(draft), "--spec-draft-n-min", "0",
                "--spec-draft-p-min", "0"]
    return cmd


def native_run(server: Server, prompt: str, n: int) -> dict[str, Any]:
    body = json.dumps({"prompt": prompt, "n_predict": n, "temperature": 0, "ignore_eos": True,
                       "cache_prompt": False, "seed": 1}).encode()
    req = urllib.request.Request(server.base_url + "/completion", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:  # noqa: S310 (loopback)
        d = json.loads(r.read())
    t = d["timings"]
    drafted = int(t.get("draft_n", 0) or 0)
    return {"tps": float(t["predicted_per_second"]), "n": int(t["predicted_n"]), "drafted": drafted,
            "accepted": int(t.get("draft_n_accepted", 0) or 0), "text": d.get("content", "")}


def step35_run(model: Any, prompt: str, n: int, draft: int) -> dict[str, Any]:
    model.context.clear()
    out = model.generate(prompt, max_tokens=n, temperature=0, draft=draft)
    s = out.stats
    first = s.ttft_ms - s.prompt_ms  # the first token's sampling, after the prompt
    tps = (s.generated_tokens - 1) / ((s.generation_ms - first) / 1e3)
    d = s.draft
    return {"tps": tps, "n": s.generated_tokens, "drafted": d.drafted if d else 0,
            "accepted": d.accepted if d else 0, "steps": d.steps if d else 0, "text": out.text}


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):8.1f} [{min(xs):.1f}-{max(xs):.1f}]"


def weight_reads(path: str) -> tuple[int, int, int, int, int]:
    """(dense bytes, bytes of one expert in all MoE layers, experts, experts used, one MTP head's dense bytes)."""
    from step35.gguf import model_files, read_header

    headers = [read_header(f) for f in model_files(path)]
    meta = headers[0].metadata
    arch = headers[0].architecture
    n_nextn = int(meta.get(f"{arch}.nextn_predict_layers", 0) or 0)
    n_layer = int(meta[f"{arch}.block_count"]) - n_nextn
    X = int(meta.get(f"{arch}.expert_count", 0) or 0)
    k = int(meta.get(f"{arch}.expert_used_count", 0) or 0)
    dense = expert_all = head = 0
    for h in headers:
        for t in h.tensors:
            if t.name == "token_embd.weight":
                continue  # rows looked up, not read whole
            il = int(t.name.split(".")[1]) if t.name.startswith("blk.") else -1
            if il >= n_layer:
                if "_exps" not in t.name:
                    head += t.nbytes
                continue
            if "_exps" in t.name:
                expert_all += t.nbytes
            else:
                dense += t.nbytes
    return dense, (expert_all // X if X else 0), X, k, head // max(n_nextn, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="mid-mtp", help="built-in model with MTP heads (default mid-mtp)")
    ap.add_argument("--quant", default="Q4_K_S")
    ap.add_argument("-m", "--model", help="a GGUF with MTP heads instead of a built-in model")
    ap.add_argument("-p", "--prompt", default="Once upon a time, in a quiet village by the sea, there lived")
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-c", "--ctx", type=int, default=4096)
    ap.add_argument("-b", type=int, default=2048)
    ap.add_argument("-ub", type=int, default=512)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--drafts", default="0,1,2,3")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--llama-server", help="a llama-server binary (default: build_native.sh --server)")
    ap.add_argument("--log-dir", default=str(REPO / "build" / "compare_mtp"))
    ap.add_argument("--quick", action="store_true", help="tiny-mtp, 16 tokens, 1 repetition (CI smoke run)")
    a = ap.parse_args()
    if a.quick:
        a.size, a.quant, a.n, a.reps = "tiny-mtp", None, 16, 1
    import step35
    from step35.context import default_threads

    threads = a.threads or default_threads()
    path = a.model or str(bench_model(a.size, a.quant))
    log_dir = Path(a.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    binary = llama_server_binary(a.llama_server, log_dir)
    drafts = [int(x) for x in a.drafts.split(",")]
    print(f"model {path}\nthreads {threads}, n_ctx {a.ctx}, {a.n} tokens per run, {a.reps} reps, prompt {a.prompt!r}")

    model = step35.Model(path, mtp=True, context={"n_ctx": a.ctx, "n_batch": a.b, "n_ubatch": a.ub,
                                                  "n_threads": threads, "n_threads_batch": threads})
    results: dict[int, dict[str, list[dict[str, Any]]]] = {}
    ok = True
    try:
        for d in drafts:
            port = free_port()
            srv = Server(f"llama-server-draft{d}", server_cmd(binary, path, a, threads, port, d),
                         log_dir / f"llama-server-draft{d}.log", port)
            try:
                srv.start(timeout=300)
            except ServerError as e:
                print(e, file=sys.stderr)
                return 1
            try:
                native_run(srv, a.prompt, min(a.n, 8))  # warm-up, both
                step35_run(model, a.prompt, min(a.n, 8), d)
                runs: dict[str, list[dict[str, Any]]] = {"step35": [], "llama.cpp": []}
                for rep in range(a.reps):
                    order = ("step35", "llama.cpp") if rep % 2 == 0 else ("llama.cpp", "step35")
                    for who in order:
                        r = step35_run(model, a.prompt, a.n, d) if who == "step35" else native_run(srv, a.prompt, a.n)
                        runs[who].append(r)
                results[d] = runs
            finally:
                srv.stop()
            same = runs["step35"][0]["text"] == runs["llama.cpp"][0]["text"]
            ok &= same
            print(f"draft {d}: step35 {_spread([r['tps'] for r in runs['step35']])} tok/s, llama.cpp "
                  f"{_spread([r['tps'] for r in runs['llama.cpp']])} tok/s; same text: {same}", flush=True)
    finally:
        model.close()
        kill_all()

    dense, per_expert, X, k, head = weight_reads(path)
    base = {who: statistics.median(r["tps"] for r in results[drafts[0]][who]) for who in ("step35", "llama.cpp")}
    print()
    print("| draft | step35 tok/s | llama.cpp tok/s | ratio | step35 speed-up | llama.cpp speed-up "
          "| acceptance step35 / llama.cpp | tokens per step | MB read per emitted token |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    goals = []
    for d in drafts:
        s, n = results[d]["step35"], results[d]["llama.cpp"]
        ms, mn = statistics.median(r["tps"] for r in s), statistics.median(r["tps"] for r in n)
        acc = [sum(r["accepted"] for r in x) / max(1, sum(r["drafted"] for r in x)) for x in (s, n)]
        steps = sum(r.get("steps", 0) for r in s)
        mean_acc = sum(r["accepted"] for r in s) / steps if steps else 0.0
        b = 1 + d
        experts = X * (1 - (1 - k / X) ** b) if X else 0
        per_token = (dense + per_expert * experts + head * d) / (1 + mean_acc if d else 1)
        print(f"| {d} | {_spread([r['tps'] for r in s])} | {_spread([r['tps'] for r in n])} | {ms / mn:.3f} "
              f"| {ms / base['step35']:.3f} | {mn / base['llama.cpp']:.3f} | "
              + (f"{acc[0]:.3f} / {acc[1]:.3f}" if d else "-") + f" | {1 + mean_acc if d else 1:.2f} "
              f"| {per_token / 1e6:.1f} |")
        goals.append((d, ms / mn, ms / base["step35"], acc[0]))
    print()
    print(f"weights read per verify batch: dense {dense / 1e6:.1f} MB, one expert (all MoE layers) "
          f"{per_expert / 1e6:.2f} MB, {X} experts, {k} used; one MTP head (all but its routed experts) "
          f"{head / 1e6:.1f} MB per draft position")
    for d, ratio, speedup, acc in goals:
        g1 = "met" if ratio >= 0.98 else "NOT met"
        line = f"draft {d}: step35/llama.cpp {ratio:.3f} (goal >= 0.98: {g1})"
        if d:
            g2 = "met" if speedup > 1.0 or acc < 0.8 else "NOT met"
            line += f"; speed-up over draft 0 {speedup:.3f} at acceptance {acc:.3f} (goal > 1 where >= 0.8: {g2})"
        print(line)
    if not ok:
        print("the two gave different text at temperature 0", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
