#!/usr/bin/env python3
"""Threads under stress: many threads, one model, random cancels, stream closes and a model.close().

    python scripts/stress_threads.py --threads 8 --seconds 75   # 60 s of generation, then model.close()
    python scripts/stress_threads.py --json      # machine-readable counts

Each thread has its own context on one shared model (the built-in tiny one)
and loops until the time is up, each round one of:

- a whole greedy ``generate`` (its text must equal the reference made before
  the run for that prompt),
- a stream closed after a random number of pieces (what came must be a
  prefix of the reference),
- a ``generate`` that another thread cancels after a random delay (it ends
  with ``Cancelled`` or early; what came must be a prefix of the reference).

Every few rounds a thread drops its context and makes a new one. At
--close-at of the time, another thread calls ``model.close()``: from then on
the model's methods raise ClosedError (the contexts still hold the weights
until they are closed), so each thread ends at its next call. Every join has a time limit: a
thread still running after it is a deadlock. Exit status 0 only with no
deadlock, no wrong output and no unexpected exception.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter

PROMPTS = ["The quick brown fox", "Once upon a time", "In the beginning", "1, 2, 3,", "Hello, world"]
MAX_TOKENS = 24


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=75.0, help="the longest the run takes")
    ap.add_argument("--close-at", type=float, default=0.8, help="fraction of the time at which model.close() runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    import step35
    from step35 import testing
    from step35.errors import Cancelled, ClosedError, ContextBusyError

    model = step35.Model(testing.model_path("tiny"))
    with model.new_context(n_ctx=256, n_threads=1) as ref_ctx:
        reference = {p: model.generate(p, max_tokens=MAX_TOKENS, temperature=0, context=ref_ctx).text
                     for p in PROMPTS}

    counts: Counter[str] = Counter()
    problems: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + a.seconds

    def note(key: str, problem: str | None = None) -> None:
        with lock:
            counts[key] += 1
            if problem:
                problems.append(problem)

    def prefix_ok(prompt: str, text: str, what: str) -> None:
        if reference[prompt].startswith(text):
            note(what)
        else:
            note("wrong output", f"{what}: {text!r} is not a prefix of {reference[prompt]!r}")

    def worker(i: int) -> None:
        rng = random.Random(a.seed * 1000 + i)
        ctx = None
        rounds = 0
        try:
            while time.monotonic() < deadline:
                if ctx is None or rounds % 7 == 0:
                    if ctx is not None:
                        ctx.close()
                    try:
                        ctx = model.new_context(n_ctx=256, n_threads=1)
                    except ClosedError:
                        note("stopped: model closed")
                        return
                rounds += 1
                prompt = rng.choice(PROMPTS)
                action = rng.random()
                if action < 0.45:
                    text = model.generate(prompt, max_tokens=MAX_TOKENS, temperature=0, context=ctx).text
                    if text == reference[prompt]:
                        note("generate: correct")
                    else:
                        note("wrong output", f"generate {prompt!r}: {text!r} != {reference[prompt]!r}")
                elif action < 0.75:
                    stream = model.generate(prompt, max_tokens=MAX_TOKENS, temperature=0, context=ctx, stream=True)
                    got = ""
                    stop_after = rng.randint(0, 8)
                    for n, piece in enumerate(stream):
                        got += piece
                        if n + 1 >= stop_after:
                            break
                    stream.close()
                    prefix_ok(prompt, got, "stream closed early: prefix correct")
                else:
                    timer = threading.Timer(rng.uniform(0.0, 0.02), ctx.cancel)
                    timer.start()
                    try:
                        result = model.generate(prompt, max_tokens=MAX_TOKENS, temperature=0, context=ctx)
                        prefix_ok(prompt, result.text, f"cancel raced: ended {result.finish_reason}")
                    except Cancelled:
                        note("cancelled")
                    finally:
                        timer.cancel()
                        timer.join(10)
        except ClosedError:  # model.close() ran: the Model's methods are closed, its contexts stay valid
            note("stopped: model closed")
        except ContextBusyError as e:  # not expected: each thread owns its context
            note("unexpected error", f"thread {i}: {type(e).__name__}: {e}")
        except Exception as e:
            note("unexpected error", f"thread {i}: {type(e).__name__}: {e}")
        finally:
            if ctx is not None:
                ctx.close()

    def closer() -> None:
        time.sleep(a.seconds * a.close_at)
        model.close()
        note("model.close() from another thread")

    threads = [threading.Thread(target=worker, args=(i,), name=f"stress-{i}", daemon=True) for i in range(a.threads)]
    threads.append(threading.Thread(target=closer, name="closer", daemon=True))
    t0 = time.monotonic()
    for t in threads:
        t.start()
    deadlocked = []
    for t in threads:
        t.join(timeout=max(deadline - time.monotonic(), 0) + 60)
        if t.is_alive():
            deadlocked.append(t.name)
    elapsed = time.monotonic() - t0
    ok = not deadlocked and not problems
    report = {"threads": a.threads, "seconds": round(elapsed, 1), "counts": dict(counts), "deadlocked": deadlocked,
              "problems": problems[:20], "ok": ok}
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{a.threads} threads, {elapsed:.1f} s: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
        print(f"deadlocked threads: {deadlocked or 'none'}; problems: {len(problems)}")
        for p in problems[:20]:
            print("  " + p)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
