#!/usr/bin/env python3
"""Ctrl-C at random points of load, decode and quantize leaves the process usable.

    python scripts/interrupt_check.py --seconds 30
    python scripts/interrupt_check.py --json

A child process cycles through three operations: loading the built-in mid
model (hundreds of MB, so a signal often lands inside the load), a long greedy
generation on the tiny model, and quantizing the tiny model to Q8_0. This
process sends it SIGINT at random moments (every --min to --max seconds).
Each operation either completes or raises KeyboardInterrupt (anything else is
a failure). When the time is up the child, still the same process, loads the
tiny model and generates: the text must equal what it generated before the
first signal, a quantize destination must never be left half-written, and the
child must exit cleanly. Exit status 0 only then.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

CHILD = r"""
import json, os, signal, sys, tempfile, time
from collections import Counter
from pathlib import Path

signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
import step35
from step35 import testing

tiny = testing.model_path("tiny")
mid = testing.bench_model_path("mid", "default")
prompt = "Once upon a time"
with step35.Model(tiny) as m:
    reference = m.generate(prompt, max_tokens=32, temperature=0).text
out_dir = Path(tempfile.mkdtemp(prefix="step35-interrupt-"))
dst = out_dir / "tiny-q8_0.gguf"
counts = Counter()
problems = []

def load():
    with step35.Model(mid, check_memory=False):
        pass

def decode():
    with step35.Model(tiny) as m:
        m.generate(prompt, max_tokens=100000, temperature=0)

def quantize():
    step35.quantize(tiny, dst, "Q8_0", overwrite=True)

ops = [("load", load), ("decode", decode), ("quantize", quantize)]
print("READY", flush=True)
end = time.monotonic() + float(sys.argv[1])
i = 0
while time.monotonic() < end:
    name, op = ops[i % len(ops)]
    i += 1
    try:
        try:
            op()
            counts[name + ": completed"] += 1
        except KeyboardInterrupt:
            counts[name + ": interrupted"] += 1
        except step35.Step35Error as e:
            counts[name + ": " + type(e).__name__] += 1
            problems.append(f"{name}: {type(e).__name__}: {e}")
        leftovers = [p.name for p in out_dir.iterdir() if p.name != dst.name]
        if leftovers:
            problems.append(f"quantize left {leftovers}")
            for p in out_dir.iterdir():
                if p != dst:
                    p.unlink()
    except KeyboardInterrupt:  # between operations
        counts["between operations: interrupted"] += 1
# the signals have stopped: the same process must still work
signal.signal(signal.SIGINT, signal.SIG_IGN)
with step35.Model(tiny) as m:
    after = m.generate(prompt, max_tokens=32, temperature=0).text
if after != reference:
    problems.append(f"after the signals the model generated {after!r}, before {reference!r}")
if dst.exists():
    with step35.Model(dst) as q:
        q.generate(prompt, max_tokens=4, temperature=0)
print("RESULT " + json.dumps({"counts": dict(counts), "problems": problems}), flush=True)
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--min", type=float, default=0.05, help="shortest gap between signals (s)")
    ap.add_argument("--max", type=float, default=0.6, help="longest gap between signals (s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)

    child = subprocess.Popen([sys.executable, "-c", CHILD, str(a.seconds)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    ready = child.stdout.readline()
    if ready.strip() != "READY":
        print(f"the child did not start: {ready!r} {child.stderr.read() if child.stderr else ''}", file=sys.stderr)
        return 1
    sent = 0
    end = time.monotonic() + a.seconds - 1.0  # stop a second before the child does
    while time.monotonic() < end and child.poll() is None:
        time.sleep(rng.uniform(a.min, a.max))
        if child.poll() is None and time.monotonic() < end:
            os.kill(child.pid, signal.SIGINT)
            sent += 1
    try:
        out, err = child.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        child.kill()
        print("the child hung after the signals", file=sys.stderr)
        return 1
    result_line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
    if child.returncode != 0 or result_line is None:
        print(f"the child failed (exit {child.returncode}): {err[-2000:]}", file=sys.stderr)
        return 1
    result = json.loads(result_line[len("RESULT "):])
    report = {"signals": sent, "seconds": a.seconds, **result, "ok": not result["problems"]}
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{sent} SIGINTs in {a.seconds:.0f} s: " + ", ".join(f"{k}: {v}" for k, v in sorted(result["counts"].items())))
        print(f"problems: {len(result['problems'])}")
        for p in result["problems"]:
            print("  " + p)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
