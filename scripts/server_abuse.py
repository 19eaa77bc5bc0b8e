#!/usr/bin/env python3
"""`step35 serve` under abuse: bad requests, a crowd of connections, slow and vanishing clients, a soak.

    python scripts/server_abuse.py                         # the full run (README's reliability table)
    python scripts/server_abuse.py --bad 300 --crowd 50 --soak 200 --json   # shorter (tests)

Starts ``step35 serve`` on the built-in tiny model (4 slots of 256 tokens, an
API key) and runs, against that one process:

1. **Bad requests** (--bad, default 1200): valid bodies of every route, each
   broken by a seeded mutation (a field dropped, given the wrong type, a huge
   or negative number, NaN, deep nesting, unknown fields and roles, invalid
   UTF-8, no or the wrong content type or key, an unknown route or method,
   an oversized body). Every answer must be 4xx with OpenAI's error shape
   (or 2xx where the mutation left the request valid); never 5xx, never a
   dropped connection.
2. **A crowd** (--crowd, default 200): that many concurrent streaming
   requests, a third reading slowly, a third disconnecting after the first
   chunk. Each ends in a stream or a 429; afterwards no request holds a
   slot or waits (/metrics), and /health is ok.
3. **A soak** (--soak, default 2000): short requests from 8 threads; the
   server's RSS is sampled after each tenth; its growth over the second half
   must stay under --rss-limit-mb.

The server must still be running at the end, and exit 0 on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

KEY = "abuse-key"
MODEL = "tiny"


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def start(model: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "step35", "serve", "-m", str(model), "--port", "0", "-np", "4",
                                 "-c", "256", "--api-key", KEY, "--alias", MODEL, "--max-waiting", "32",
                                 "--max-body-bytes", "65536", "--log-level", "warning", "-t", "1"],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("step35 serve: ") and " on http://" in line:
                return proc, line.split(" on ", 1)[1].split()[0].removesuffix("/v1")
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"step35 serve did not start:\n{log.read_text(errors='replace')}")


# --------------------------------------------------------------------------- 1. bad requests

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0.5,
        "seed": 1, "stream": False, "stop": ["\n\n"], "top_p": 0.9,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
            "a": {"type": "string"}}, "required": ["a"]}}}], "tool_choice": "auto",
        "response_format": {"type": "text"}, "stream_options": None}
COMPLETION = {"model": MODEL, "prompt": "Once", "max_tokens": 4, "temperature": 0.0, "seed": 2, "stream": False}
WEIRD = [None, True, -1, 0, 2**63, -2**63, 1e308, -1e308, "NaN", "", "x" * 5000, [], {}, [[[[[]]]]],
         {"a": {"b": {"c": {}}}}, "\u0000", "\ud800"[:0] + "\U0010ffff", 3.5, "-1", [None], {"role": None}]


def nested(depth: int) -> Any:
    v: Any = 0
    for _ in range(depth):
        v = [v]
    return v


def mutate(rng: random.Random, body: dict) -> tuple[str, Any]:
    """A broken copy of ``body``: (what was done, new body: a dict, or raw bytes)."""
    b = json.loads(json.dumps(body))
    kind = rng.randrange(12)
    key = rng.choice(sorted(b))
    if kind == 0:
        del b[key]
        return f"drop {key}", b
    if kind in (1, 2, 3):
        b[key] = rng.choice(WEIRD)
        return f"{key} = weird", b
    if kind == 4 and "messages" in b:
        b["messages"] = [{"role": rng.choice(["system", "tool", "robot", "", None, 3]),
                          "content": rng.choice(WEIRD)} for _ in range(rng.randint(0, 3))]
        return "messages broken", b
    if kind == 5:
        b[rng.choice(["n", "logprobs", "best_of", "echo", "top_logprobs", "functions"])] = rng.choice([2, True, 5])
        return "unsupported field", b
    if kind == 6:  # written by hand: deeper than json.dumps goes
        depth = rng.choice([50, 500, 5000])
        b[key] = "@NESTED@"
        return f"{key} deeply nested", json.dumps(b).replace('"@NESTED@"', "[" * depth + "0" + "]" * depth).encode()
    if kind == 7:
        raw = json.dumps(b).encode()
        cut = rng.randrange(1, len(raw))
        return "truncated JSON", raw[:cut]
    if kind == 8:
        raw = json.dumps(b).encode()
        i = rng.randrange(len(raw))
        return "invalid UTF-8", raw[:i] + b"\xff\xfe" + raw[i:]
    if kind == 9:
        b["max_tokens"] = rng.choice([-5, 0, 10**12, "4", 4.5, None])
        return "max_tokens broken", b
    if kind == 10:
        b[rng.choice(["temperature", "top_p", "top_k", "min_p", "seed", "repeat_penalty"])] = rng.choice(WEIRD)
        return "sampling broken", b
    b["response_format"] = rng.choice([{"type": "json_schema"}, {"type": "json_schema", "json_schema": {
        "schema": {"type": "object", "properties": {"x": {"type": "string", "pattern": "(a|b"}}}}},
        {"type": "nope"}, "json", {"type": "json_schema", "json_schema": {"schema": nested(200)}}])
    return "response_format broken", b


def bad_requests(url: str, n: int, seed: int) -> dict:
    import httpx

    rng = random.Random(seed)
    statuses: Counter[int] = Counter()
    kinds: Counter[str] = Counter()
    failures: list[str] = []
    with httpx.Client(base_url=url, timeout=120) as h:
        for i in range(n):
            headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
            route = rng.choice(["/v1/chat/completions", "/v1/completions"])
            what, body = mutate(rng, CHAT if route.endswith("chat/completions") else COMPLETION)
            method = "POST"
            extra = rng.randrange(20)
            if extra == 0:
                headers.pop("Authorization")
                what += ", no key"
            elif extra == 1:
                headers["Content-Type"] = rng.choice(["text/plain", "application/x-www-form-urlencoded", ""])
                what += ", wrong content type"
            elif extra == 2:
                route = rng.choice(["/v1/nope", "/v1/chat", "/v2/completions", "/v1/models/../../etc/passwd"])
                what += ", unknown route"
            elif extra == 3:
                method = rng.choice(["GET", "PUT", "DELETE", "PATCH"])
                what += f", {method}"
            elif extra == 4:
                body = {"model": MODEL, "prompt": "x" * 70000}
                what = "body over --max-body-bytes"
            content = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
            kinds[what.split(",")[0].split(" = ")[0]] += 1
            try:
                r = h.request(method, route, content=content, headers=headers)
            except httpx.HTTPError as e:
                failures.append(f"#{i} {what}: connection failed: {type(e).__name__}: {e}")
                continue
            statuses[r.status_code] += 1
            if r.status_code >= 500:
                failures.append(f"#{i} {what}: {r.status_code} {r.text[:300]}")
            elif r.status_code >= 400:
                try:
                    err = r.json()["error"]
                    assert {"message", "type"} <= set(err)
                except (ValueError, KeyError, TypeError, AssertionError):
                    failures.append(f"#{i} {what}: {r.status_code} without OpenAI's error shape: {r.text[:200]}")
    return {"requests": n, "statuses": dict(sorted(statuses.items())), "mutations": dict(kinds),
            "failures": failures}


# --------------------------------------------------------------------------- 2. the crowd


def metrics(url: str) -> dict[str, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    return {s.name: s.value for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def crowd(url: str, n: int, seed: int, pid: int) -> dict:
    import httpx

    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()
    rss_before = rss_of(pid)
    barrier = threading.Barrier(n)

    def one(i: int, style: str) -> None:
        body = {"model": MODEL, "messages": [{"role": "user", "content": f"Tell me {i}"}], "max_tokens": 24,
                "stream": True, "seed": i}
        try:
            with httpx.Client(base_url=url, timeout=300, headers={"Authorization": f"Bearer {KEY}"}) as h:
                barrier.wait(timeout=120)
                with h.stream("POST", "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        r.read()
                        key = f"{r.status_code}"
                        if r.status_code >= 500:
                            with lock:
                                failures.append(f"{style} #{i}: {r.status_code} {r.text[:200]}")
                    else:
                        key = style
                        for k, _ in enumerate(r.iter_lines()):
                            if style == "disconnect" and k >= 1:
                                break  # leaving the block closes the connection mid-stream
                            if style == "slow":
                                time.sleep(0.05)
            with lock:
                outcomes[key] += 1
        except (httpx.HTTPError, threading.BrokenBarrierError) as e:
            with lock:
                failures.append(f"{style} #{i}: {type(e).__name__}: {e}")

    styles = ["normal", "slow", "disconnect"]
    threads = [threading.Thread(target=one, args=(i, rng.choice(styles)), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    stuck = sum(t.is_alive() for t in threads)
    deadline = time.monotonic() + 60
    m = metrics(url)
    while (m.get("step35_requests_running", 0) or m.get("step35_requests_waiting", 0)) and time.monotonic() < deadline:
        time.sleep(0.5)
        m = metrics(url)
    health = httpx.get(f"{url}/health", timeout=60).status_code
    return {"connections": n, "outcomes": dict(outcomes), "stuck_clients": stuck,
            "running_after": m.get("step35_requests_running"), "waiting_after": m.get("step35_requests_waiting"),
            "health_after": health, "rss_before": rss_before, "rss_after": rss_of(pid), "failures": failures}


# --------------------------------------------------------------------------- 3. the soak


def soak(url: str, n: int, pid: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=5, timeout=120)
    samples: list[tuple[int, int]] = [(0, rss_of(pid))]
    statuses: Counter[str] = Counter()
    failures: list[str] = []
    t0 = time.monotonic()

    def one(i: int) -> str:
        if i % 2:
            r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"Hi {i}"}],
                                               max_tokens=4, seed=i)
            return r.choices[0].finish_reason
        r2 = client.completions.create(model=MODEL, prompt=f"Count {i}", max_tokens=4, seed=i)
        return r2.choices[0].finish_reason

    step = max(n // 10, 1)
    with ThreadPoolExecutor(8) as pool:
        for start_i in range(0, n, step):
            for fut in [pool.submit(one, i) for i in range(start_i, min(start_i + step, n))]:
                try:
                    statuses[fut.result()] += 1
                except openai.OpenAIError as e:
                    failures.append(f"{type(e).__name__}: {e}")
            samples.append((min(start_i + step, n), rss_of(pid)))
    mid = samples[len(samples) // 2][1]
    return {"requests": n, "seconds": round(time.monotonic() - t0, 1), "finish_reasons": dict(statuses),
            "rss_samples": samples, "rss_growth": samples[-1][1] - samples[0][1],
            "rss_growth_second_half": samples[-1][1] - mid, "failures": failures[:20]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bad", type=int, default=1200)
    ap.add_argument("--crowd", type=int, default=200)
    ap.add_argument("--soak", type=int, default=2000)
    ap.add_argument("--rss-limit-mb", type=float, default=8.0, help="most RSS growth over the soak's second half")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    from step35 import testing

    model = testing.model_path("tiny")
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start(model, Path(tmp) / "serve.log")
        report: dict[str, Any] = {}
        try:
            report["bad_requests"] = bad_requests(url, a.bad, a.seed)
            report["crowd"] = crowd(url, a.crowd, a.seed, proc.pid)
            report["soak"] = soak(url, a.soak, proc.pid)
            report["server_alive"] = proc.poll() is None
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                report["exit_status"] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                report["exit_status"] = "hung on SIGTERM"
            log = (Path(tmp) / "serve.log").read_text(errors="replace")
    b, c, s = report["bad_requests"], report["crowd"], report["soak"]
    ok = (not b["failures"] and not c["failures"] and not c["stuck_clients"] and not c["running_after"]
          and not c["waiting_after"] and c["health_after"] == 200 and not s["failures"]
          and s["rss_growth_second_half"] <= a.rss_limit_mb * (1 << 20) and report["server_alive"]
          and report["exit_status"] == 0)
    report["ok"] = ok
    if not ok:
        report["server_log_tail"] = log[-3000:]
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        mb = 1 << 20
        print(f"bad requests: {b['requests']}, statuses {b['statuses']}, failures {len(b['failures'])}")
        for f in b["failures"][:10]:
            print("  " + f)
        print(f"crowd: {c['connections']} connections: {c['outcomes']}; stuck {c['stuck_clients']}; after: "
              f"running {c['running_after']:.0f}, waiting {c['waiting_after']:.0f}, /health {c['health_after']}; "
              f"RSS {c['rss_before'] / mb:.1f} -> {c['rss_after'] / mb:.1f} MiB; failures {len(c['failures'])}")
        for f in c["failures"][:10]:
            print("  " + f)
        print(f"soak: {s['requests']} requests in {s['seconds']} s: {s['finish_reasons']}; RSS growth "
              f"{s['rss_growth'] / mb:+.1f} MiB (second half {s['rss_growth_second_half'] / mb:+.1f} MiB); "
              f"failures {len(s['failures'])}")
        print(f"server alive: {report['server_alive']}, exit status on SIGTERM: {report['exit_status']}; "
              f"{'OK' if ok else 'FAILED'}")
        if not ok:
            print(report["server_log_tail"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
