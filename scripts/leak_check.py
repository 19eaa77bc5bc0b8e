#!/usr/bin/env python3
"""Does repeated use grow the process? RSS over many load/generate/close or context cycles.

    python scripts/leak_check.py models   --cycles 200     # Model(...) + generate + close()
    python scripts/leak_check.py contexts --cycles 1000    # new_context() + eval + close() on one model
    python scripts/leak_check.py models --json            # machine-readable
    python scripts/leak_check.py models --mtp              # tiny-mtp with its heads, generating with draft 2

Runs the cycles in this process on the built-in tiny model, after a warm-up
of --warmup cycles (first-use allocations: backend registration, the
allocator's arenas, caches), and samples the resident set size every
--every cycles. Prints the growth from the end of the warm-up to the end, and
the growth over the second half alone: memory that levels off (allocator
arenas settling) shows growth in the first half and ~0 in the second; a leak
grows steadily in both. Exit status 1 when the growth exceeds --limit-mb.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; elsewhere the peak, from resource)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("models", "contexts"))
    ap.add_argument("--cycles", type=int, default=None, help="default: 200 models, 1000 contexts")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--limit-mb", type=float, default=2.0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--mtp", action="store_true", help="tiny-mtp with its MTP heads (draft contexts), draft 2")
    a = ap.parse_args(argv)
    cycles = a.cycles or (200 if a.what == "models" else 1000)

    import step35
    from step35 import testing

    path = testing.model_path("tiny-mtp" if a.mtp else "tiny")
    draft = 2 if a.mtp else 0
    keep = step35.Model(path, mtp=a.mtp) if a.what == "contexts" else None
    tokens = keep.tokenize("The quick brown fox") if keep else None

    def cycle() -> None:
        if a.what == "models":
            with step35.Model(path, check_memory=False, mtp=a.mtp) as m:
                m.generate("The quick brown fox", max_tokens=8, temperature=0, draft=draft)
        else:
            with keep.new_context(n_ctx=256) as ctx:
                ctx.logits(tokens)
                if a.mtp:  # the draft context too
                    keep.generate(tokens, max_tokens=8, temperature=0, draft=draft, context=ctx)

    for _ in range(a.warmup):
        cycle()
    gc.collect()
    samples = [(0, rss_bytes())]
    for i in range(1, cycles + 1):
        cycle()
        if i % a.every == 0 or i == cycles:
            gc.collect()
            samples.append((i, rss_bytes()))
    if keep is not None:
        keep.close()

    start, end = samples[0][1], samples[-1][1]
    mid = min(samples, key=lambda s: abs(s[0] - cycles // 2))[1]
    growth, second_half = end - start, end - mid
    report = {"what": a.what, "cycles": cycles, "warmup": a.warmup, "rss_start": start, "rss_end": end,
              "growth_bytes": growth, "second_half_growth_bytes": second_half,
              "samples": [{"cycle": c, "rss": r} for c, r in samples]}
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        mb = 1 << 20
        print(f"{a.what}: {cycles} cycles after {a.warmup} warm-up: RSS {start / mb:.1f} -> {end / mb:.1f} MiB, "
              f"growth {growth / mb:+.2f} MiB ({growth / cycles / 1024:+.1f} KiB/cycle), "
              f"second half {second_half / mb:+.2f} MiB")
    return 0 if growth <= a.limit_mb * (1 << 20) else 1


if __name__ == "__main__":
    sys.exit(main())
