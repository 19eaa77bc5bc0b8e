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
    lib = Path(step35.__file__).absolute().parent / "lib"
    assert Path(cpu[0].library).parent == lib
    assert any(d["type"] == "cpu" for d in cpu[0].devices)
    assert r.version == step35.__version__
    assert r.llama_commit == "0c1e57098"


def test_variant_choice_is_the_best_supported_score() -> None:
    import os

    r = step35.backends()
    assert r.cpu_variant is not None
    supported = [v for v in r.cpu_variants if v.score > 0]
    assert supported, r.cpu_variants
    best = max(supported, key=lambda v: v.score)
    # The whole suite also runs with a variant forced (STEP35_CPU_VARIANT): then that one.
    assert r.cpu_variant == (os.environ.get("STEP35_CPU_VARIANT") or best.name)
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


def test_version_skew_names_the_extra_of_that_plugin(tmp_path: Path) -> None:
    """A skewed CUDA 13 plugin is fixed by step35[cuda13]; step35[cuda] would install CUDA 12."""
    _fake_plugin(tmp_path, "step35-cuda13", "0.0.0.dev1", "old_cuda13", "def libraries():\n    return []\n", "cuda13")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "step35", "info"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "version skew: step35-cuda13 0.0.0.dev1" in r.stdout
    assert "`pip install step35[cuda13]`" in r.stdout and "step35[cuda]`" not in r.stdout


def test_install_hints_match_the_extras_in_pyproject() -> None:
    """Every plugin extra of the core distribution is the one the hint names (one home for the mapping)."""
    from importlib import metadata

    from step35._runtime.plugins import PLUGIN_EXTRAS, install_hint

    requires = metadata.requires("step35") or []
    for dist, extra in PLUGIN_EXTRAS.items():
        assert any(r.startswith(f"{dist}==") and f'extra == "{extra}"' in r for r in requires), (dist, requires)
        assert install_hint(dist) == f"pip install step35[{extra}]"


# ---- plugin policy (step35._runtime.plugins): what a CUDA / Vulkan plugin reports ----

def _driver_loadable() -> bool:
    import ctypes

    try:
        ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return False
    return True


def test_cuda_plugin_reports_the_missing_driver(tmp_path: Path) -> None:
    """A CUDA plugin on a machine without the NVIDIA driver: a reason, a warning, the CPU still works."""
    lib = tmp_path / "plugin_lib"
    lib.mkdir()
    (lib / ("ggml-cuda.dll" if sys.platform == "win32" else "libggml-cuda.so")).write_bytes(b"\x7fELF stand-in")
    _fake_plugin(tmp_path, "step35-cuda12", step35.__version__, "fake_cuda",
                 "from pathlib import Path\n"
                 "def libraries():\n"
                 "    from step35._runtime.plugins import cuda_libraries\n"
                 f"    return cuda_libraries(Path({str(lib)!r}), 12)\n", "cuda")
    env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "step35", "info"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert f"cuda [step35-cuda12 {step35.__version__} (plugin)]" in r.stdout, r.stdout
    if _driver_loadable():  # a machine with the driver: the stand-in library is what fails
        assert "no NVIDIA driver found" not in r.stdout
    else:
        assert "CUDA plugin installed, no NVIDIA driver found (libcuda.so.1 cannot be loaded" in r.stdout \
            or "CUDA plugin installed, no NVIDIA driver found (nvcuda.dll" in r.stdout
        assert r.stderr.count("RuntimeWarning") == 1
    assert "* " in r.stdout  # the CPU variant is still chosen and loaded


def test_cuda_runtime_missing_names_the_wheels(tmp_path: Path, monkeypatch) -> None:
    from step35._runtime import plugins

    (tmp_path / "libggml-cuda.so").write_bytes(b"")
    (tmp_path / "ggml-cuda.dll").write_bytes(b"")
    monkeypatch.setattr(plugins, "_driver_problem", lambda: None)
    monkeypatch.setattr(plugins, "_site_dirs", lambda: [])
    monkeypatch.setattr(plugins, "_open", lambda name: f"{name}: cannot open shared object file")
    try:
        plugins.cuda_libraries(tmp_path, 12)
    except plugins.PluginUnavailable as e:
        msg = str(e)
    else:
        raise AssertionError("no error")
    assert "CUDA 12 runtime is incomplete" in msg
    assert "pip install nvidia-cuda-runtime-cu12 nvidia-cublas-cu12" in msg
    assert isinstance(plugins.PluginUnavailable("x"), step35.BackendLoadError)


