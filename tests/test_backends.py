"""Backends report: the CPU variant chosen from the package's own lib dir, and why."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import step35


def test_cpu_backend_loaded_from_package_lib_dir() -> None:
    r = step35.backends()
    cpu = [b for b in r.loaded if b.name == "CPU"]
    assert len(cpu) == 1, r
    lib = Path(step35.__file__).resolve().parent / "lib"
    assert Path(cpu[0].library).resolve().parent == lib
    assert any(d["type"] == "cpu" for d in cpu[0].devices)
    assert r.version == step35.__version__
    assert r.llama_commit == "0c1e57098"


def test_variant_choice_is_the_best_supported_score() -> None:
    r = step35.backends()
    assert r.cpu_variant is not None
    supported = [v for v in r.cpu_variants if v.score > 0]
    assert supported, r.cpu_variants
    best = max(supported, key=lambda v: v.score)
    assert r.cpu_variant == best.name
    if sys.platform.startswith("linux") and r.cpu_variants and len(r.cpu_variants) > 1:
        # x86_64/arm64 Linux wheels carry every variant; some cannot run everywhere.
        assert {"x64", "haswell"} <= {v.name for v in r.cpu_variants} or any(
            v.name.startswith("armv") for v in r.cpu_variants)


def test_nothing_failed_here() -> None:
    assert step35.backends().failed == []


def test_cli_info_lists_cpu_and_variant() -> None:
    out = subprocess.run([sys.executable, "-m", "step35", "info"], capture_output=True, text=True, check=True).stdout
    r = step35.backends()
    assert "llama.cpp 0c1e57098" in out
    assert "CPU" in out and f"* {r.cpu_variant}" in out
    assert "backends not loaded: none" in out


def test_cli_info_json() -> None:
    out = subprocess.run([sys.executable, "-m", "step35", "info", "--json"],
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    assert data["version"] == step35.__version__
    assert data["cpu_variant"] == step35.backends().cpu_variant


def _fake_plugin(root: Path, dist: str, version: str, module: str, body: str, ep_name: str) -> None:
    (root / module).mkdir()
    (root / module / "__init__.py").write_text(body)
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[step35.backends]\n{ep_name} = {module}:libraries\n")


def test_broken_plugins_are_reported_never_fatal(tmp_path: Path) -> None:
    garbage = tmp_path / "libggml-fake.so"
    garbage.write_bytes(b"\x7fELF not really a library")
    v = step35.__version__
    _fake_plugin(tmp_path, "step35-skewed", "0.0.0.dev1", "skewed", "def libraries():\n    return []\n", "skewed")
    _fake_plugin(tmp_path, "step35-garbage", v, "garbage",
                 f"def libraries():\n    return [{str(garbage)!r}]\n", "garbage")
    _fake_plugin(tmp_path, "step35-raises", v, "raises",
                 "def libraries():\n    raise OSError('libcudart.so.12: cannot open shared object file')\n", "raises")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "step35", "info"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "backends not loaded:" in out and "backends not loaded: none" not in out
    assert "version skew: step35-skewed 0.0.0.dev1 is installed but step35 is" in out
    assert "libggml-fake.so" in out and "cannot open" in out
    assert "plugin failed to initialize: libcudart.so.12" in out
    assert "* " in out  # the CPU variant is still chosen and loaded
    assert r.stderr.count("RuntimeWarning") == 3
