"""Agent APIs side by side: `step35 serve` against llama-server (same pin) on real agents' requests.

1. Record: Claude Code and Codex CLI (pinned in tests/agents, `npm ci --prefix
   tests/agents`) each run one prompt against `step35 serve` through a recording
   proxy (tests/agent_proxy.py); the largest `/v1/messages` and `/v1/responses`
   request bodies are kept (nothing of them is stored in the repository).
2. Replay them against both servers, started with the same model (the
   tiny-agent model: its answers end), one slot of --ctx tokens and the same
   threads, alternating servers in each of --reps rounds:
   - "first": the recorded request with a nonce at the start of its system
     prompt, so nothing of it is cached: the whole prompt is evaluated;
   - "follow-up": the same conversation plus an assistant reply and a new user
     message, as an agent's next turn: only the added tokens need evaluating.
   Codex's `namespace` tools are given to both as plain function tools
   (llama-server skips namespace tools; step35 offers their functions), so both
   render the same prompt.
   Per request: TTFT (request sent -> first streamed delta) and prompt tokens
   evaluated (the server's own Prometheus counter, read before and after:
   step35_prompt_tokens_evaluated_total / llamacpp:prompt_tokens_total).
3. Translation overhead (step35 only): the recorded Claude Code request through
   /v1/messages and the same conversation through /v1/chat/completions (the
   messages and tools /v1/messages renders), non-streaming, max_tokens 1, the
   prompt cached; the p50 difference of the request times.

Goals: step35 TTFT <= 1.0x llama-server's on both APIs; overhead <= 5 ms at p50.

    python benchmarks/compare_agents_api.py                 # 7 rounds
    python benchmarks/compare_agents_api.py --quick         # CI: 1 round (proves it runs)

Exit status 0 when every request succeeded (the goals are reported, not enforced:
this machine's timings swing +-10%), 1 when a request failed, 2 when a server or
an agent failed to start.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from _common import REPO, median
from compare_serve import Server, ServerError, free_port, kill_all, llama_server_binary

sys.path.insert(0, str(REPO / "tests"))
from agent_proxy import RecordingProxy  # noqa: E402
from step35.serving.anthropic import Messages  # noqa: E402
from step35.serving.reasoning import ReasoningSeal  # noqa: E402

AGENTS = REPO / "tests" / "agents" / "node_modules" / ".bin"
FOLLOW_UP = "Thanks. Now say it once more."


def _metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as r:
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


#: the Prometheus counter of prompt tokens evaluated, per server
COUNTERS = {"step35": "step35_prompt_tokens_evaluated_total", "llama-server": "llamacpp:prompt_tokens_total"}


def record(model: str, ctx: int, threads: int, log_dir: Path) -> dict[str, dict[str, Any]]:
    """Run both agents against step35 serve; their largest request bodies by route."""
    port = free_port()
    server = Server("step35", [sys.executable, "-m", "step35", "serve", "-m", model, "--port", str(port),
                               "-np", "1", "-c", str(ctx), "-t", str(threads), "--log-level", "warning"],
                    log_dir / "record_step35.log", port)
    server.start(300)
    bodies: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp, RecordingProxy(server.base_url) as proxy:
            home = Path(tmp)
            env = {"PATH": os.environ["PATH"], "HOME": tmp, "TERM": "dumb", "ANTHROPIC_BASE_URL": proxy.url,
                   "ANTHROPIC_API_KEY": "x", "CLAUDE_CONFIG_DIR": f"{tmp}/.claude",
                   "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
                   "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1", "CLAUDE_CODE_MAX_RETRIES": "0",
                   "CODEX_HOME": f"{tmp}/codex"}
            (home / "codex").mkdir()
            (home / "codex" / "config.toml").write_text(
                'model = "step35"\nmodel_provider = "step35"\ncheck_for_update_on_startup = false\n'
                f'[model_providers.step35]\nname = "step35"\nbase_url = "{proxy.url}/v1"\nwire_api = "responses"\n'
                "request_max_retries = 0\nstream_max_retries = 0\n[features]\nplugins = false\n"
                "[analytics]\nenabled = false\n")
            for argv in ([str(AGENTS / "claude"), "-p", "Say hello.", "--model", "step35"],
                         [str(AGENTS / "codex"), "exec", "--skip-git-repo-check", "Say hello."]):
                out = subprocess.run(argv, env=env, cwd=tmp, stdin=subprocess.DEVNULL, capture_output=True,
                                     text=True, timeout=600)
                if out.returncode != 0:
                    raise ServerError(f"{Path(argv[0]).name} exited {out.returncode}: {out.stderr[-2000:]}")
            for r in proxy.requests:
                if r.path in ("/v1/messages", "/v1/responses") and (
                        r.path not in bodies or len(r.body) > len(json.dumps(bodies[r.path]))):
                    bodies[r.path] = r.json()
    finally:
        server.stop()
    missing = {"/v1/messages", "/v1/responses"} - set(bodies)
    if missing:
        raise ServerError(f"the agents sent no request to {', '.join(sorted(missing))}")
    return bodies


def flat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses tools with ``namespace`` tools replaced by their functions: llama-server skips
    namespace tools (and with them Codex's multi-agent functions), step35 offers their functions,
    so both servers get them as plain function tools and render the same prompt."""
    out = []
    for tool in tools:
        if tool.get("type") == "namespace":
            out += [t for t in tool.get("tools") or [] if t.get("type") == "function"]
        else:
            out.append(tool)
    return out


