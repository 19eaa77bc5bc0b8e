"""The pin and the patch series: hash checking, trimming, patching, idempotence."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import REPO, have_git_checkout, source_file

# The script under test lives in the source tree, not in the wheel: outside a
# checkout (cibuildwheel's test directory) the whole module is skipped.
SCRIPT = source_file("llama.cpp/materialize.py", "the script these tests run")

PIN_TEMPLATE = """
[upstream]
repository = "ggml-org/llama.cpp"
commit = "0000fake"

[registry]
package = "fake-llama"
version = "1.0"
filename = "fake_llama-1.0.tar.gz"
sha256 = "{sha}"
subdirectory = "vendor/llama.cpp"
"""


def _fake_sdist(path: Path) -> str:
    """A tiny stand-in for the registry sdist; returns its sha256."""
    files = {
        "fake_llama-1.0/vendor/llama.cpp/CMakeLists.txt": b"project(fake)\n",
        "fake_llama-1.0/vendor/llama.cpp/src/llama.cpp": b"int answer() {\n    return 41;\n}\n",
        "fake_llama-1.0/vendor/llama.cpp/docs/huge.md": b"not needed by the build\n",
        "fake_llama-1.0/vendor/llama.cpp/ggml/src/ggml-sycl/x.cpp": b"dropped backend\n",
        "fake_llama-1.0/setup.py": b"outside the subdirectory\n",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(tmp: Path, sdist: Path, pin: Path, patches: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {"STEP35_LLAMA_SDIST": str(sdist), "PATH": "/usr/bin:/bin", "STEP35_CACHE": str(tmp / "cache")}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--pin", str(pin), "--patches", str(patches),
         "--source", str(tmp / "source"), *extra],
        capture_output=True, text=True, env=env,
    )


@pytest.fixture()
def fake(tmp_path: Path):
    sdist = tmp_path / "fake_llama-1.0.tar.gz"
    sha = _fake_sdist(sdist)
    pin = tmp_path / "pin.toml"
    pin.write_text(PIN_TEMPLATE.format(sha=sha))
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "series").write_text("# none\n")
    return tmp_path, sdist, pin, patches, sha


def test_extracts_only_what_the_build_needs(fake) -> None:
    tmp, sdist, pin, patches, _ = fake
    r = _run(tmp, sdist, pin, patches)
    assert r.returncode == 0, r.stderr
    src = tmp / "source"
    assert (src / "src" / "llama.cpp").read_text().endswith("return 41;\n}\n")
    assert (src / "CMakeLists.txt").exists()
    assert not (src / "docs").exists()
    assert not (src / "ggml" / "src" / "ggml-sycl").exists()
    stamp = json.loads((src / ".step35-stamp.json").read_text())
    assert stamp["upstream_commit"] == "0000fake" and stamp["patches"] == []


def test_one_changed_byte_of_the_pinned_hash_fails(fake) -> None:
    tmp, sdist, pin, patches, sha = fake
    bad = sha[:-1] + ("0" if sha[-1] != "0" else "1")
    pin.write_text(PIN_TEMPLATE.format(sha=bad))
    r = _run(tmp, sdist, pin, patches)
    assert r.returncode == 1
    assert "sha256 mismatch" in r.stderr and bad in r.stderr and sha in r.stderr
    assert not (tmp / "source").exists()


def test_real_pin_with_one_byte_changed_fails(tmp_path: Path) -> None:
    """The real pin.toml, one hex digit of its hash changed, against the real cached sdist."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import materialize
    finally:
        sys.path.pop(0)
    pin = materialize.load_pin()
    sdist = materialize.cache_dir() / pin["registry"]["filename"]
    if not sdist.exists():  # the wheel build downloads it; make sure it is there
        materialize.obtain_sdist(pin, log=print)
    text = (SCRIPT.parent / "pin.toml").read_text()
    sha = pin["registry"]["sha256"]
    changed = sha[:10] + ("a" if sha[10] != "a" else "b") + sha[11:]
    bad_pin = tmp_path / "pin.toml"
    bad_pin.write_text(text.replace(sha, changed))
    r = _run(tmp_path, sdist, bad_pin, SCRIPT.parent / "patches")
    assert r.returncode == 1
    assert "sha256 mismatch" in r.stderr and changed in r.stderr


