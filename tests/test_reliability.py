"""Repeated use does not grow the process; threads and Ctrl-C do not break it.

Each test runs one of the reliability scripts in scripts/ (the same ones the
README's reliability table comes from) in a fresh process, with shorter runs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

MiB = 1 << 20


def run_script(name: str, *args: str, timeout: float = 900) -> dict:
    r = subprocess.run([sys.executable, str(REPO / "scripts" / name), *args, "--json"], capture_output=True,
                       text=True, timeout=timeout)
    assert r.stdout.strip(), r.stderr[-3000:]
    return json.loads(r.stdout[r.stdout.index("{"):])


@pytest.mark.slow
@pytest.mark.parametrize("what,cycles", [("models", 200), ("contexts", 1000)])
def test_cycles_do_not_grow_rss(what: str, cycles: int, model_cache) -> None:
    report = run_script("leak_check.py", what, "--cycles", str(cycles))
    growth, late = report["growth_bytes"], report["second_half_growth_bytes"]
    print(f"[leaks] {what}: {cycles} cycles, RSS growth {growth / MiB:+.2f} MiB, second half {late / MiB:+.2f} MiB")
    # at most 2 MiB in all, or growth that has stopped (allocator arenas settling)
    assert growth <= 2 * MiB or late <= MiB // 4, report


@pytest.mark.slow
def test_threads_under_stress(model_cache) -> None:
    report = run_script("stress_threads.py", "--threads", "8", "--seconds", "20")
    print(f"[stress] {report['counts']}")
    assert not report["deadlocked"], report
    assert not report["problems"], report["problems"]
    assert report["counts"].get("generate: correct", 0) > 0
    assert report["counts"].get("stopped: model closed", 0) == 8


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_at_random_points_leaves_the_process_usable(model_cache) -> None:
    report = run_script("interrupt_check.py", "--seconds", "15")
    print(f"[interrupts] {report['signals']} SIGINTs: {report['counts']}")
    assert not report["problems"], report["problems"]
    assert report["signals"] > 10
    interrupted = sum(v for k, v in report["counts"].items() if k.endswith("interrupted"))
    assert interrupted > 0


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the server's RSS from /proc")
def test_server_survives_abuse(model_cache) -> None:
    report = run_script("server_abuse.py", "--bad", "400", "--crowd", "60", "--soak", "400", timeout=1200)
    b, c, s = report["bad_requests"], report["crowd"], report["soak"]
    print(f"[abuse] bad requests {b['statuses']}; crowd {c['outcomes']}; soak {s['finish_reasons']}, "
          f"RSS growth {s['rss_growth'] / MiB:+.2f} MiB")
    log = report.get("server_log_tail", "")
    assert not any(int(code) >= 500 for code in b["statuses"]), b
    assert not b["failures"], b["failures"]
    # the crowd: every client answered, none stuck, nothing left running or waiting, still healthy
    assert not c["failures"] and not c["stuck_clients"], c
    assert (c["running_after"], c["waiting_after"], c["health_after"]) == (0, 0, 200), c
    # the soak: no failures, and the process stopped growing (at most 8 MiB over its second half)
    assert not s["failures"], s["failures"]
    assert s["rss_growth_second_half"] <= 8 * MiB, s
    assert report["server_alive"], log
    assert report["exit_status"] == 0, (report["exit_status"], log)