def variants(path: str, body: dict[str, Any], nonce: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(first, follow-up) bodies: a nonce in front of the system prompt, then one more turn."""
    first = copy.deepcopy(body)
    first["stream"] = True
    if path == "/v1/responses" and first.get("tools"):
        first["tools"] = flat_tools(first["tools"])
    if path == "/v1/messages":
        first["system"] = [{"type": "text", "text": f"[{nonce}]"}] + list(first.get("system") or [])
        follow = copy.deepcopy(first)
        follow["messages"] += [{"role": "assistant", "content": [{"type": "text", "text": "Hello from step35!"}]},
                               {"role": "user", "content": FOLLOW_UP}]
    else:
        first["input"] = [{"type": "message", "role": "developer", "content": f"[{nonce}]"}] + first["input"]
        follow = copy.deepcopy(first)
        follow["input"] += [{"type": "message", "role": "assistant",
                             "content": [{"type": "output_text", "text": "Hello from step35!"}]},
                            {"type": "message", "role": "user", "content": FOLLOW_UP}]
    return first, follow


def timed_stream(url: str, path: str, body: dict[str, Any]) -> float:
    """Seconds to the first streamed delta (the whole stream is read and checked)."""
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", "anthropic-version": "2023-06-01",
                                          "x-api-key": "x", "authorization": "Bearer x"})
    t0 = time.perf_counter()
    first = None
    with urllib.request.urlopen(req, timeout=600) as r:
        for raw in r:
            line = raw.decode("utf-8", "replace")
            if first is None and line.startswith("data:") and ("_delta" in line or ".delta" in line):
                first = time.perf_counter() - t0
            if '"type":"error"' in line.replace(" ", "") or "response.failed" in line:
                raise RuntimeError(f"{path}: the stream failed: {line[:300]}")
    if first is None:
        raise RuntimeError(f"{path}: no delta in the stream")
    return first


def one_request(server: Server, path: str, body: dict[str, Any]) -> tuple[float, float]:
    """(TTFT s, prompt tokens evaluated) of one streamed request."""
    before = _metric(server.base_url, COUNTERS[server.name])
    ttft = timed_stream(server.base_url, path, body)
    return ttft, _metric(server.base_url, COUNTERS[server.name]) - before


def overhead(server: Server, body: dict[str, Any], reps: int) -> tuple[float, float, float]:
    """(p50 /v1/messages ms, p50 /v1/chat/completions ms, difference) for the same conversation."""
    req = Messages("m", ReasoningSeal(b"k")).parse(body, {})
    messages_body = dict(body, stream=False, max_tokens=1)
    chat_body = {"model": "m", "messages": req.messages, "tools": req.tools, "max_tokens": 1,
                 "tool_choice": req.tool_choice, "reasoning_budget": req.reasoning_budget, "stream": False}
    times: dict[str, list[float]] = {"/v1/messages": [], "/v1/chat/completions": []}
    for i in range(reps + 1):
        for path, b in (("/v1/messages", messages_body), ("/v1/chat/completions", chat_body))[::1 if i % 2 else -1]:
            data = json.dumps(b).encode()
            t0 = time.perf_counter()
            with urllib.request.urlopen(urllib.request.Request(
                    server.base_url + path, data=data, headers={"content-type": "application/json"}), timeout=600) as r:
                r.read()
            if i > 0:  # the first round fills the cache
                times[path].append((time.perf_counter() - t0) * 1000)
    a, b = median(times["/v1/messages"]), median(times["/v1/chat/completions"])
    return a, b, a - b


def spread(xs: list[float], scale: float = 1.0, nd: int = 0) -> str:
    return f"{median(xs) * scale:.{nd}f} [{min(xs) * scale:.{nd}f}-{max(xs) * scale:.{nd}f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="1 round (CI)")
    ap.add_argument("-c", "--ctx", type=int, default=32768, help="context of the one slot")
    ap.add_argument("-t", "--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--llama-server", help="a llama-server binary (default: build_native.sh --server)")
    ap.add_argument("--log-dir", default=str(REPO / "build" / "compare_agents_api"))
    a = ap.parse_args()
    reps = 1 if a.quick else a.reps
    log_dir = Path(a.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    if not (AGENTS / "claude").exists() or not (AGENTS / "codex").exists():
        print(f"the agent CLIs are not installed ({AGENTS}): npm ci --prefix tests/agents", file=sys.stderr)
        return 2
    from step35 import testing

    model = str(testing.model_path("tiny-agent"))
    binary = llama_server_binary(a.llama_server, log_dir)
    servers: list[Server] = []
    try:
        bodies = record(model, a.ctx, a.threads, log_dir)
        for path, body in bodies.items():
            print(f"recorded {path}: {len(json.dumps(body))} bytes, {len(body.get('tools') or [])} tools")
        p1, p2 = free_port(), free_port()
        servers = [
            Server("step35", [sys.executable, "-m", "step35", "serve", "-m", model, "--port", str(p1), "-np", "1",
                              "-c", str(a.ctx), "-t", str(a.threads), "--log-level", "warning"],
                   log_dir / "step35.log", p1),
            Server("llama-server", [str(binary), "-m", model, "--port", str(p2), "-np", "1", "-c", str(a.ctx),
                                    "-t", str(a.threads), "--metrics", "--no-webui", "--jinja"],
                   log_dir / "llama-server.log", p2),
        ]
        for s in servers:
            s.start(300)
        results: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
        for rep in range(reps):
            for path, body in bodies.items():
                order = servers if rep % 2 == 0 else servers[::-1]
                for s in order:
                    first, follow = variants(path, body, f"round {rep} {s.name}")
                    for kind, b in (("first", first), ("follow-up", follow)):
                        results.setdefault((path, kind, s.name), []).append(one_request(s, path, b))
        print(f"\n### TTFT and prompt tokens evaluated, {reps} rounds, medians [min-max], -t {a.threads}\n")
        print("| API | request | step35 TTFT ms | llama-server TTFT ms | ratio (goal <= 1.0) "
              "| step35 tokens evaluated | llama-server tokens evaluated |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for path in bodies:
            for kind in ("first", "follow-up"):
                mine, theirs = results[(path, kind, "step35")], results[(path, kind, "llama-server")]
                ratio = median([x[0] for x in mine]) / median([x[0] for x in theirs])
                print(f"| {path} | {kind} | {spread([x[0] for x in mine], 1000)} | "
                      f"{spread([x[0] for x in theirs], 1000)} | {ratio:.2f} | "
                      f"{median([x[1] for x in mine]):.0f} | {median([x[1] for x in theirs]):.0f} |")
        a_ms, c_ms, diff = overhead(servers[0], bodies["/v1/messages"], max(reps, 3) * 3)
        print(f"\nTranslation overhead (step35, the recorded Claude Code request, cached, max_tokens 1, "
              f"{max(reps, 3) * 3} alternating requests each): /v1/messages p50 {a_ms:.1f} ms, "
              f"/v1/chat/completions p50 {c_ms:.1f} ms, difference {diff:+.1f} ms (goal <= 5 ms)")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
