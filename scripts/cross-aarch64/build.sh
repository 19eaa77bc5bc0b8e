#!/usr/bin/env bash
# Cross-build the step35 core wheel for linux aarch64 on this Debian bookworm
# amd64 host (run scripts/cross-aarch64/setup.sh once first).
#
#   bash scripts/cross-aarch64/build.sh              # the core wheel -> dist/cross-aarch64/
#   bash scripts/cross-aarch64/build.sh --configure  # CMake configure of the core only (seconds)
#   bash scripts/cross-aarch64/build.sh --probe      # the same setup on a tiny pybind11 project
#
# Environment: JOBS (parallel compile jobs, default nproc), NICE (default 0),
# STEP35_CROSS_COMPILER (clang [default] or gcc, see toolchain.cmake),
# AARCH64_ROOT (sysroot with the target's Python headers, /opt/aarch64-root),
# STEP35_CROSS_DIR (/opt/step35-cross: build venv and ccache), OUT (wheel dir).
#
# How: `python -m build --wheel --no-isolation` with the host (x86_64) CPython
# 3.11 of $STEP35_CROSS_DIR/venv, i.e. the same build backend and the same
# [tool.scikit-build] options as the manylinux leg (CMakeLists.txt decides
# GGML_BACKEND_DL=ON, GGML_CPU_ALL_VARIANTS=ON, GGML_NATIVE=OFF, GGML_OPENMP=OFF,
# GGML_RPC=ON from CMAKE_SYSTEM_PROCESSOR=aarch64; nothing is overridden), plus
# only what cross-compiling needs:
#   -DCMAKE_TOOLCHAIN_FILE   the aarch64 compilers (toolchain.cmake)
#   -DPython_INCLUDE_DIR     the target's (Debian arm64 python3.11) headers
#   -DPYBIND11_USE_CROSSCOMPILING=ON   pybind11 takes the extension suffix from
#                            SETUPTOOLS_EXT_SUFFIX instead of asking the host python
#   SETUPTOOLS_EXT_SUFFIX=.cpython-311-aarch64-linux-gnu.so (scikit-build-core's
#                            SKBUILD_SOABI and pybind11 both read it)
#   _PYTHON_HOST_PLATFORM=linux-aarch64   scikit-build-core's wheel platform tag
#                            (-> cp311-cp311-linux_aarch64, build dir build/cp311-cp311-linux_aarch64)
# The llama.cpp source is the already materialized llama.cpp/source (the
# backend re-materializes only if the pin changed: then it downloads the pinned
# sdist from PyPI into $STEP35_CACHE / ~/.cache/step35, like the x86_64 build).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
ROOT=${AARCH64_ROOT:-/opt/aarch64-root}
CROSS=${STEP35_CROSS_DIR:-/opt/step35-cross}
OUT=${OUT:-$REPO/dist/cross-aarch64}
PY=$CROSS/venv/bin/python
MODE=${1:-wheel}

[ -x "$PY" ] && [ -f "$ROOT/usr/include/python3.11/Python.h" ] ||
  { echo "run scripts/cross-aarch64/setup.sh first" >&2; exit 1; }
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' # cp311, like the sysroot

PYINC=$ROOT/usr/include/python3.11
export STEP35_CROSS_COMPILER=${STEP35_CROSS_COMPILER:-clang}
export SETUPTOOLS_EXT_SUFFIX=.cpython-311-aarch64-linux-gnu.so
export _PYTHON_HOST_PLATFORM=linux-aarch64
CROSS_ARGS=(
  "-DCMAKE_TOOLCHAIN_FILE=$HERE/toolchain.cmake"
  "-DPython_INCLUDE_DIR=$PYINC"
  "-DPYBIND11_USE_CROSSCOMPILING=ON"
)
export SKBUILD_CMAKE_ARGS
SKBUILD_CMAKE_ARGS=$(IFS=';'; echo "${CROSS_ARGS[*]}")
# A ccache of its own (the x86_64 build's stays untouched); ggml's GGML_CCACHE finds ccache.
export CCACHE_DIR=${CCACHE_DIR:-$CROSS/ccache} CCACHE_BASEDIR=${CCACHE_BASEDIR:-$REPO}
export CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1} CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
export CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-$(nproc)}
export PATH=$CROSS/venv/bin:$PATH
echo "== cross: $STEP35_CROSS_COMPILER ($(command -v clang-19 >/dev/null && [ "$STEP35_CROSS_COMPILER" = clang ] && clang-19 --version | head -1 || aarch64-linux-gnu-gcc --version | head -1)), jobs $CMAKE_BUILD_PARALLEL_LEVEL"
echo "== SKBUILD_CMAKE_ARGS=$SKBUILD_CMAKE_ARGS"

