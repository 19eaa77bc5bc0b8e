"""Serving throughput: `step35 serve` against llama-server and llama-cpp-python's server.

Each server is started (its own process group, output to a log file) on a free
loopback port with the same model, slots (-np), context per slot, threads and
batch sizes; llama-server is upstream's, built from the same pinned source with
the wheel's CMake configuration (benchmarks/build_native.sh --server).
llama-cpp-python's server (llama-cpp-python[server]==0.3.36, the same upstream
llama.cpp) runs when --lcp-python names an interpreter that has it; it has no
slots, so it gets the same context, threads and batch sizes only
(--lcp-defaults: nothing but the model).

For each model and each concurrency level C (1, 4, 8, 16 clients) the servers
are started with -np C, warmed up once, then --reps rounds alternate between
them (the order rotates each round). One round = C clients of the official
`openai` client (AsyncOpenAI), all at once, each streaming the same chat at
temperature 0 with max_tokens N. Per request: time to first token (first
streamed text), inter-token latencies (gaps between streamed pieces) and the
tokens received (the usage block when the server sends one, else the pieces).
Per round: aggregate output tok/s = all tokens received / wall time of the round.
The tables give medians over rounds with min-max spreads, and the ratios of
step35 to the others. Requests that end with fewer than N tokens are counted
and flagged ("short"; "empty" for none at all): llama-cpp-python's server is
known to starve concurrent requests. The tiny and mid models have random
weights, so at temperature 0 they rarely emit an end-of-generation token;
--ignore-eos asks llama-server (the only one with such a field) not to stop anyway.

The in-process check compares `Model.generate([B prompts])` (aggregate
generated tok/s) with `step35 bench` S_TG at the same B (step35.tools.bench.run,
-npl B) on the same model, in a separate process.

The clients run on the same machine as the servers, so by default the servers
get one thread less than the physical cores (-t): with all cores, ggml's
spinning threads and the clients fight, and both servers measured 2-5x slower
and far noisier on 2 cores. A round during which other processes used more
than --max-foreign cores is measured again (--retries, --wait-budget). At
temperature 0 every answer should equal the one the same chat gets from one
client alone: the table counts the distinct answers and those equal to it.

    python benchmarks/compare_serve.py                         # tiny32 and mid Q4_K_S, 1/4/8/16 clients, 7 reps
    python benchmarks/compare_serve.py --servers llama-server --models tiny32 --clients 1,8
    python benchmarks/compare_serve.py --lcp-python .venv-lcp/bin/python
    python benchmarks/compare_serve.py --quick                 # CI: tiny32, 1 and 4 clients, 1 rep, 16 tokens
    python benchmarks/compare_serve.py --servers step35,llama-server --models mid-mtp --clients 1,4 --draft 2
                                                               # MTP drafting in both servers

Exit status: 0 when every server started and every request completed; 1 when a
request failed (an error, or fewer than N tokens from a server that is meant to
give full answers: step35 and llama-server); 2 when a server failed to start.
Logs: --log-dir (default build/compare_serve/).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from _common import REPO, median

SERVERS = ("step35", "llama-server", "llama-cpp-python")
#: servers that are meant to give every concurrent request its full answer
FULL_ANSWER = ("step35", "llama-server")
LCP_VERSION = "0.3.36"
CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a long story about a lighthouse keeper who finds a map in a bottle. "
                                "Describe the sea, the village and the journey in detail."},
]
IN_PROCESS_PROMPT = "Once upon a time, in a quiet village by the sea, there lived"


# ---------------------------------------------------------------- settings ---

@dataclasses.dataclass(frozen=True)
class Settings:
    """What every server gets (the speed-relevant flags are the same for all)."""

    model: str
    np: int  # slots
    ctx: int  # context per slot
    threads: int
    b: int
    ub: int
    fa: str  # on | off | auto
    draft: int = 0  # MTP tokens drafted per step (0: none)


def step35_serve_cmd(s: Settings, port: int) -> list[str]:
    """How `step35 serve` is started: the one place to adjust as its flags settle (its -c is per slot)."""
    return [sys.executable, "-m", "step35", "serve", "-m", s.model, "--host", "127.0.0.1", "--port", str(port),
            "-np", str(s.np), "-c", str(s.ctx), "-t", str(s.threads), "-b", str(s.b), "-ub", str(s.ub),
            "-fa", s.fa, "--log-level", "warning"] + (["--mtp", "--draft", str(s.draft)] if s.draft else [])


def llama_server_cmd(binary: Path, s: Settings, port: int) -> list[str]:
    """llama-server with the same slots and flags (its -c is the total over all slots)."""
    return [str(binary), "-m", s.model, "--host", "127.0.0.1", "--port", str(port), "-np", str(s.np),
            "-c", str(s.ctx * s.np), "-t", str(s.threads), "-b", str(s.b), "-ub", str(s.ub), "-fa", s.fa,
            "--no-webui"] + (["--spec-type", "draft-mtp", "--spec-draft-n-max", str(s.draft), "--spec-draft-n-min", "0",
                              "--spec-draft-p-min", "0"] if s.draft else [])


def lcp_server_cmd(python: str, s: Settings, port: int, defaults: bool) -> list[str]:
    """llama-cpp-python's server: no slots; the same context, threads and batch unless ``defaults``."""
    cmd = [python, "-m", "llama_cpp.server", "--model", s.model, "--host", "127.0.0.1", "--port", str(port)]
    if not defaults:
        cmd += ["--n_ctx", str(s.ctx), "--n_threads", str(s.threads), "--n_threads_batch", str(s.threads),
                "--n_batch", str(s.b), "--n_ubatch", str(s.ub),
                "--flash_attn", "false" if s.fa == "off" else "true"]
    return cmd


