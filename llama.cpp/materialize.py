#!/usr/bin/env python3
"""Materialize the pinned, patched llama.cpp source into ``llama.cpp/source/``.

One step, idempotent, offline once cached:

1. obtain the registry sdist named in ``pin.toml`` (from the cache, from
   ``$STEP35_LLAMA_SDIST``, or with ``pip download`` run in a clean
   environment, so that it works under any build frontend),
2. verify its sha256 against the pin (a mismatch is a hard error),
3. extract only what the build and the converter need (``KEEP`` below),
4. apply ``patches/series`` in order (a patch that does not apply stops
   here with its name),
5. write ``source/.step35-stamp.json`` recording pin + patch hashes.

When the stamp matches the pin and the patch series, nothing is done (this is
what happens when building from our sdist, which carries ``source/``).

Usage: ``python llama.cpp/materialize.py [--force] [--check]`` (``--help`` for more).

Opt-in extras for benchmarks: ``--with tools --with scripts/ui-assets.cmake
--source build/llama-server/llama.cpp/source`` also extracts upstream paths
beyond ``KEEP`` (here what ``llama-server`` needs) into a *separate* source
directory; the extras are recorded in its stamp, so that tree is just as
idempotent and hash-checked. The default tree (what the wheel and our sdist
carry) and its stamp do not change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PIN_FILE = HERE / "pin.toml"
PATCH_DIR = HERE / "patches"
SOURCE_DIR = HERE / "source"
STAMP_NAME = ".step35-stamp.json"

# Paths (relative to the upstream root) that the build and the converter need.
# Directories are taken whole, minus DROP.
KEEP = [
    "CMakeLists.txt",
    "LICENSE",
    "licenses",
    "cmake",
    "include",
    "src",
    "ggml",
    "common",
    "vendor",
    "tools/batched-bench",
    "tools/completion",
    "convert_hf_to_gguf.py",
    "conversion",
    "gguf-py/gguf",
    "gguf-py/LICENSE",
    "gguf-py/pyproject.toml",
    "models/templates/StepFun3.5-Flash.jinja",
    "models/ggml-vocab-gpt-2.gguf",
]
# Backends we never build (only CPU, Metal, CUDA, Vulkan, BLAS and RPC are used).
DROP = [
    "ggml/src/ggml-" + name
    for name in (
        "cann", "et", "hexagon", "hip", "musa", "opencl", "openvino",
        "sycl", "virtgpu", "webgpu", "zdnn", "zendnn",
    )
] + ["ggml/tests", "ggml/examples"]


class MaterializeError(RuntimeError):
    """Raised with a message that says what went wrong and what to do."""


def load_pin(path: Path = PIN_FILE) -> dict:
    """Read ``pin.toml`` (tomllib on 3.11+, tomli before)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    with open(path, "rb") as f:
        return tomllib.load(f)


def patch_series(patch_dir: Path = PATCH_DIR) -> list[Path]:
    """The patch files named in ``patches/series``, in order."""
    series = patch_dir / "series"
    names = []
    if series.exists():
        for line in series.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                names.append(line)
    paths = [patch_dir / n for n in names]
    for p in paths:
        if not p.is_file():
            raise MaterializeError(f"patches/series names {p.name}, but {p} does not exist")
    return paths


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """Where the downloaded sdist is kept (``$STEP35_CACHE`` or ~/.cache/step35)."""
    root = os.environ.get("STEP35_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "step35"
    )
    return Path(root) / "llama.cpp"


def expected_stamp(pin: dict, patches: list[Path], extra: list[str] | tuple[str, ...] = ()) -> dict:
    stamp = {
        "upstream_commit": pin["upstream"]["commit"],
        "registry": f'{pin["registry"]["package"]}=={pin["registry"]["version"]}',
        "sha256": pin["registry"]["sha256"],
        "patches": [{"name": p.name, "sha256": sha256_file(p)} for p in patches],
        "keep": KEEP,
        "drop": DROP,
    }
    if extra:  # only opt-in trees (--with) carry the key: the default stamp is unchanged
        stamp["with"] = sorted(set(extra))
    return stamp


def check_extra(extra: list[str] | tuple[str, ...]) -> list[str]:
    """Normalize ``--with`` paths (relative to the upstream root, no ``..``)."""
    out = []
    for e in extra:
        rel = e.strip().strip("/")
        if not rel or rel.startswith(".") or "\\" in rel or any(part in ("", "..") for part in rel.split("/")):
            raise MaterializeError(f"--with {e!r}: give a path relative to the upstream root, e.g. tools/server")
        out.append(rel)
    return out