def test_patches_apply_in_order_and_are_stamped(fake) -> None:
    tmp, sdist, pin, patches, _ = fake
    (patches / "0001-fix-answer.patch").write_text(
        "Why: the answer is 42.\n"
        "--- a/src/llama.cpp\n+++ b/src/llama.cpp\n@@ -1,3 +1,3 @@\n int answer() {\n-    return 41;\n+    return 42;\n }\n"
    )
    (patches / "series").write_text("0001-fix-answer.patch\n")
    r = _run(tmp, sdist, pin, patches)
    assert r.returncode == 0, r.stderr
    assert "return 42;" in (tmp / "source" / "src" / "llama.cpp").read_text()
    stamp = json.loads((tmp / "source" / ".step35-stamp.json").read_text())
    assert [p["name"] for p in stamp["patches"]] == ["0001-fix-answer.patch"]


def test_a_patch_that_no_longer_applies_names_itself(fake) -> None:
    tmp, sdist, pin, patches, _ = fake
    (patches / "0002-stale.patch").write_text(
        "--- a/src/llama.cpp\n+++ b/src/llama.cpp\n@@ -1,3 +1,3 @@\n int answer() {\n-    return 7;\n+    return 8;\n }\n"
    )
    (patches / "series").write_text("0002-stale.patch\n")
    r = _run(tmp, sdist, pin, patches)
    assert r.returncode == 1
    assert "0002-stale.patch no longer applies" in r.stderr
    assert not (tmp / "source").exists()


def test_idempotent_and_offline_once_done(fake) -> None:
    tmp, sdist, pin, patches, _ = fake
    assert _run(tmp, sdist, pin, patches).returncode == 0
    stamp = tmp / "source" / ".step35-stamp.json"
    before = stamp.stat().st_mtime_ns
    sdist.unlink()  # nothing to download from: a second run must not need it
    r = _run(tmp, sdist, pin, patches)
    assert r.returncode == 0, r.stderr
    assert stamp.stat().st_mtime_ns == before
    assert _run(tmp, sdist, pin, patches, "--check").returncode == 0


def test_with_extracts_more_into_its_own_stamped_tree(fake) -> None:
    """--with (benchmarks' llama-server tree): extra paths, recorded in the stamp;
    the default tree's stamp has no such key, and --with never touches it."""
    tmp, sdist, pin, patches, _ = fake
    assert _run(tmp, sdist, pin, patches).returncode == 0
    plain = json.loads((tmp / "source" / ".step35-stamp.json").read_text())
    assert "with" not in plain
    assert _run(tmp, sdist, pin, patches, "--with", "docs", "--check").returncode == 1  # another tree
    r = _run(tmp, sdist, pin, patches, "--with", "docs")
    assert r.returncode == 0, r.stderr
    assert (tmp / "source" / "docs" / "huge.md").exists()
    assert json.loads((tmp / "source" / ".step35-stamp.json").read_text())["with"] == ["docs"]
    assert _run(tmp, sdist, pin, patches, "--with", "docs", "--check").returncode == 0
    r = _run(tmp, sdist, pin, patches, "--with", "no/such/dir", "--force")
    assert r.returncode == 1 and "no such path" in r.stderr
    assert _run(tmp, sdist, pin, patches, "--with", "../x").returncode == 1
    r = subprocess.run([sys.executable, str(SCRIPT), "--with", "tools"], capture_output=True, text=True)
    assert r.returncode == 1 and "needs --source" in r.stderr  # the wheel's own tree stays trimmed


BACKEND = """
def get_requires_for_build_wheel(config_settings=None):
    return []

def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    import os
    d = os.path.join(metadata_directory, "fake_llama-1.0.dist-info")
    os.makedirs(d)
    with open(os.path.join(d, "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\\nName: fake-llama\\nVersion: 1.0\\n")
    return "fake_llama-1.0.dist-info"

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    raise RuntimeError("a download never builds")
"""


