"""Agent traffic: `step35 serve` against llama-server (same pin), on prompt tokens evaluated, TTFT and wall time.

An agent resends its whole conversation every turn. K agents share an
S-token system prompt and tool list; each has its own task, and each turn
adds the model's reply (its reasoning sent back, or dropped as some clients
do) and a tool result. The K agents run at once on a server with --np slots,
so when K > slots a slot is taken by another agent between two turns of one.
Both servers run with their defaults for caching (llama-server: its
host-memory cache and context checkpoints; step35: its prompt cache and
checkpoints), the same model, slots, context per slot and threads, one
after the other in each round; the order alternates between rounds.

Per scenario: prompt tokens evaluated (each server's Prometheus counter),
the lower bound (the tokens of each prompt that no earlier prompt of the run
shares: no prefix evaluated twice), TTFT p50/p99 over all requests and per
turn, the wall time, and the RAM step35's prompt cache holds at the end.

Goals (issue 27), per scenario: tokens evaluated <= llama-server's and <= 1.05x
the lower bound; TTFT p50 <= 0.8x llama-server's; wall time <= llama-server's.

    python benchmarks/compare_agents.py                      # tiny-agent, np 2, K = 2/4/8, 4 turns, 3 rounds
    python benchmarks/compare_agents.py --quick              # CI: K = 2/4, 2 turns, 1 round, a short prompt
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from _common import REPO, median
from compare_serve import Server, ServerError, free_port, kill_all, llama_server_binary

WORDS = ("agent tool file read write search patch test build run check plan step code repo change diff "
         "review error fix log shell command output result summary context history task user goal").split()
TOOLS = [{"type": "function", "function": {
    "name": name, "description": f"{name} a file or a command in the working tree: " + " ".join(WORDS[i:i + 12]),
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}, "text": {"type": "string"}},
                   "required": ["path"]}}} for i, name in enumerate(("read", "write", "run", "search"))]
COUNTERS = {"step35": "step35_prompt_tokens_evaluated_total", "llama-server": "llamacpp:prompt_tokens_total"}


def text(seed: int, n_words: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 13 + i * i) % len(WORDS)] for i in range(n_words))


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        m = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", r.read().decode(), re.M)
    return float(m.group(1)) if m else 0.0


def chat(url: str, messages: list[dict[str, Any]], max_tokens: int) -> tuple[float, dict[str, Any]]:
    """(TTFT s, the assistant message) of one streamed chat completion."""
    body = {"model": "m", "messages": messages, "tools": TOOLS, "max_tokens": max_tokens, "temperature": 0,
            "stream": True}
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    t0, ttft = time.perf_counter(), None
    reasoning, content = [], []
    with urllib.request.urlopen(req, timeout=600) as r:
        for raw in r:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if "error" in chunk:
                raise RuntimeError(f"the stream failed: {chunk['error']}")
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") or {}
                if (delta.get("content") or delta.get("reasoning_content")) and ttft is None:
                    ttft = time.perf_counter() - t0
                reasoning.append(delta.get("reasoning_content") or "")
                content.append(delta.get("content") or "")
    message = {"role": "assistant", "content": "".join(content)}
    if "".join(reasoning):
        message["reasoning_content"] = "".join(reasoning)
    return ttft if ttft is not None else time.perf_counter() - t0, message


def run_scenario(server: Server, k: int, turns: int, system: str, keep_reasoning: bool,
                 max_tokens: int) -> dict[str, Any]:
    """K agents at once, each ``turns`` turns; every prompt sent, the TTFTs, tokens evaluated and wall time."""
    before = metric(server.base_url, COUNTERS[server.name])
    ttfts: list[float] = []
    by_turn: list[list[float]] = [[] for _ in range(turns)]
    prompts: list[list[dict[str, Any]]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def agent(a: int) -> None:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": f"Task {a}: " + text(a, 60)}]
        try:
            for t in range(turns):
                ttft, reply = chat(server.base_url, messages, max_tokens)
                with lock:
                    ttfts.append(ttft)
                    by_turn[t].append(ttft)
                    prompts.append([dict(m) for m in messages])
                if not keep_reasoning:
                    reply.pop("reasoning_content", None)
                messages += [reply, {"role": "user", "content": f"<tool_response>{text(a * 31 + t, 80)}</tool_response>"}]
        except (OSError, RuntimeError, ValueError) as e:
            errors.append(e)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=agent, args=(a,)) for a in range(k)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{server.name}: {errors[0]}")
    out = {"evaluated": metric(server.base_url, COUNTERS[server.name]) - before, "ttfts": ttfts, "wall": wall,
           "by_turn": by_turn, "prompts": prompts}
    if server.name == "step35":
        out["cache_mib"] = metric(server.base_url, "step35_prompt_cache_bytes") / (1 << 20)
    return out


def lower_bound(engine: Any, prompts: list[list[dict[str, Any]]]) -> int:
    """Tokens of each prompt that no other prompt of the run shares a prefix with (counted once)."""
    seen: list[list[int]] = []
    new = 0
    for messages in prompts:
        ids = engine.prompt_tokens(messages, TOOLS)
        shared = 0
        for other in seen:
            n = 0
            while n < len(ids) and n < len(other) and ids[n] == other[n]:
                n += 1
            shared = max(shared, n)
        new += len(ids) - shared
        seen.append(ids)
    return new


def pct(xs: list[float], q: float) -> float:
    """The q-quantile, linear between the two nearest ranks (numpy's default)."""
    s = sorted(xs)
    i = q * (len(s) - 1)
    lo = int(i)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (i - lo)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", default="2,4,8", help="K values (agents at once)")
    ap.add_argument("--np", type=int, default=2, help="slots of both servers")
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--system-words", type=int, default=4000, help="words of the shared system prompt (~1.3 tokens each)")
    ap.add_argument("-n", "--max-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3, help="rounds (each server runs every scenario once per round)")
    ap.add_argument("-c", "--ctx", type=int, default=16384, help="context per slot")
    ap.add_argument("-t", "--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--model", default="tiny-agent",
                    help="a built-in size (default: tiny-agent, whose answers end; mid: Q4_K_S, window 512) or a GGUF")
    ap.add_argument("--quick", action="store_true", help="CI: K = 2,4, 2 turns, 1 round, a short system prompt")
    ap.add_argument("--llama-server", help="a llama-server binary (default: build_native.sh --server)")
    ap.add_argument("--log-dir", default=str(REPO / "build" / "compare_agents"))
    a = ap.parse_args()
    if a.quick:
        a.agents, a.turns, a.reps, a.system_words, a.ctx = "2,4", 2, 1, 600, 4096
    import step35
    from step35 import testing

    if a.model in testing.BENCH_QUANT:  # mid: Q4_K_S, as users run the real model
        model = str(testing.bench_model_path(a.model))
    else:
        model = str(testing.model_path(a.model)) if a.model in testing.SIZES else a.model
    log_dir = Path(a.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    binary = llama_server_binary(a.llama_server, log_dir)
    system = "You are a coding agent. " + text(0, a.system_words)
    p1, p2 = free_port(), free_port()
    servers = [
        Server("step35", [sys.executable, "-m", "step35", "serve", "-m", model, "--port", str(p1), "-np", str(a.np),
                          "-c", str(a.ctx), "-t", str(a.threads), "--log-level", "warning"], log_dir / "step35.log", p1),
        Server("llama-server", [str(binary), "-m", model, "--port", str(p2), "-np", str(a.np), "-c",
                                str(a.ctx * a.np), "-t", str(a.threads), "--metrics", "--no-webui", "--jinja"],
               log_dir / "llama-server.log", p2),
    ]
    scenarios = [(k, keep) for k in (int(x) for x in a.agents.split(",")) for keep in (True, False)]
    results: dict[tuple[int, bool, str], list[dict[str, Any]]] = {}
    try:
        with step35.Model(model, context={"n_ctx": 512}) as m, step35.Engine(m, slots=1, cache_mib=0) as counter:
            for rep in range(a.reps):
                for k, keep in scenarios:
                    for s in (servers if rep % 2 == 0 else servers[::-1]):
                        s.start(300)  # a fresh server per run: nothing cached from the run before
                        try:
                            r = run_scenario(s, k, a.turns, system + f" (round {rep})", keep, a.max_tokens)
                        finally:
                            s.stop()
                        r["bound"] = lower_bound(counter, r.pop("prompts"))
                        results.setdefault((k, keep, s.name), []).append(r)
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as e:
        print(f"error: a request failed: {e}", file=sys.stderr)
        return 1
    finally:
        for s in servers:
            s.stop()
        kill_all()
    print(f"\n### Agents on {a.np} slots, {a.turns} turns, a ~{int(a.system_words * 1.3)}-token shared system prompt, "
          f"{a.reps} rounds (medians), -t {a.threads}\n")
    print("| agents | reasoning | tokens evaluated step35 / llama-server | / lower bound (step35, llama-server) "
          "| TTFT p50 ms step35 / llama-server (ratio) | TTFT p99 ms | wall s step35 / llama-server | "
          "step35 cache MiB |")
    print("|---:|---|---|---|---|---|---|---:|")
    for k, keep in scenarios:
        mine, theirs = results[(k, keep, "step35")], results[(k, keep, "llama-server")]

        def med(rs: list[dict[str, Any]], key: str) -> float:
            return median([float(r[key]) for r in rs])

        def p(rs: list[dict[str, Any]], q: float) -> float:
            return median([pct(r["ttfts"], q) for r in rs]) * 1000

        bound = med(mine, "bound")
        print(f"| {k} | {'sent back' if keep else 'dropped'} | {med(mine, 'evaluated'):.0f} / "
              f"{med(theirs, 'evaluated'):.0f} | {med(mine, 'evaluated') / bound:.2f}, "
              f"{med(theirs, 'evaluated') / bound:.2f} | {p(mine, .5):.0f} / {p(theirs, .5):.0f} "
              f"({p(mine, .5) / p(theirs, .5):.2f}) | {p(mine, .99):.0f} / {p(theirs, .99):.0f} | "
              f"{med(mine, 'wall'):.1f} / {med(theirs, 'wall'):.1f} | {med(mine, 'cache_mib'):.1f} |")
    print(f"\nTTFT p50 / p99 per turn, ms, step35 / llama-server (ratio of the p50s), medians over {a.reps} rounds\n")
    print("| agents | reasoning | " + " | ".join(f"turn {t + 1}" for t in range(a.turns)) + " |")
    print("|---:|---|" + "---|" * a.turns)
    for k, keep in scenarios:
        mine, theirs = results[(k, keep, "step35")], results[(k, keep, "llama-server")]

        def turn(rs: list[dict[str, Any]], t: int, q: float) -> float:
            return median([pct(r["by_turn"][t], q) for r in rs]) * 1000

        cells = [f"{turn(mine, t, .5):.0f} / {turn(theirs, t, .5):.0f} ({turn(mine, t, .5) / turn(theirs, t, .5):.2f}); "
                 f"p99 {turn(mine, t, .99):.0f} / {turn(theirs, t, .99):.0f}" for t in range(a.turns)]
        print(f"| {k} | {'sent back' if keep else 'dropped'} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