case "$MODE" in
  --configure)
    # Only a CMake configure of the core (what scikit-build-core would run,
    # less its cache init): toolchain, Python/pybind11 detection and the list
    # of CPU variants. Builds nothing.
    B=${BUILD_DIR:-$(mktemp -d /tmp/step35-cross-configure.XXXXXX)}
    cmake -S "$REPO" -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release "${CROSS_ARGS[@]}" \
      -DPython_EXECUTABLE="$PY" \
      -Dpybind11_DIR="$("$PY" -m pybind11 --cmakedir)" \
      | grep -E "compiler identification|GGML_SYSTEM_ARCH|Adding CPU backend variant|ARM feature|step35:|Python|pybind11|Configuring done|Generating done|Warning|Error" || true
    grep -E "^(GGML_CPU_ALL_VARIANTS|GGML_BACKEND_DL|GGML_NATIVE|GGML_OPENMP|GGML_RPC|CMAKE_BUILD_TYPE|CMAKE_STRIP|PYTHON_MODULE_EXTENSION)[:=]" "$B/CMakeCache.txt" || true
    echo "== configured in $B (ninja -C $B would build; this script does not)"
    ;;
  --probe)
    # A minimal pybind11 + scikit-build-core project, built with exactly this
    # setup: checks the wheel tag, the extension suffix, headers and linking.
    P=$(mktemp -d /tmp/step35-cross-probe.XXXXXX)
    mkdir -p "$P/src/probe"
    echo "" > "$P/src/probe/__init__.py"
    cat > "$P/pyproject.toml" <<'EOF'
[build-system]
requires = ["scikit-build-core>=0.11", "pybind11>=2.13"]
build-backend = "scikit_build_core.build"
[project]
name = "step35-cross-probe"
version = "0.0.1"
[tool.scikit-build]
minimum-version = "0.11"
build-dir = "build/{wheel_tag}"
wheel.packages = ["src/probe"]
install.strip = true
EOF
    cat > "$P/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.21)
project(probe LANGUAGES C CXX)
set(PYBIND11_FINDPYTHON ON)
find_package(Python COMPONENTS Interpreter Development.Module REQUIRED)
find_package(pybind11 CONFIG REQUIRED)
pybind11_add_module(_probe MODULE probe.cpp)
install(TARGETS _probe LIBRARY DESTINATION probe)
EOF
    cat > "$P/probe.cpp" <<'EOF'
#include <pybind11/pybind11.h>
#include <thread>
#include <sys/utsname.h>
static std::string machine() { utsname u{}; uname(&u); return u.machine; }
static int threads() { int r = 0; std::thread t([&] { r = 42; }); t.join(); return r; }
PYBIND11_MODULE(_probe, m) {
  m.def("machine", &machine);
  m.def("threads", &threads);
#if defined(__aarch64__)
  m.attr("compiled_for") = "aarch64";
#else
  m.attr("compiled_for") = "other";
#endif
}
EOF
    mkdir -p "$OUT"
    (cd "$P" && nice -n "${NICE:-0}" "$PY" -m build --wheel --no-isolation -o "$OUT" . )
    ;;
  wheel)
    mkdir -p "$OUT"
    rm -f "$OUT"/step35-*.whl
    t0=$(date +%s)
    (cd "$REPO" && nice -n "${NICE:-0}" "$PY" -m build --wheel --no-isolation -o "$OUT" .)
    wheel=$(ls "$OUT"/step35-*linux_aarch64.whl)
    echo "== wheel: $wheel ($(du -h "$wheel" | cut -f1)), built in $(( $(date +%s) - t0 )) s"
    # What it holds: the extension's suffix and the CPU variants (all aarch64 ELF).
    "$PY" - "$wheel" <<'EOF'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for n in sorted(z.namelist()):
    if n.endswith(".so"):
        head = z.read(n)[:20]
        arch = {183: "aarch64", 62: "x86_64"}.get(int.from_bytes(head[18:20], "little"), "?")
        print(f"   {arch:8} {n}")
EOF
    ;;
  *) echo "unknown mode $MODE (use --configure, --probe or nothing)" >&2; exit 2 ;;
esac