#: extra request fields per server for --ignore-eos (step35 serve and llama-cpp-python have no such field)
IGNORE_EOS_BODY: dict[str, dict[str, Any]] = {"llama-server": {"ignore_eos": True}}
#: servers whose stream ends with a usage block when asked (stream_options.include_usage)
INCLUDE_USAGE = {"step35": True, "llama-server": True, "llama-cpp-python": False}


# ----------------------------------------------------------------- servers ---

_LIVE: dict[int, subprocess.Popen[bytes]] = {}


def _kill_group(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left after ``grace`` seconds."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # children (uvicorn workers, ...) may outlive the leader
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)
    _LIVE.pop(proc.pid, None)


def kill_all() -> None:
    for proc in list(_LIVE.values()):
        _kill_group(proc, grace=3.0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (loopback only)
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


class ServerError(RuntimeError):
    pass


@dataclasses.dataclass
class Server:
    name: str
    cmd: list[str]
    log: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    model_id: str = ""
    client: Any = None  # its AsyncOpenAI client (see _client)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as f:
            f.write(f"\n$ {' '.join(self.cmd)}\n".encode())
            f.flush()
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=env)
        _LIVE[self.proc.pid] = self.proc
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.proc.returncode} while starting; see {self.log}:\n"
                                  + _tail(self.log))
            if time.monotonic() > deadline:
                raise ServerError(f"{self.name} not ready after {timeout:.0f}s; see {self.log}:\n" + _tail(self.log))
            with contextlib.suppress(OSError, ValueError):
                health, _ = _get(self.base_url + "/health")
                if health in (200, 404):  # 404: no /health route (llama-cpp-python); 503: still loading
                    code, body = _get(self.base_url + "/v1/models")
                    if code == 200:
                        data = json.loads(body).get("data") or [{}]
                        self.model_id = str(data[0].get("id") or "model")
                        return
            time.sleep(0.2)

    def stop(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                _loop().run_until_complete(self.client.close())
            self.client = None
        if self.proc is not None:
            _kill_group(self.proc)
            self.proc = None

    def cpu_seconds(self) -> float:
        """utime + stime of the server's main process (Linux; 0 elsewhere)."""
        if self.proc is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0


def _busy_cpu_seconds() -> float:
    """CPU time all processes of the machine have used (Linux /proc/stat; 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Foreign:
    """CPU time used during a window by processes other than this script and its servers.

    On a small machine another job (a build, a test run) halves a server's
    speed, and ggml's spinning threads make it far worse; such rounds are
    measured again (--retries) rather than averaged in.
    """

    def __init__(self, servers: list[Server]) -> None:
        self.servers = servers
        self.t0 = time.perf_counter()
        self.busy0 = _busy_cpu_seconds()
        self.ours0 = _own_cpu_seconds() + sum(s.cpu_seconds() for s in servers)

    def share(self) -> float:
        """Average cores used by foreign processes since the window opened."""
        wall = time.perf_counter() - self.t0
        ours = _own_cpu_seconds() + sum(s.cpu_seconds() for s in self.servers) - self.ours0
        return max(0.0, (_busy_cpu_seconds() - self.busy0 - ours) / wall) if wall > 0 else 0.0


def wait_quiet(servers: list[Server], limit: float, timeout: float = 120.0) -> float:
    """Wait (up to ``timeout``) for a 1 s window in which foreign processes use < ``limit`` cores."""
    deadline = time.monotonic() + timeout
    while True:
        w = Foreign(servers)
        time.sleep(1.0)
        share = w.share()
        if share < limit or time.monotonic() > deadline:
            return share


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# -------------------------------------------------------------------- load ---

@dataclasses.dataclass
class Request:
    t_start: float
    t_end: float
    times: list[float]  # arrival of each streamed piece of text
    tokens: int
    usage: bool  # tokens from the usage block (else: pieces)
    finish: str | None
    error: str | None
    text: str

    @property
    def ttft(self) -> float | None:
        return self.times[0] - self.t_start if self.times else None

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]


async def _one(client: Any, server: Server, max_tokens: int, extra_body: dict[str, Any],
               messages: list[dict[str, str]]) -> Request:
    t_start = time.perf_counter()
    times: list[float] = []
    parts: list[str] = []
    usage_tokens: int | None = None
    finish = error = None
    kw: dict[str, Any] = {}
    if INCLUDE_USAGE.get(server.name):
        kw["stream_options"] = {"include_usage": True}
    if extra_body:
        kw["extra_body"] = extra_body
    try:
        stream = await client.chat.completions.create(model=server.model_id, messages=messages, temperature=0,
                                                      max_tokens=max_tokens, stream=True, **kw)
        async for chunk in stream:
            now = time.perf_counter()
            if getattr(chunk, "usage", None) is not None and chunk.usage.completion_tokens is not None:
                usage_tokens = int(chunk.usage.completion_tokens)
            for ch in chunk.choices or ():
                d = ch.delta
                piece = (d.content or "") + (getattr(d, "reasoning_content", None) or "")
                if piece or d.tool_calls:
                    times.append(now)
                    parts.append(piece)
                if ch.finish_reason:
                    finish = ch.finish_reason
    except Exception as e:  # noqa: BLE001 (reported per request)
        error = f"{type(e).__name__}: {e}"[:300]
    t_end = time.perf_counter()
    tokens = usage_tokens if usage_tokens is not None else len(times)
    return Request(t_start, t_end, times, tokens, usage_tokens is not None, finish, error, "".join(parts))


_LOOP: asyncio.AbstractEventLoop | None = None


def _loop() -> asyncio.AbstractEventLoop:
    """One event loop for the whole run, so that each server's client and its connections persist."""
    global _LOOP
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        _LOOP.set_exception_handler(_quiet_interrupts)
    return _LOOP


def _quiet_interrupts(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Ctrl-C leaves the streams of the interrupted round unfinished: not worth a traceback each."""
    if isinstance(context.get("exception"), (KeyboardInterrupt, asyncio.CancelledError)):
        return
    loop.default_exception_handler(context)


def _client(server: Server) -> Any:
    """The server's AsyncOpenAI client, made once: its keep-alive connections (one per concurrent
    client, opened by the warm-up round) are reused by every round, so no round pays for connecting."""
    if server.client is None:
        import importlib

        import openai

        # the HTTP library this openai is built on (httpx, or httpx2 in newer releases)
        hx = sys.modules.get("httpx2") or importlib.import_module("httpx")
        limits = hx.Limits(max_connections=256, max_keepalive_connections=256, keepalive_expiry=3600)
        http = openai.DefaultAsyncHttpxClient(limits=limits, timeout=600.0)
        server.client = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0,
                                           timeout=600.0, http_client=http)
    return server.client


async def _round(server: Server, clients: int, max_tokens: int, extra_body: dict[str, Any],
                 unique: bool) -> list[Request]:
    client = _client(server)

    def chat(i: int) -> list[dict[str, str]]:
        if not unique:
            return CHAT
        return CHAT[:-1] + [{"role": "user", "content": f"[{i}:{time.time_ns()}] " + CHAT[-1]["content"]}]

    return list(await asyncio.gather(*(_one(client, server, max_tokens, extra_body, chat(i))
                                       for i in range(clients))))


def run_round(server: Server, clients: int, max_tokens: int, extra_body: dict[str, Any],
              unique: bool) -> dict[str, Any]:
    reqs = _loop().run_until_complete(_round(server, clients, max_tokens, extra_body, unique))
    wall = max(r.t_end for r in reqs) - min(r.t_start for r in reqs)
    total = sum(r.tokens for r in reqs if r.error is None)
    ttfts = [r.ttft for r in reqs if r.ttft is not None]
    itls = [x for r in reqs for x in r.itls]
    return {
        "tps": total / wall if wall > 0 else 0.0, "wall_s": wall, "tokens": [r.tokens for r in reqs],
        "usage": all(r.usage for r in reqs), "ttft_p50": pct(ttfts, 50), "ttft_p99": pct(ttfts, 99),
        "itl_p50": pct(itls, 50), "itl_p99": pct(itls, 99),
        "pieces": [len(r.times) for r in reqs], "errors": [r.error for r in reqs if r.error],
        "empty": sum(1 for r in reqs if r.error is None and r.tokens == 0),
        "short": sum(1 for r in reqs if r.error is None and 0 < r.tokens < max_tokens),
        "finish": sorted({str(r.finish) for r in reqs}), "texts": [r.text for r in reqs],
        # temperature 0, same chat: every answer should be the same text
        "distinct": len({r.text for r in reqs if r.error is None}),
    }


def pct(xs: list[float], q: float) -> float:
    """Percentile with linear interpolation (nan when empty)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# ------------------------------------------------------------- in-process ---

IN_PROCESS = r"""
import json, sys, time
import step35, step35.tools.bench
a = json.loads(sys.argv[1])
B, N = a["b_seqs"], a["n"]
out = {"b": B, "n": N}
# a list of prompts runs on an engine with one slot each, each slot the model's default context size
ctx = {"n_ctx": a["ctx"], "n_batch": a["b"], "n_ubatch": a["ub"], "n_threads": a["t"], "flash_attn": a["fa"]}
with step35.Model(a["model"], context=ctx) as m:
    prompts = [a["prompt"]] * B
    n_prompt = len(m.tokenize(a["prompt"]))
    out["n_prompt"] = n_prompt
    try:
        probe = m.generate(prompts[:2], max_tokens=1, temperature=0)
        ok = isinstance(probe, list)
        why = "" if ok else f"returned {type(probe).__name__}, not a list"
    except (TypeError, ValueError, NotImplementedError) as e:
        ok, why = False, f"{type(e).__name__}: {e}"
    out["generate_list"] = ok
    out["why"] = why[:300]
    gen, tg = [], []
    for rep in range(a["reps"]):
        order = ["gen", "bench"] if rep % 2 == 0 else ["bench", "gen"]
        for what in order:
            if what == "gen" and ok:
                t0 = time.perf_counter()
                res = m.generate(prompts, max_tokens=N, temperature=0)
                wall = time.perf_counter() - t0
                toks = [r.stats.generated_tokens for r in res]
                gen_s = max(r.stats.generation_ms for r in res) / 1e3
                gen.append({"tps_wall": sum(toks) / wall, "tps_gen": sum(toks) / gen_s if gen_s > 0 else 0.0,
                            "tokens": toks})
            elif what == "bench":
                rows = step35.tools.bench.run(m, npp=[n_prompt], ntg=[N], npl=[B], n_batch=a["b"], n_ubatch=a["ub"],
                                        flash_attn=a["fa"], n_threads=a["t"], progress=False)
                tg.append(rows[0].s_tg)
    out["generate"] = gen
    out["s_tg"] = tg
print("RESULT " + json.dumps(out))
"""


def in_process(model: str, b_seqs: int, s: Settings, n: int, reps: int) -> dict[str, Any]:
    args = json.dumps({"model": model, "b_seqs": b_seqs, "n": n, "ctx": s.ctx, "b": s.b, "ub": s.ub,
                       "t": s.threads, "fa": s.fa, "reps": reps, "prompt": IN_PROCESS_PROMPT})
    p = subprocess.run([sys.executable, "-c", IN_PROCESS, args], capture_output=True, text=True, errors="replace",
                       timeout=3600)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": f"exit {p.returncode}: {(p.stderr or p.stdout)[-1500:]}"}


# ----------------------------------------------------------------- report ---

def fmt_ms(x: float) -> str:
    return "n/a" if x != x else f"{x * 1e3:.1f}"


def spread(xs: list[float], scale: float = 1.0, nd: int = 0) -> str:
    xs = [x * scale for x in xs if x == x]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return f"{xs[0]:.{nd}f}"
    return f"{median(xs):.{nd}f} ({min(xs):.{nd}f}-{max(xs):.{nd}f})"


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def med(k: str) -> float:
        return median([r[k] for r in rounds if r[k] == r[k]])

    toks = [t for r in rounds for t in r["tokens"]]
    return {"tps": med("tps"), "tps_min": min(r["tps"] for r in rounds), "tps_max": max(r["tps"] for r in rounds),
            "ttft_p50": med("ttft_p50"), "ttft_p99": med("ttft_p99"), "itl_p50": med("itl_p50"),
            "itl_p99": med("itl_p99"), "tok_min": min(toks) if toks else 0, "tok_max": max(toks) if toks else 0,
            "requests": len(toks), "empty": sum(r["empty"] for r in rounds), "short": sum(r["short"] for r in rounds),
            "errors": sum(len(r["errors"]) for r in rounds), "usage": all(r["usage"] for r in rounds),
            "distinct": max(r["distinct"] for r in rounds)}


def print_tables(results: dict[tuple[str, int, str], list[dict[str, Any]]], idle: dict[tuple[str, int, str], float],
                 max_tokens: int) -> None:
    print(f"\n### Serving: aggregate output tok/s, median (min-max) over rounds; latencies in ms "
          f"(max_tokens {max_tokens})\n")
    print("| model | clients | server | aggregate tok/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 "
          "| tokens/request | empty | short | errors | distinct answers | = 1-client answer |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (model, c, name), rounds in results.items():
        if not rounds:
            continue
        s = summarize(rounds)
        # temperature 0: each answer should equal the one the same request gets alone (1 client)
        lone_rounds = results.get((model, 1, name)) or []
        lone = lone_rounds[0]["texts"][0] if lone_rounds and lone_rounds[0]["texts"] else None
        same = "n/a" if lone is None else f"{sum(t == lone for r in rounds for t in r['texts'])}/{s['requests']}"
        toks = f"{s['tok_min']}" if s["tok_min"] == s["tok_max"] else f"{s['tok_min']}-{s['tok_max']}"
        if not s["usage"]:
            toks += " (pieces)"
        print(f"| {model} | {c} | {name} | {spread([r['tps'] for r in rounds], nd=1)} | {fmt_ms(s['ttft_p50'])} "
              f"| {fmt_ms(s['ttft_p99'])} | {fmt_ms(s['itl_p50'])} | {fmt_ms(s['itl_p99'])} | {toks} "
              f"| {s['empty']}/{s['requests']} | {s['short']}/{s['requests']} | {s['errors']} | {s['distinct']} "
              f"| {same} |")
    names = sorted({k[2] for k in results})
    others = [n for n in ("llama-server", "llama-cpp-python") if n in names]
    if "step35" in names and others:
        print("\n### Ratios (step35 / other): aggregate tok/s (goal >= 1.0 vs llama-server), "
              "TTFT p50 (goal <= 1.1 vs llama-server)\n")
        head = " | ".join(f"tok/s vs {o} | TTFT p50 vs {o}" for o in others)
        print(f"| model | clients | {head} |")
        print("|---|---:|" + "---:|---:|" * len(others))
        for (model, c) in dict.fromkeys((k[0], k[1]) for k in results):
            ours = results.get((model, c, "step35"))
            if not ours:
                continue
            so = summarize(ours)
            cells = []
            for o in others:
                theirs = results.get((model, c, o))
                if not theirs:
                    cells += ["n/a", "n/a"]
                    continue
                st = summarize(theirs)
                cells.append(f"{so['tps'] / st['tps']:.2f}" if st["tps"] > 0 else "inf")
                cells.append(f"{so['ttft_p50'] / st['ttft_p50']:.2f}" if st["ttft_p50"] > 0 else "n/a")
            print(f"| {model} | {c} | " + " | ".join(cells) + " |")
    busy = {k: v for k, v in idle.items() if v > 0.05}
    if busy:
        print("\nnote: CPU time used by a server while another one was measured (should be ~0): "
              + ", ".join(f"{k[2]} ({k[0]}, {k[1]} clients) {v:.2f}s" for k, v in busy.items()))


def print_in_process(inproc: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The in-process table; returns what failed."""
    failed: list[str] = []
    print("\n### In-process: Model.generate([B prompts]) vs step35 bench S_TG (same B, same model); "
          "goal >= 0.95\n")
    print("| model | B | generate tok/s (wall) | generate tok/s (generation) | bench S_TG | ratio (generation) "
          "| tokens/seq |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for model_name, r in inproc:
        if "error" in r:
            print(f"| {model_name} | ? | failed: {r['error'].splitlines()[-1][:120]} | | | | |")
            failed.append(f"in-process ({model_name})")
            continue
        tg = spread(r["s_tg"], nd=1)
        if not r["generate_list"]:
            print(f"| {model_name} | {r['b']} | skipped: Model.generate does not accept a list yet "
                  f"({r['why'][:80]}) | | {tg} | | |")
            continue
        g_wall = [x["tps_wall"] for x in r["generate"]]
        g_gen = [x["tps_gen"] for x in r["generate"]]
        toks = [t for x in r["generate"] for t in x["tokens"]]
        ratio = median(g_gen) / median(r["s_tg"]) if r["s_tg"] else float("nan")
        print(f"| {model_name} | {r['b']} | {spread(g_wall, nd=1)} | {spread(g_gen, nd=1)} | {tg} | {ratio:.2f} "
              f"| {min(toks)}-{max(toks)} |")
    return failed


# ------------------------------------------------------------------- main ---

def model_for(name: str) -> str:
    """tiny32 (tests/conftest.py's F32 tiny model), mid (Q4_K_S), or a GGUF path."""
    from step35 import testing

    if name == "tiny32":
        spec = dataclasses.replace(testing.SIZES["tiny"], name="tiny32", dtype="f32", embd_dtype="f32", head_dim=32)
        return str(testing.model_path(spec))
    if name in testing.SIZES:
        return str(testing.bench_model_path(name))
    if Path(name).is_file():
        return name
    raise SystemExit(f"--models: {name!r} is neither tiny32, a built-in size ({', '.join(testing.SIZES)}) nor a file")


def llama_server_binary(given: str | None, log_dir: Path) -> Path:
    """``given``, or llama-server built (or found up to date) by build_native.sh --server."""
    if given:
        return Path(given)
    log = log_dir / "build_llama_server.log"
    print(f"llama-server: benchmarks/build_native.sh --server (a no-op when built; the first build takes "
          f"~20 min on 2 cores; log: {log})", file=sys.stderr)
    with open(log, "w") as f:
        out = subprocess.run(["bash", str(REPO / "benchmarks" / "build_native.sh"), "--server"], stdout=subprocess.PIPE,
                             stderr=f, text=True, env={**os.environ, "JOBS": os.environ.get("JOBS", "2")})
    if out.returncode != 0:
        sys.stderr.write(_tail(log, 4000))
        raise SystemExit("benchmarks/build_native.sh --server failed")
    return REPO / out.stdout.strip().splitlines()[-1] / "llama-server"


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main() -> int:  # noqa: C901 (one linear procedure)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny32,mid", help="comma list: tiny32, mid (Q4_K_S), a size, or GGUF paths")
    ap.add_argument("--servers", default="step35,llama-server,llama-cpp-python",
                    help="comma list of step35, llama-server, llama-cpp-python (the last needs --lcp-python)")
    ap.add_argument("--clients", default="1,4,8,16", help="concurrency levels")
    ap.add_argument("-n", "--max-tokens", type=int, default=64, help="max_tokens of every request")
    ap.add_argument("--reps", type=int, default=7, help="rounds per server and concurrency level")
    ap.add_argument("--np", type=int, default=0, help="slots of every server (default: the concurrency level)")
    ap.add_argument("-c", "--ctx", type=int, default=1024, help="context per slot (llama-server gets -c ctx*np)")
    ap.add_argument("-b", type=int, default=2048)
    ap.add_argument("-ub", type=int, default=512)
    ap.add_argument("-fa", default="auto", choices=["on", "off", "auto"])
    ap.add_argument("-t", "--threads", type=int, default=None,
                    help="server threads (default: the physical cores minus one, which the clients need: they "
                         "run on this machine too, and ggml's spinning threads then fight them; on 2 cores, "
                         "-t 2 measured 2-5x slower and far noisier than -t 1 for both servers)")
    ap.add_argument("--draft", type=int, default=0, metavar="N",
                    help="MTP: step35 serve --mtp --draft N against llama-server --spec-type draft-mtp "
                         "--spec-draft-n-max N (a model with MTP heads: tiny-mtp, mid-mtp)")
    ap.add_argument("--ignore-eos", action="store_true", help="send ignore_eos to llama-server (the others have none)")
    ap.add_argument("--unique", action="store_true",
                    help="make every request's prompt unique (no prompt-cache reuse between rounds)")
    ap.add_argument("--llama-server", help="a llama-server binary (default: build it with build_native.sh --server)")
    ap.add_argument("--lcp-python", help=f"an interpreter with llama-cpp-python[server]=={LCP_VERSION}")
    ap.add_argument("--lcp-defaults", action="store_true", help="start llama-cpp-python's server with its defaults")
    ap.add_argument("--in-process", default=None,
                    help="B values of the in-process generate-vs-bench check (default: the client levels > 1; "
                         "'none' to skip)")
    ap.add_argument("--max-foreign", type=float, default=0.15,
                    help="a round during which other processes used more cores than this (on average) is "
                         "measured again (default 0.15)")
    ap.add_argument("--retries", type=int, default=3, help="how often a contended round is measured again")
    ap.add_argument("--wait-budget", type=float, default=300.0,
                    help="most seconds, over the whole run, spent waiting for other processes to quiet down "
                         "before a contended round is measured again (default 300)")
    ap.add_argument("--start-timeout", type=float, default=180.0)
    ap.add_argument("--log-dir", type=Path, default=REPO / "build" / "compare_serve")
    ap.add_argument("--json", type=Path, help="also write every round's raw figures here")
    ap.add_argument("--quick", action="store_true",
                    help="CI: tiny32, 1 and 4 clients, 1 rep, 16 tokens, no re-measuring of contended rounds, "
                         "llama-cpp-python only when --lcp-python")
    ap.add_argument("--report", type=Path, metavar="JSON", help="only print the tables of a saved --json file")
    a = ap.parse_args()
    if a.report:
        saved = json.loads(a.report.read_text())
        inproc_saved = [(r.pop("model"), r) for r in saved.pop("in_process", [])]
        n = saved.pop("max_tokens", a.max_tokens)
        keyed = {(k.split("|")[0], int(k.split("|")[1]), k.split("|")[2]): v for k, v in saved.items()}
        print_tables(keyed, {}, n)
        if inproc_saved:
            print_in_process(inproc_saved)
        return 0
    if a.quick:
        # a smoke run: no waiting for a quiet machine either (CI runners are never quiet)
        a.models, a.clients, a.reps, a.max_tokens, a.retries, a.wait_budget = "tiny32", "1,4", 1, 16, 0, 0.0
    from step35.context import default_threads

    threads = a.threads or max(1, default_threads() - 1)
    clients = _ints(a.clients)
    names = [n.strip() for n in a.servers.split(",") if n.strip()]
    for n in names:
        if n not in SERVERS:
            raise SystemExit(f"--servers: unknown {n!r} (choose from {', '.join(SERVERS)})")
    if "llama-cpp-python" in names and not a.lcp_python:
        print("llama-cpp-python: skipped (no --lcp-python)", file=sys.stderr)
        names.remove("llama-cpp-python")
    if "step35" in names:
        import step35.cli

        cli = Path(step35.cli.__file__)  # a module, or a package of modules
        if "\"serve\"" not in "".join(f.read_text(encoding="utf-8")
                                       for f in (cli.parent.glob("*.py") if cli.name == "__init__.py" else [cli])):
            print("step35: skipped (this step35 has no `serve` command yet)", file=sys.stderr)
            names.remove("step35")
    if not names:
        raise SystemExit("no server to run")
    a.log_dir.mkdir(parents=True, exist_ok=True)
    binary = llama_server_binary(a.llama_server, a.log_dir) if "llama-server" in names else None
    stamp = time.strftime("%Y%m%d-%H%M%S")

    results: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    idle: dict[tuple[str, int, str], float] = {}
    start_failed: list[str] = []
    request_failed: list[str] = []
    extra = {n: (IGNORE_EOS_BODY.get(n, {}) if a.ignore_eos else {}) for n in names}
    inproc: list[tuple[str, dict[str, Any]]] = []
    contended = [0, 0]  # rounds measured again; rounds kept although contended
    waited = [0.0]  # seconds spent waiting for the machine to be quiet
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    print(f"servers: {', '.join(names)}; models: {', '.join(models)}; clients: {clients}; reps {a.reps}; "
          f"max_tokens {a.max_tokens}; threads {threads}; ctx/slot {a.ctx}; -b {a.b} -ub {a.ub} -fa {a.fa}; "
          f"logs in {a.log_dir}", file=sys.stderr)
    interrupted = False
    try:
        for model_name in models:
            print(f"model {model_name}: building it first if it is not cached (mid: ~2 min)", file=sys.stderr)
            path = model_for(model_name)
            for c in clients:
                s = Settings(model=path, np=a.np or c, ctx=a.ctx, threads=threads, b=a.b, ub=a.ub, fa=a.fa,
                             draft=a.draft)
                servers: list[Server] = []
                for n in names:
                    port = free_port()
                    if n == "step35":
                        cmd = step35_serve_cmd(s, port)
                    elif n == "llama-server":
                        assert binary is not None
                        cmd = llama_server_cmd(binary, s, port)
                    else:
                        cmd = lcp_server_cmd(a.lcp_python, s, port, a.lcp_defaults)
                    servers.append(Server(n, cmd, a.log_dir / f"{stamp}-{model_name}-c{c}-{n}.log", port))
                try:
                    up: list[Server] = []
                    for srv in servers:  # one at a time, each ready before the next starts
                        try:
                            t0 = time.perf_counter()
                            srv.start(a.start_timeout)
                            print(f"[{model_name} c={c}] {srv.name} ready in {time.perf_counter() - t0:.1f}s "
                                  f"(port {srv.port})", file=sys.stderr)
                            warm = run_round(srv, c, min(8, a.max_tokens), extra[srv.name], a.unique)
                            if warm["errors"]:
                                raise ServerError(f"{srv.name}: warm-up request failed: {warm['errors'][0]}")
                            up.append(srv)
                            results[(model_name, c, srv.name)] = []
                            idle[(model_name, c, srv.name)] = 0.0
                        except ServerError as e:
                            print(f"error: {e}", file=sys.stderr)
                            start_failed.append(f"{srv.name} ({model_name}, {c} clients)")
                            srv.stop()
                    for rep in range(a.reps):
                        order = up[rep % len(up):] + up[:rep % len(up)] if up else []
                        for srv in order:
                            others = [o for o in up if o is not srv]
                            for attempt in range(a.retries + 1):
                                before = [o.cpu_seconds() for o in others]
                                window = Foreign(up)
                                r = run_round(srv, c, a.max_tokens, extra[srv.name], a.unique)
                                r["foreign_cores"] = window.share()
                                for o, b0 in zip(others, before):
                                    idle[(model_name, c, o.name)] += o.cpu_seconds() - b0
                                if r["foreign_cores"] < a.max_foreign or attempt == a.retries:
                                    break
                                print(f"[{model_name} c={c}] rep {rep + 1} {srv.name}: other processes used "
                                      f"{r['foreign_cores']:.2f} cores during the round ({r['tps']:.1f} tok/s); "
                                      "measuring it again", file=sys.stderr)
                                contended[0] += 1
                                budget = a.wait_budget - waited[0]
                                if budget > 0:
                                    t_wait = time.monotonic()
                                    wait_quiet(up, a.max_foreign, timeout=min(60.0, budget))
                                    waited[0] += time.monotonic() - t_wait
                            if r["foreign_cores"] >= a.max_foreign:
                                contended[1] += 1
                            results[(model_name, c, srv.name)].append(r)
                            flag = ""
                            if r["errors"]:
                                flag += f" ERRORS {len(r['errors'])}: {r['errors'][0]}"
                            if r["empty"] or r["short"]:
                                flag += f" empty {r['empty']} short {r['short']} (tokens {r['tokens']})"
                            print(f"[{model_name} c={c}] rep {rep + 1}/{a.reps} {srv.name}: {r['tps']:.1f} tok/s, "
                                  f"TTFT p50 {fmt_ms(r['ttft_p50'])} ms, ITL p50 {fmt_ms(r['itl_p50'])} ms, "
                                  f"foreign {r['foreign_cores']:.2f} cores{flag}",
                                  file=sys.stderr)
                            if r["errors"] or (srv.name in FULL_ANSWER and (r["empty"] or r["short"])):
                                request_failed.append(f"{srv.name} ({model_name}, {c} clients, rep {rep + 1})")
                            if srv.proc is not None and srv.proc.poll() is not None:
                                print(f"error: {srv.name} died; see {srv.log}", file=sys.stderr)
                                start_failed.append(f"{srv.name} died ({model_name}, {c} clients)")
                                up.remove(srv)
                                break
                finally:
                    for srv in servers:
                        srv.stop()
            if a.in_process != "none":
                bs = _ints(a.in_process) if a.in_process else [c for c in clients if c > 1] or [max(clients)]
                for b_seqs in bs:
                    s = Settings(model=path, np=b_seqs, ctx=a.ctx, threads=threads, b=a.b, ub=a.ub, fa=a.fa)
                    print(f"[{model_name}] in-process: generate([{b_seqs} prompts]) vs bench S_TG B={b_seqs}",
                          file=sys.stderr)
                    inproc.append((model_name, in_process(path, b_seqs, s, a.max_tokens, max(1, min(a.reps, 5)))))
    except KeyboardInterrupt:  # report what was measured
        interrupted = True
        print("interrupted: stopping servers; the tables hold what was measured", file=sys.stderr)
        kill_all()

    print_tables(results, idle, a.max_tokens)
    if contended[0] or contended[1]:
        print(f"\nnote: {contended[0]} round(s) were measured again because other processes used the CPU "
              f"(waited {waited[0]:.0f}s for quiet); {contended[1]} round(s) kept although still contended "
              f"(> {a.max_foreign} cores) after {a.retries} retries")
    if inproc:
        request_failed += print_in_process(inproc)
    if a.json:
        a.json.write_text(json.dumps({f"{k[0]}|{k[1]}|{k[2]}": v for k, v in results.items()}
                                     | {"in_process": [{"model": m, **r} for m, r in inproc],
                                        "max_tokens": a.max_tokens}, indent=1))
    if start_failed:
        print("\nFAILED to start / died: " + "; ".join(start_failed), file=sys.stderr)
    if request_failed:
        print("\nFAILED requests: " + "; ".join(request_failed), file=sys.stderr)
    if interrupted:
        return 130
    return 2 if start_failed else 1 if request_failed else 0


def _on_signal(signum: int, frame: Any) -> None:  # noqa: ARG001
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: stopping servers", file=sys.stderr)
        sys.exit(130)
    finally:
        kill_all()