def read_stamp(source: Path) -> dict | None:
    try:
        return json.loads((source / STAMP_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# Variables a PEP 517 frontend sets for *our* build. Inherited by the inner pip,
# they make it look for llama-cpp-python's build backend in our backend-path
# (pyproject_hooks), import packages from our build environment (PYTHONPATH)
# or share our build's tracker. The user's own PIP_* settings are kept.
_FRONTEND_VARS = ("PYTHONPATH", "PYTHONHOME", "PIP_BUILD_TRACKER", "PIP_REQ_TRACKER",
                  "PEP517_BACKEND_PATH")
_FRONTEND_PREFIXES = ("_PYPROJECT_HOOKS_",)
# uv's index settings, for users who build with `uv pip install .` / `uv build`:
# the inner pip honours them when the matching PIP_* variable is not set.
_UV_TO_PIP = (("UV_DEFAULT_INDEX", "PIP_INDEX_URL"), ("UV_INDEX_URL", "PIP_INDEX_URL"),
              ("UV_INDEX", "PIP_EXTRA_INDEX_URL"), ("UV_EXTRA_INDEX_URL", "PIP_EXTRA_INDEX_URL"),
              ("UV_FIND_LINKS", "PIP_FIND_LINKS"))


def download_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the inner ``pip download``: the caller's, minus what a
    build frontend set for our own build, plus uv's index settings as pip's."""
    env = dict(os.environ if environ is None else environ)
    for key in list(env):
        if key in _FRONTEND_VARS or key.startswith(_FRONTEND_PREFIXES):
            del env[key]
    for uv_key, pip_key in _UV_TO_PIP:
        if env.get(uv_key) and not env.get(pip_key):
            env[pip_key] = env[uv_key].replace(",", " ")
    return env


def pip_command() -> list[str]:
    """How to run pip: from the directory of the pip this interpreter imports.

    Inside an isolated build environment pip may be importable only through the
    PYTHONPATH that :func:`download_env` removes; pip runs from its own
    directory (``python <site-packages>/pip``) without it.
    """
    try:
        import pip
    except ImportError:
        return [sys.executable, "-m", "pip"]
    return [sys.executable, str(Path(pip.__file__).resolve().parent)]


def obtain_sdist(pin: dict, log) -> Path:
    """Return a path to the registry sdist whose sha256 matches the pin.

    The download runs pip (so that the user's index, mirrors, proxies,
    certificates and pip.conf apply) in a clean environment: see
    :func:`download_env`.
    """
    reg = pin["registry"]
    want = reg["sha256"].lower()
    override = os.environ.get("STEP35_LLAMA_SDIST")
    cached = cache_dir() / reg["filename"]
    if override:
        candidate = Path(override)
        if not candidate.is_file():
            raise MaterializeError(f"STEP35_LLAMA_SDIST={override} is not a file")
    elif cached.is_file():
        candidate = cached
    else:
        cached.parent.mkdir(parents=True, exist_ok=True)
        spec = f'{reg["package"]}=={reg["version"]}'
        log(f"downloading {spec} (sdist) with pip into {cached.parent} ...")
        with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
            # --no-binary for this one package only: ":all:" would also force pip to
            # compile its build tools (cmake...) from source to read its metadata.
            cmd = pip_command() + ["download", "--no-deps", "--no-binary", reg["package"],
                                   "--disable-pip-version-check", "-d", tmp, spec]
            res = subprocess.run(cmd, capture_output=True, text=True, env=download_env())
            got = Path(tmp) / reg["filename"]
            if res.returncode != 0 or not got.is_file():
                raise MaterializeError(
                    f"could not download {spec} with pip from the package index "
                    f"({' '.join(cmd[1:3])} exited with {res.returncode}):\n"
                    f"{(res.stderr or res.stdout)[-2000:]}\n"
                    f"If you are offline, put {reg['filename']} at {cached} "
                    "or point STEP35_LLAMA_SDIST at it."
                )
            os.replace(got, cached)
        candidate = cached
    got_hash = sha256_file(candidate)
    if got_hash != want:
        raise MaterializeError(
            f"sha256 mismatch for {candidate}:\n  expected {want} (llama.cpp/pin.toml)\n"
            f"  got      {got_hash}\n"
            "The file is not the pinned upstream source. Delete it and retry, or fix the pin."
        )
    return candidate


def _wanted(rel: str, extra: list[str] | tuple[str, ...] = ()) -> bool:
    for d in DROP:
        if rel == d or rel.startswith(d + "/"):
            return False
    for k in (*KEEP, *extra):
        if rel == k or rel.startswith(k + "/"):
            return True
    return False


def extract(sdist: Path, pin: dict, dest: Path, extra: list[str] | tuple[str, ...] = ()) -> int:
    """Extract the KEEP subset (plus ``extra`` paths) of ``vendor/llama.cpp`` into ``dest``."""
    prefix = f'{Path(pin["registry"]["filename"]).name[: -len(".tar.gz")]}/{pin["registry"]["subdirectory"]}/'
    count = 0
    with tarfile.open(sdist, "r:gz") as tar:
        for m in tar:
            if not m.name.startswith(prefix):
                continue
            rel = m.name[len(prefix):]
            if not rel or not _wanted(rel, extra):
                continue
            if m.isdir():
                continue
            if not m.isfile():
                continue  # no links or devices from an archive
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            src = tar.extractfile(m)
            assert src is not None
            with open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            if m.mode & 0o111:
                target.chmod(0o755)
            count += 1
    if count == 0:
        raise MaterializeError(f"{sdist} has nothing under {prefix}: wrong subdirectory in pin.toml?")
    for e in extra:
        if not (dest / e).exists():
            raise MaterializeError(f"--with {e}: the pinned upstream source has no such path")
    return count


def apply_patches(patches: list[Path], dest: Path, log, commit: str = "") -> None:
    """Apply each patch with ``patch -p1``; stop at the first that fails, naming it."""
    if not patches:
        return
    tool = shutil.which("patch")
    if tool is None:
        raise MaterializeError("the `patch` program is needed to apply llama.cpp/patches (install it)")
    for p in patches:
        base = [tool, "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-d", str(dest), "-i", str(p)]
        dry = subprocess.run(base + ["--dry-run"], capture_output=True, text=True)
        if dry.returncode != 0:
            raise MaterializeError(
                f"patch {p.name} no longer applies to upstream {commit}:\n{dry.stdout}{dry.stderr}"
                f"Refresh llama.cpp/patches/{p.name} against the new source (or drop it from series)."
            )
        subprocess.run(base, check=True, capture_output=True, text=True)
        log(f"applied {p.name}")


def materialize(force: bool = False, log=print, source: Path = SOURCE_DIR,
                patch_dir: Path = PATCH_DIR, pin_file: Path = PIN_FILE,
                extra: list[str] | tuple[str, ...] = ()) -> Path:
    """Make ``source`` hold the pinned, trimmed, patched tree; return its path.

    ``extra``: upstream paths to extract beyond ``KEEP`` (``--with``), for a
    separate benchmark tree; never pass them for the default ``source``.
    """
    extra = check_extra(extra)
    if extra and Path(source).resolve() == SOURCE_DIR.resolve():
        raise MaterializeError(f"--with needs --source: {SOURCE_DIR} is the wheel's tree and stays trimmed")
    pin = load_pin(pin_file)
    patches = patch_series(patch_dir)
    want = expected_stamp(pin, patches, extra)
    if not force and read_stamp(source) == want:
        return source
    sdist = obtain_sdist(pin, log)
    source = Path(source)
    source.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".source-", dir=source.parent))
    try:
        n = extract(sdist, pin, staging, extra)
        apply_patches(patches, staging, log, pin["upstream"]["commit"])
        (staging / STAMP_NAME).write_text(json.dumps(want, indent=2) + "\n", encoding="utf-8")
        if source.exists():
            shutil.rmtree(source)
        os.replace(staging, source)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"llama.cpp {pin['upstream']['commit']}: {n} files, {len(patches)} patch(es) -> {source}")
    return source


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--force", action="store_true", help="re-extract even if the stamp matches")
    ap.add_argument("--check", action="store_true", help="only report whether the source is up to date")
    ap.add_argument("--pin", type=Path, default=PIN_FILE, help="pin file (default: pin.toml beside this script)")
    ap.add_argument("--patches", type=Path, default=PATCH_DIR, help="patch directory with a `series` file")
    ap.add_argument("--source", type=Path, default=SOURCE_DIR, help="where to write the source")
    ap.add_argument("--with", dest="extra", action="append", default=[], metavar="PATH",
                    help="also extract this upstream path (e.g. tools, for llama-server); repeatable; "
                         "needs a --source other than the default")
    args = ap.parse_args(argv)
    try:
        if args.check:
            want = expected_stamp(load_pin(args.pin), patch_series(args.patches), check_extra(args.extra))
            ok = read_stamp(args.source) == want
            print("up to date" if ok else "stale or missing")
            return 0 if ok else 1
        materialize(force=args.force, source=args.source, patch_dir=args.patches, pin_file=args.pin,
                    extra=args.extra)
    except MaterializeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