def _index_with_a_real_sdist(index: Path) -> str:
    """A find-links index holding an installable sdist (its build backend is a
    wheel in the same index, as llama-cpp-python's is on PyPI); returns the
    sdist's sha256."""
    index.mkdir()
    whl = index / "fakebackend-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        z.writestr("fakebackend.py", BACKEND)
        z.writestr("fakebackend-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: fakebackend\nVersion: 1.0\n")
        z.writestr("fakebackend-1.0.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("fakebackend-1.0.dist-info/RECORD", "")
    files = {
        "fake_llama-1.0/PKG-INFO": b"Metadata-Version: 2.1\nName: fake-llama\nVersion: 1.0\n",
        "fake_llama-1.0/pyproject.toml":
            b'[build-system]\nrequires = ["fakebackend==1.0"]\nbuild-backend = "fakebackend"\n',
        "fake_llama-1.0/vendor/llama.cpp/CMakeLists.txt": b"project(fake)\n",
    }
    sdist = index / "fake_llama-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(sdist.read_bytes()).hexdigest()


@pytest.mark.slow
def test_download_works_inside_any_build_frontend(tmp_path: Path) -> None:
    """A cold cache downloads the sdist with pip even when the environment holds
    what a PEP 517 frontend sets for our own build (current pyproject_hooks'
    backend path, a PYTHONPATH into our build env, pip's build tracker), and
    the user's index settings (here PIP_FIND_LINKS + PIP_NO_INDEX) are honoured."""
    import os

    sha = _index_with_a_real_sdist(tmp_path / "index")
    pin = tmp_path / "pin.toml"
    pin.write_text(PIN_TEMPLATE.format(sha=sha))
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "series").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update({
        "STEP35_CACHE": str(tmp_path / "cache"),
        "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path / "index"), "PIP_CONFIG_FILE": os.devnull,
        "_PYPROJECT_HOOKS_BACKEND_PATH_JSON": json.dumps([str(REPO / "llama.cpp")]),
        "_PYPROJECT_HOOKS_BACKEND_PATH": str(REPO / "llama.cpp"),
        "PYTHONPATH": str(tmp_path / "not-the-build-env"),
        "PIP_BUILD_TRACKER": str(tmp_path / "tracker"),
    })
    env.pop("STEP35_LLAMA_SDIST", None)
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--pin", str(pin), "--patches", str(patches),
         "--source", str(tmp_path / "source")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cache" / "llama.cpp" / "fake_llama-1.0.tar.gz").is_file()
    assert (tmp_path / "source" / "CMakeLists.txt").read_text() == "project(fake)\n"


def test_download_env_drops_frontend_variables_only() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import materialize
    finally:
        sys.path.pop(0)
    env = materialize.download_env({
        "_PYPROJECT_HOOKS_BACKEND_PATH_JSON": "[]", "PYTHONPATH": "/x", "PIP_BUILD_TRACKER": "/t",
        "PIP_INDEX_URL": "https://mirror.example/simple", "PATH": "/usr/bin",
        "UV_EXTRA_INDEX_URL": "https://extra.example/simple",
    })
    assert env == {"PIP_INDEX_URL": "https://mirror.example/simple", "PATH": "/usr/bin",
                   "UV_EXTRA_INDEX_URL": "https://extra.example/simple",
                   "PIP_EXTRA_INDEX_URL": "https://extra.example/simple"}


@pytest.mark.skipif(not have_git_checkout(), reason="needs the git checkout (CI has it)")
def test_no_upstream_source_in_git() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert not [f for f in files if f.startswith("llama.cpp/source/")]
    upstream_names = {"ggml.c", "llama-model.cpp", "ggml-backend-reg.cpp", "llama-vocab.cpp", "convert_hf_to_gguf.py"}
    assert not [f for f in files if Path(f).name in upstream_names]
    # the only GGUF files in git: the fuzzer's findings (fuzz/regressions), small inputs mutated from
    # the built-in micro model, kept as regression cases; no model, vocabulary or upstream file
    findings = [f for f in files if f.startswith("fuzz/regressions/")]
    assert all(f.endswith(".gguf") and (REPO / f).stat().st_size < 128 * 1024 for f in findings), findings
    assert not [f for f in files if f.endswith(".gguf") and f not in findings]
