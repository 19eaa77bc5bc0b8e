"""The batched benchmark and the generation/chat/quantize command lines (on the tiny model)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys

import pytest

import step35
from step35.tools import bench

ROW_RE = re.compile(r"^\|\s*\d+ \|\s+\d+ \|\s+\d+ \|\s+\d+ \|(\s+[\d.]+ \|){6}$")


def test_rows_semantics(tiny_path) -> None:
    rows = bench.run(tiny_path, npp=[8, 16], ntg=[4], npl=[1, 2], progress=False)
    assert [(r.pp, r.tg, r.pl) for r in rows] == [(8, 4, 1), (8, 4, 2), (16, 4, 1), (16, 4, 2)]
    for r in rows:
        assert r.n_kv == r.pl * (r.pp + r.tg)
        assert r.t_pp > 0 and r.t_tg > 0
        assert r.s_pp == pytest.approx(r.pl * r.pp / r.t_pp)
        assert r.s_tg == pytest.approx(r.pl * r.tg / r.t_tg)
        assert r.s == pytest.approx((r.pl * r.pp + r.pl * r.tg) / (r.t_pp + r.t_tg))


def test_shared_prompt_and_row_skipping(tiny_path) -> None:
    rows = bench.run(tiny_path, npp=[32], ntg=[8], npl=[1, 4], shared_prompt=True, kv_unified=True,
                     progress=False)
    assert [r.n_kv for r in rows] == [32 + 8, 32 + 4 * 8]
    assert rows[1].s_pp == pytest.approx(32 / rows[1].t_pp)
    # n_ctx too small for the second row: it is skipped, as llama-batched-bench does.
    rows = bench.run(tiny_path, npp=[100, 300], ntg=[8], npl=[1], n_ctx=256, progress=False)
    assert [r.pp for r in rows] == [100]
    with pytest.raises(step35.ContextOverflowError):
        bench.run(tiny_path, npp=[300], ntg=[8], npl=[1], n_ctx=256, progress=False)


def test_bad_arguments(tiny_path) -> None:
    with pytest.raises(ValueError, match="npl"):
        bench.run(tiny_path, npp=[8], ntg=[4], npl=[0])
    with pytest.raises(ValueError, match="npp"):
        bench.run(tiny_path, npp=[], ntg=[4], npl=[1])
    with pytest.raises(ValueError, match="type_k"):
        bench.run(tiny_path, npp=[8], ntg=[4], npl=[1], type_k="q3")


def test_formats(tiny_path) -> None:
    rows = bench.run(tiny_path, npp=[8], ntg=[2], npl=[1, 2], progress=False)
    md = bench.markdown(rows).splitlines()
    assert md[0].split("|")[1].strip() == "PP" and len(md) == 4
    assert all(ROW_RE.match(line) for line in md[2:]), md
    js = [json.loads(line) for line in bench.to_json(rows).splitlines()]
    assert js[1]["pl"] == 2 and js[1]["speed_tg"] == pytest.approx(rows[1].s_tg)
    table = list(csv.DictReader(io.StringIO(bench.to_csv(rows))))
    assert len(table) == 2 and float(table[0]["t_pp"]) == pytest.approx(rows[0].t_pp)


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "step35", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_cli_bench_default_model_and_json(model_cache) -> None:
    r = _cli("bench", "-npp", "8,16", "-ntg", "4", "-npl", "1,2")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if ROW_RE.match(line)]
    assert len(lines) == 4, r.stdout
    r = _cli("bench", "-npp", "8", "-ntg", "2", "-npl", "1", "--output-format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["pp"] == 8


def test_cli_bench_bad_flag_is_a_clear_error(model_cache) -> None:
    r = _cli("bench", "-npp", "8", "-ntg", "2", "-ctk", "q3")
    assert r.returncode == 1 and "type_k" in r.stderr
    r = _cli("bench", "-npp", "a,b")
    assert r.returncode == 2 and "comma-separated" in r.stderr


def test_cli_run_prints_answer_and_stats(model_cache) -> None:
    r = _cli("run", "-p", "Hello there", "-n", "12", "--temp", "0", "-c", "512")
    assert r.returncode == 0, r.stderr
    assert "tok/s" in r.stderr and "ttft" in r.stderr
    r2 = _cli("run", "-p", "Hello there", "-n", "12", "--temp", "0", "-c", "512")
    assert r2.stdout == r.stdout  # greedy: the same answer
    raw = _cli("run", "--raw", "-p", "Once upon", "-n", "5", "--temp", "0")
    assert raw.returncode == 0 and ("[length]" in raw.stderr or "[stop]" in raw.stderr), raw.stderr


def test_cli_run_rejects_bad_parameters(model_cache) -> None:
    r = _cli("run", "-p", "x", "--top-p", "1.5")
    assert r.returncode == 1 and "top_p" in r.stderr
    r = _cli("run", "-p", "x", "-n", "-3")
    assert r.returncode == 1 and "max_tokens" in r.stderr
    r = _cli("run", "-p", "x", "--repeat-last-n", "-5")  # the chat path takes every sampling setting
    assert r.returncode == 1 and "repeat_last_n" in r.stderr


def test_cli_chat_session(model_cache) -> None:
    p = subprocess.run([sys.executable, "-m", "step35", "chat", "-n", "8", "--temp", "0", "-c", "1024"],
                       input="Hello\n/reset\nAgain\n/exit\n", capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "conversation cleared" in p.stderr


def test_cli_quantize(tiny_path, tmp_path) -> None:
    dst = tmp_path / "t-q8.gguf"
    r = _cli("quantize", str(tiny_path), str(dst), "Q8_0")
    assert r.returncode == 0, r.stderr
    assert dst.is_file() and str(dst) in r.stdout
    r = _cli("quantize", str(tiny_path), str(dst), "Q8_0")
    assert r.returncode == 1 and "overwrite" in r.stderr
