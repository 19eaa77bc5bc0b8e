#!/usr/bin/env bash
# Build llama.cpp's own tools (llama-batched-bench, llama-completion) from the
# SAME pinned, patched source and the same CMake configuration as the wheel
# (shared libs, GGML_BACKEND_DL, all CPU variants), so a comparison measures
# the binding and nothing else. With --native, build a -march=native variant
# instead (GGML_NATIVE=ON, one CPU backend linked in: ggml does not allow
# GGML_NATIVE with GGML_BACKEND_DL) for the portable-vs-native check.
#
#
# With --server, build llama-server (for benchmarks/compare_serve.py) with the
# wheel's configuration as well. Its sources (upstream's tools/ tree) are not in
# the trimmed llama.cpp/source/ the wheel builds from, so the pinned sdist is
# materialized a second time, `--with tools`, into a separate tree
# build/llama-server/llama.cpp/source/ (llama.cpp/source/ is never touched).
# The build directory sits at the same relative distance from that tree as the
# wheel's build/<tag>/ from llama.cpp/source/, so ccache (CCACHE_BASEDIR=the repo)
# reuses the wheel build's objects for libllama, ggml and the CPU variants.
# No web UI (no npm, no downloaded assets), no OpenSSL.
#
#   bash benchmarks/build_native.sh            -> build/native-tools/bin/
#   bash benchmarks/build_native.sh --native   -> build/native-march/bin/
#   bash benchmarks/build_native.sh --server   -> build/llama-server/build/tools/bin/ (llama-server too)
#
# JOBS=N limits the parallel compile jobs (default: ninja's).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
mode=${1:-}
source_args=()
if [ "$mode" = "--server" ]; then
  src=build/llama-server/llama.cpp/source
  "$PY" llama.cpp/materialize.py --with tools --with scripts/ui-assets.cmake --source "$src" >&2
  source_args=(-DSTEP35_LLAMA_SOURCE="$PWD/$src")
else
  "$PY" llama.cpp/materialize.py >&2
fi
"$PY" -m pip install -q cmake ninja >&2 2>/dev/null || true
# ggml wraps the compiler in ccache itself (GGML_CCACHE). Use the compilers
# the wheel build uses so the ccache entries of `pip install .` are reused.
compilers=()
if command -v gcc >/dev/null && command -v g++ >/dev/null && [ "$(uname)" = Linux ]; then
  compilers=(-DCMAKE_C_COMPILER="$(command -v gcc)" -DCMAKE_CXX_COMPILER="$(command -v g++)")
fi
if [ "$mode" = "--native" ]; then
  dir=build/native-march
  extra=(-DGGML_NATIVE=ON -DGGML_CPU_ALL_VARIANTS=OFF -DSTEP35_BACKEND_DL=OFF -DSTEP35_BUILD_EXTENSION=OFF)
  targets=(llama-batched-bench llama-completion step35_libs)
elif [ "$mode" = "--server" ]; then
  # the wheel's configuration (GGML_NATIVE=OFF, all CPU variants, backends as
  # modules), exactly as the default tools build below
  dir=build/llama-server/build/tools
  extra=(-DSTEP35_BUILD_EXTENSION=OFF -DSTEP35_BUILD_SERVER=ON)
  targets=(llama-server llama-batched-bench step35_libs)
else
  dir=build/native-tools
  extra=(-DSTEP35_BUILD_EXTENSION=OFF)
  targets=(llama-batched-bench llama-completion step35_libs)
fi
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTEP35_BUILD_TOOLS=ON "${compilers[@]}" \
  "${source_args[@]}" "${extra[@]}" >&2
cmake --build "$dir" ${JOBS:+-j "$JOBS"} --target "${targets[@]}" >&2
echo "$dir/bin"
