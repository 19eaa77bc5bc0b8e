"""Hostile GGUF files: every one ends in a typed error naming the file, in a subprocess (a crash shows as a crash).

The cases (tests/hostile_gguf.py) are made from the tiny model by byte surgery:
truncation at every 5 %, counts and lengths of 2^32 and 2^63, tensor offsets
past the end of the file, overlapping tensors, dims whose product overflows,
unknown and removed ggml types, bad alignments, duplicate tensor names and
keys, tokenizer arrays of the wrong type or length, broken split sets, and the
fork-era keys. Each is loaded with ``step35.Model(path)`` in a fresh process
with a time limit; the outcome must be a :class:`~step35.errors.Step35Error`
(or ``FileNotFoundError`` for a missing part) whose message names the file.
``STEP35_REPORT_DIR`` set: the outcomes are written to hostile_gguf.json there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NO_SOURCE_TREE, in_source_tree
from hostile_gguf import CASES, split_cases

TIMEOUT = 120  # seconds per case; a load of the tiny model takes well under one

LOAD = r"""
import json, sys
import step35
path = sys.argv[1]
try:
    with step35.Model(path) as m:
        text = m.generate("Hello", max_tokens=4, temperature=0).text
    out = {"outcome": "loaded", "generated": text}
except Exception as e:
    text = str(e)
    out = {"outcome": "error", "type": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__],
           "names_file": path in text or path.rsplit("/", 1)[-1] in text
                         or str(getattr(e, "filename", "") or "").endswith(path.rsplit("/", 1)[-1]),
           "message": text[:400]}
print("RESULT " + json.dumps(out))
"""

_results: dict[str, dict] = {}


def load_in_subprocess(path: Path) -> dict:
    try:
        r = subprocess.run([sys.executable, "-c", LOAD, str(path)], capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return {"outcome": "hang", "message": f"no result within {TIMEOUT} s"}
    if r.returncode < 0 or (r.returncode != 0 and "RESULT " not in r.stdout):
        return {"outcome": "crash", "message": f"exit {r.returncode}: {r.stderr[-600:]}"}
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


#: Damage llama.cpp deliberately tolerates (it warns and falls back to the default): the model must load and run.
TOLERATED = {"token id out of range (eos = 2^31-1)"}


def check(name: str, result: dict) -> None:
    _results[name] = result
    if name in TOLERATED:
        assert result["outcome"] in ("error", "loaded"), f"{name}: {result}"
        if result["outcome"] == "loaded":
            return
    assert result["outcome"] == "error", f"{name}: {result}"
    typed = "Step35Error" in result["mro"] or result["type"] == "FileNotFoundError"
    assert typed, f"{name}: {result['type']} is not a step35 error: {result['message']}"
    assert result["names_file"], f"{name}: the message does not name the file: {result['message']}"


@pytest.fixture(scope="module")
def source(tiny_path: Path) -> Path:
    return tiny_path


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_file_is_a_typed_error(name: str, source: Path, tmp_path: Path) -> None:
    path = CASES[name](source, tmp_path)
    check(name, load_in_subprocess(path))


@pytest.fixture(scope="module")
def split_sources(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> tuple[list[Path], list[Path]]:
    from step35 import testing

    d = tmp_path_factory.mktemp("hostile-split")
    ours = testing.build_model(d / "a" / "model.gguf", "tiny", n_split=3)
    other = testing.build_model(d / "b" / "model.gguf", "small", n_split=3)
    return ours, other


@pytest.mark.parametrize("name", sorted(split_cases([], [])))
def test_hostile_split_set_is_a_typed_error(name: str, split_sources, tmp_path: Path) -> None:
    ours, other = split_sources
    path = split_cases(ours, other)[name](tmp_path)
    check(name, load_in_subprocess(path))


def test_fork_era_keys_are_a_typed_error(tmp_path: Path, model_cache: Path) -> None:
    from step35 import testing

    path = testing.write_fork_era_model(tmp_path / "fork.gguf")
    check("fork-era keys", load_in_subprocess(path))


@pytest.fixture(scope="module", autouse=True)
def report():
    """After the module: the outcomes, counted, and written to $STEP35_REPORT_DIR/hostile_gguf.json when set."""
    yield
    out = os.environ.get("STEP35_REPORT_DIR")
    if out and _results:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "hostile_gguf.json").write_text(json.dumps(_results, indent=2, sort_keys=True))
    print(f"\n[hostile] {len(_results)} cases: " + ", ".join(
        f"{k}: {sum(1 for r in _results.values() if r['outcome'] == k)}" for k in ("error", "crash", "hang", "loaded")))


# The saved findings live in the source tree (fuzz/regressions), not in tests/.
_REGRESSION_DIR = in_source_tree("fuzz/regressions")
REGRESSIONS = (
    [pytest.param(p, id=p.name[:16]) for p in sorted(_REGRESSION_DIR.glob("*.gguf"))] if _REGRESSION_DIR
    else [pytest.param(None, id="no-source-tree", marks=pytest.mark.skip(
        reason=f"needs fuzz/regressions from the source tree (the fuzzer's saved findings); {NO_SOURCE_TREE}"))])


@pytest.mark.parametrize("path", REGRESSIONS)
def test_fuzzer_findings_stay_fixed(path: Path, tmp_path: Path) -> None:
    """Inputs on which the native fuzzer once found a crash or undefined behaviour (fuzz/regressions)."""
    copy = tmp_path / "finding.gguf"
    copy.write_bytes(path.read_bytes())
    result = load_in_subprocess(copy)
    _results[f"fuzz finding {path.name[:16]}"] = result
    assert result["outcome"] in ("error", "loaded"), f"{path.name}: {result}"
    if result["outcome"] == "error":
        assert "Step35Error" in result["mro"] and result["names_file"], result
