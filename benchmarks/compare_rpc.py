"""step35 bench over loopback RPC against the same bench run locally: the RPC overhead.

Starts one `step35 rpc-server` worker (a fresh process, serving its CPU with
-t threads), then alternates, for --reps repetitions, a local CPU-only
`step35 bench -t T -dev none` and `step35 bench --rpc 127.0.0.1:PORT -ngl -1`
(every layer on the worker; the client keeps one thread, it only feeds the
worker). Both compute on T threads of the same machine, so the difference is
what RPC costs: serializing the graph, copying activations and logits through
the loopback socket, one round trip per decode. Prints per row the median
S_PP and S_TG of each, the ratio rpc / local, and the spread of the ratios.

On one machine the worker and the client share the cores: keep
worker threads + client threads <= cores (default -t 1 on both sides), or
their spinning threads slow each other down many times over.

    python benchmarks/compare_rpc.py --size tiny
    python benchmarks/compare_rpc.py --size mid -npp 128,512 -ntg 32 -npl 1,4 --reps 7
    python benchmarks/compare_rpc.py --quick      # CI: proves the script works, numbers meaningless
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import add_bench_rows_args, bench_model, median, parse_jsonl, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_worker(threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", "step35", "rpc-server", "--port", str(port), "-t", str(threads)],
                                stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"rpc-server exited ({proc.returncode}): {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("rpc-server did not start listening within 60 s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_rows_args(ap, ntg="32")
    ap.add_argument("-t", "--threads", type=int, default=1, help="compute threads, local and on the worker")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--quick", action="store_true", help="tiny rows, 1 repetition (CI smoke run)")
    a = ap.parse_args()
    if a.quick:
        a.npp, a.ntg, a.npl, a.reps = "16", "4", "1,2", 1

    model = a.model or str(bench_model(a.size, a.quant))
    common = [sys.executable, "-m", "step35", "bench", "-m", model, "-npp", a.npp, "-ntg", a.ntg, "-npl", a.npl,
              "--output-format", "jsonl"]
    with tempfile.TemporaryDirectory() as tmp:
        worker, endpoint = start_worker(a.threads, Path(tmp) / "rpc-server.log")
        try:
            runs: dict[str, list[dict]] = {"local": [], "rpc": []}
            cmds = {"local": common + ["-t", str(a.threads), "-dev", "none"],
                    "rpc": common + ["-t", "1", "--rpc", endpoint, "-ngl", "-1"]}
            for rep in range(a.reps):
                order = ("local", "rpc") if rep % 2 == 0 else ("rpc", "local")
                for name in order:
                    out = run(cmds[name])
                    if out.returncode != 0:
                        print(out.stdout, out.stderr, file=sys.stderr)
                        return 1
                    runs[name].append(parse_jsonl(out.stdout))
                print(f"rep {rep + 1}/{a.reps} done", file=sys.stderr, flush=True)
        finally:
            worker.terminate()
            worker.wait(timeout=30)

    print(f"model {Path(model).name}; worker 127.0.0.1 loopback, {a.threads} thread(s) each side; "
          f"{a.reps} alternating repetitions; medians, ratio = rpc / local (spread: min-max of per-rep ratios)")
    print(f"| {'PP':>5} | {'TG':>4} | {'B':>3} | {'local S_PP':>10} | {'rpc S_PP':>10} | {'ratio':>5} | "
          f"{'spread':>11} | {'local S_TG':>10} | {'rpc S_TG':>10} | {'ratio':>5} | {'spread':>11} |")
    print("|" + "|".join("-" * (w + 2) for w in (5, 4, 3, 10, 10, 5, 11, 10, 10, 5, 11)) + "|")
    for key in sorted(runs["local"][0]):
        pp, tg, pl = key
        cells = []
        for metric in ("speed_pp", "speed_tg"):
            loc = [r[key][metric] for r in runs["local"]]
            rem = [r[key][metric] for r in runs["rpc"]]
            ratios = [r / lo for r, lo in zip(rem, loc) if lo > 0]
            cells += [f"{median(loc):10.1f}", f"{median(rem):10.1f}", f"{median(rem) / median(loc):5.3f}",
                      f"{min(ratios):.3f}-{max(ratios):.3f}"]
        print(f"| {pp:>5} | {tg:>4} | {pl:>3} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
