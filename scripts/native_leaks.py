#!/usr/bin/env python3
"""Native leaks under valgrind: load / generate / context / close cycles, leaks attributed to our libraries.

    python scripts/native_leaks.py --cycles 3          # needs valgrind (apt install valgrind)

Runs a few load + generate + new_context + logits + close cycles on the tiny
model under ``valgrind --leak-check=full`` (with ``PYTHONMALLOC=malloc`` so
that Python's own allocations are visible as such), then sorts every
"definitely lost" and "possibly lost" record by whether any frame of its stack
is in libllama, libggml*, libllama-common or step35's extension. CPython and
numpy keep some interpreter-lifetime objects unreleased at exit; those are
counted separately, and so are our extension's import-time objects (pybind11's
types and functions, made once per process when ``step35._core`` is imported).
Exit status 1 when a record from after the import involves our libraries.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

CYCLES = r"""
import sys
import step35
from step35 import testing
path = testing.model_path("tiny")
for _ in range(int(sys.argv[1])):
    with step35.Model(path, check_memory=False) as m:
        m.generate("The quick brown fox", max_tokens=8, temperature=0)
        with m.new_context(n_ctx=256) as ctx:
            ctx.logits(m.tokenize("hello world"))
"""
OURS = re.compile(r"libllama|libggml|_core\.cpython|step35")
IMPORT_TIME = re.compile(r"PyInit__core|import_find_and_load")
RECORD = re.compile(r"==\d+== ([\d,]+) (?:\([\d,]+ direct, [\d,]+ indirect\) )?bytes in [\d,]+ blocks are "
                    r"(definitely|possibly) lost in loss record.*?(?=\n==\d+== \n)", re.S)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if not shutil.which("valgrind"):
        print("valgrind is not installed (apt install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "valgrind.log")
        env = dict(os.environ, PYTHONMALLOC="malloc")
        r = subprocess.run(["valgrind", "--leak-check=full", "--show-leak-kinds=definite,possible",
                            "--num-callers=40", f"--log-file={log}", sys.executable, "-c", CYCLES, str(a.cycles)],
                           env=env, capture_output=True, text=True, timeout=3600)
        if r.returncode != 0:
            print(r.stderr[-3000:], file=sys.stderr)
            return 1
        text = open(log, encoding="utf-8", errors="replace").read()
    summary = {k: v for k, v in re.findall(r"(definitely lost|indirectly lost|possibly lost|still reachable): "
                                           r"([\d,]+ bytes in [\d,]+ blocks)", text)}
    ours, at_import, others = [], 0, {"definitely": 0, "possibly": 0}
    for m in RECORD.finditer(text):
        if not OURS.search(m.group(0)):
            others[m.group(2)] += 1
        elif IMPORT_TIME.search(m.group(0)):
            at_import += 1
        else:
            ours.append(m.group(0))
    report = {"cycles": a.cycles, "summary": summary, "records_in_our_libraries": len(ours),
              "records_of_our_import": at_import, "records_elsewhere": others}
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{a.cycles} cycles under valgrind: " + "; ".join(f"{k}: {v}" for k, v in summary.items()))
        print(f"leak records with a frame in libllama/libggml/_core after the import: {len(ours)}; at the import of "
              f"step35._core (once): {at_import}; elsewhere (CPython, numpy): {others['definitely']} definitely, "
              f"{others['possibly']} possibly lost")
        for rec in ours[:10]:
            print(rec)
    return 1 if ours else 0


if __name__ == "__main__":
    sys.exit(main())