def test_cuda_runtime_preloaded_from_nvidia_wheels(tmp_path: Path, monkeypatch) -> None:
    """CUDA 13 wheels share nvidia/cu13/lib: cudart, then cuBLASLt, then cuBLAS, by full path."""
    from step35._runtime import plugins

    if sys.platform == "win32":
        return  # the Windows layout (bin/, add_dll_directory) is exercised by the wheel matrix
    libdir = tmp_path / "plugin"
    libdir.mkdir()
    (libdir / "libggml-cuda.so").write_bytes(b"")
    wheel = tmp_path / "site" / "nvidia" / "cu13" / "lib"
    wheel.mkdir(parents=True)
    for f in ("libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13"):
        (wheel / f).write_bytes(b"")
    opened: list[str] = []
    monkeypatch.setattr(plugins, "_driver_problem", lambda: None)
    monkeypatch.setattr(plugins, "_site_dirs", lambda: [tmp_path / "site"])
    monkeypatch.setattr(plugins, "_open", lambda name: opened.append(name))
    got = plugins.cuda_libraries(libdir, 13)
    assert got == [str(libdir / "libggml-cuda.so")]
    assert opened == [str(wheel / f) for f in ("libcudart.so.13", "libcublasLt.so.13", "libcublas.so.13")]
    assert plugins.note(got[0]) == f"CUDA 13 runtime from NVIDIA's wheels ({wheel})"


def test_vulkan_without_a_loader_and_a_damaged_plugin(tmp_path: Path, monkeypatch) -> None:
    from step35._runtime import plugins

    try:
        plugins.vulkan_libraries(tmp_path)
    except plugins.PluginUnavailable as e:
        assert "is missing: the plugin is damaged; reinstall it" in str(e)
    else:
        raise AssertionError("no error")
    (tmp_path / ("ggml-vulkan.dll" if sys.platform == "win32" else "libggml-vulkan.so")).write_bytes(b"")
    monkeypatch.setattr(plugins, "_open", lambda name: f"{name}: cannot open shared object file")
    try:
        plugins.vulkan_libraries(tmp_path)
    except plugins.PluginUnavailable as e:
        assert "Vulkan plugin installed, no Vulkan loader found" in str(e)
        assert "apt install libvulkan1 mesa-vulkan-drivers" in str(e)
    else:
        raise AssertionError("no error")


def test_a_cpu_variant_can_be_forced() -> None:
    """STEP35_CPU_VARIANT loads that variant (one this CPU can run) instead of the best one."""
    import os

    runnable = sorted((v for v in step35.backends().cpu_variants if v.score > 0), key=lambda v: v.score)
    forced = runnable[0].name  # the lowest this CPU runs: never the default choice where there are two
    code = "import step35; r = step35.backends(); print(r.cpu_variant); print(r.loaded[0].note)"
    env = {**os.environ, "STEP35_CPU_VARIANT": forced}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    variant, note = r.stdout.splitlines()[:2]
    assert variant == forced and "forced by STEP35_CPU_VARIANT" in note, r.stdout


def test_an_unknown_forced_cpu_variant_is_reported() -> None:
    import os

    env = {**os.environ, "STEP35_CPU_VARIANT": "pentium2"}
    code = "import step35; print(step35.backends().cpu_variant)"
    r = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, env=env,
                       check=True)
    best = max((v for v in step35.backends().cpu_variants if v.score > 0), key=lambda v: v.score).name
    assert r.stdout.strip() == best
    assert "STEP35_CPU_VARIANT=pentium2 cannot be used: no such variant" in r.stderr, r.stderr
