#!/usr/bin/env bash
# Build llama.cpp's own tools (llama-batched-bench, llama-completion) from the
# SAME pinned, patched source and the same CMake configuration as the wheel
# (shared libs, GGML_BACKEND_DL, all CPU variants), so a comparison measures
# the binding and nothing else. With --native, build a -march=native variant
# instead (GGML_NATIVE=ON, one CPU backend linked in: ggml does not allow
# GGML_NATIVE with GGML_BACKEND_DL) for the portable-vs-native check.
#
#   bash benchmarks/build_native.sh            -> build/native-tools/bin/
#   bash benchmarks/build_native.sh --native   -> build/native-march/bin/
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-/} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
"$PY" llama.cpp/materialize.py >&2
"$PY" -m pip install -q cmake ninja >&2 2>/dev/null || true
# ggml wraps the compiler in ccache itself (GGML_CCACHE). Use the compilers
# the wheel build uses so the ccache entries of `pip install .` are reused.
compilers=()
if command -v gcc >/dev/null && command -v g++ >/dev/null && [ "$(uname)" = Linux ]; then
  compilers=(-DCMAKE_C_COMPILER="$(command -v gcc)" -DCMAKE_CXX_COMPILER="$(command -v g++)")
fi
if [ "${1:-}" = "--native" ]; then
  dir=build/native-march
  extra=(-DGGML_NATIVE=ON -DGGML_CPU_ALL_VARIANTS=OFF -DSTEP35_BACKEND_DL=OFF -DSTEP35_BUILD_EXTENSION=OFF)
  targets=(llama-batched-bench llama-completion step35_libs)
else
  dir=build/native-tools
  extra=(-DSTEP35_BUILD_EXTENSION=OFF)
  targets=(llama-batched-bench llama-completion step35_libs)
fi
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSTEP35_BUILD_TOOLS=ON "${compilers[@]}" "${extra[@]}" >&2
cmake --build "$dir" --target "${targets[@]}" >&2
echo "$dir/bin"
