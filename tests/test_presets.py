"""The seeds' validated platforms as presets: recognised from CPU/device names, valid commands."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest
from step35.tools import presets
from step35.cli import build_parser


@pytest.mark.parametrize("cpu, devices, system, want", [
    ("Apple M4 Max", [], "Darwin", "mac-m4-max"),
    ("Apple M4 Pro", [], "Darwin", None),
    ("Apple M4 Max", [], "Linux", None),  # the Mac preset is for macOS
    ("Cortex-X925", ["NVIDIA GB10"], "Linux", "dgx-spark"),
    ("", ["NVIDIA H100 80GB HBM3"], "Linux", None),
    ("AMD RYZEN AI MAX+ 395 w/ Radeon 8060S", [], "Windows", "ryzen-ai-max-395"),
    ("AMD Ryzen 9 7950X", ["AMD Radeon 8060S Graphics (RADV GFX1151)"], "Linux", "ryzen-ai-max-395"),
    ("Intel(R) Xeon(R) CPU @ 2.20GHz", ["llvmpipe (LLVM 15.0.6, 256 bits)"], "Linux", None),
])
def test_detect(cpu: str, devices: list[str], system: str, want: str | None) -> None:
    got = presets.detect(cpu=cpu, devices=devices, system=system)
    assert (got.name if got else None) == want


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_preset_commands_are_valid_step35_commands(name: str) -> None:
    """Every command a preset shows parses with the real CLI (no flag we do not have)."""
    p = presets.get(name)
    parser = build_parser()
    for line in (p.run, p.bench, p.long_context):
        words = shlex.split(line[line.index("step35 "):])
        assert words[0] == "step35"
        args = parser.parse_args(words[1:])
        assert args.model == "stepfun-ai/Step-3.5-Flash-Int4:Q4_K_S"
    assert p.install.startswith("pip install step35")


def test_seed_settings() -> None:
    """The seeds' choices: 16K/-b 2048/-ub 2048/FA everywhere; -ub 1024 + q8_0 KV at 256K; wired limit on Mac."""
    for p in presets.PRESETS.values():
        assert "-c 16384 -b 2048 -ub 2048 -fa on" in p.bench
    mac, spark, ryzen = (presets.get(n) for n in ("mac-m4-max", "dgx-spark", "ryzen-ai-max-395"))
    assert "sudo sysctl iogpu.wired_limit_mb=122880" in mac.long_context and "-ub 1024" in mac.long_context
    assert "GGML_CUDA_ENABLE_UNIFIED_MEMORY=1" in spark.long_context and "-ctk q8_0 -ctv q8_0" in spark.long_context
    assert "--mmap -t 32" in ryzen.long_context and "-c 65540" in ryzen.long_context
    assert spark.install == "pip install step35[cuda]" and ryzen.install == "pip install step35[vulkan]"


def test_get_unknown_lists_the_names() -> None:
    with pytest.raises(ValueError, match="mac-m4-max, dgx-spark, ryzen-ai-max-395"):
        presets.get("pdp-11")


def test_cli_info_shows_a_preset() -> None:
    out = subprocess.run([sys.executable, "-m", "step35", "info", "--preset", "dgx-spark"],
                         capture_output=True, text=True, check=True).stdout
    assert "platform preset dgx-spark: NVIDIA DGX Spark" in out
    assert "install:      pip install step35[cuda]" in out
    mine = presets.detect()
    out = subprocess.run([sys.executable, "-m", "step35", "info"], capture_output=True, text=True, check=True).stdout
    if mine is None:
        assert "platform preset: this machine is none of the validated platforms" in out
    else:
        assert f"platform preset {mine.name} (recognised)" in out
    data = json.loads(subprocess.run([sys.executable, "-m", "step35", "info", "--json", "--preset", "mac-m4-max"],
                                     capture_output=True, text=True, check=True).stdout)
    assert data["preset"]["name"] == "mac-m4-max" and "match" not in data["preset"]
    r = subprocess.run([sys.executable, "-m", "step35", "info", "--preset", "nope"], capture_output=True, text=True)
    assert r.returncode != 0 and "no preset 'nope'" in r.stderr
