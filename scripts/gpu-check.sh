#!/usr/bin/env bash
# The GPU check: build step35 + the CUDA 13 plugin from our sdist on a machine
# with an NVIDIA GPU and no network, then run scripts/gpu_check.py (one
# summary). Two steps, documented in backends/README.md:
#
#   bash scripts/gpu-check.sh prepare          # here, with network: dist/gpu/ (sdist + wheels), < 64 MiB
#   bash scripts/gpu-check.sh run [--dry-run]  # there: offline build (no isolation) + checks
#
# `run` expects what the GPU image has: Python 3.12 with scikit-build-core,
# CMake, Ninja, pybind11, numpy, jinja2, tqdm, huggingface_hub, NVIDIA's CUDA
# 13 runtime and cuBLAS wheels, and nvcc 13. Anything else it needs travels in
# dist/gpu/wheels. --dry-run (no GPU, e.g. this machine) builds the core from
# the same sdist the same way, skips the CUDA plugin build, and runs every
# check that needs no GPU. Environment: PYTHON (default python3),
# GPU_CHECK_ARCHS (default 90-real: H100/H200), GPU_CHECK_JOBS (default nproc),
# GPU_CHECK_CPU_VARIANTS (one|all; default one on a GPU run, all in a dry run,
# where ccache has them).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
GPU=dist/gpu
mode=${1:?usage: gpu-check.sh prepare | run [--dry-run]}
dry=0
[ "${2:-}" = "--dry-run" ] && dry=1
t0=$(date +%s)
say() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }

if [ "$mode" = prepare ]; then
  rm -rf "$GPU" && mkdir -p "$GPU/wheels"
  BUILD_PY=$(bash scripts/build-env.sh)
  say "sdist (carries the trimmed, patched llama.cpp)"
  "$BUILD_PY" -m build --sdist -o "$GPU" . >/dev/null
  say "wheels the GPU image lacks (cp312, manylinux x86_64)"
  # gguf (pure Python) is the one dependency of step35 the image does not have.
  "$BUILD_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$GPU/wheels" "gguf>=0.19"
  du -sh "$GPU" "$GPU"/* "$GPU"/wheels/*
  total=$(du -sb "$GPU" | cut -f1)
  [ "$total" -lt $((60 * 1024 * 1024)) ] || { echo "dist/gpu is over 60 MiB: it must travel in 64 MiB" >&2; exit 1; }
  say "ready: run it there with carry=[\"$GPU\"]: bash scripts/gpu-check.sh run"
  exit 0
fi
[ "$mode" = run ] || { echo "usage: gpu-check.sh prepare | run [--dry-run]" >&2; exit 2; }

sdist=$(ls "$GPU"/step35-*.tar.gz 2>/dev/null | head -1)
[ -n "$sdist" ] || { echo "no sdist in $GPU: run 'bash scripts/gpu-check.sh prepare' first (with network)" >&2; exit 1; }
jobs=${GPU_CHECK_JOBS:-$(nproc)}
export CMAKE_BUILD_PARALLEL_LEVEL=$jobs
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
variants=${GPU_CHECK_CPU_VARIANTS:-$([ $dry = 1 ] && echo all || echo one)}
work=${GPU_CHECK_WORK:-/tmp/step35-gpu-check}
rm -rf "$work" && mkdir -p "$work/wheels"
out=${OUT:-$work}

say "environment: $("$PY" --version), $(uname -m), $jobs jobs, CPU variants: $variants"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
command -v nvcc >/dev/null && nvcc --version | tail -2 || true

# A venv over the image's packages (scikit-build-core, cmake, ninja, pybind11,
# NVIDIA's runtime wheels): builds run without isolation, nothing is fetched.
"$PY" -m venv --system-site-packages "$work/venv"
VPY=$work/venv/bin/python
if [ $dry = 1 ]; then
  # Rehearsal on a machine with network: give the venv what the GPU image has.
  "$VPY" -m pip install -q "scikit-build-core>=0.11" "pybind11>=2.13" cmake ninja numpy jinja2 tqdm huggingface_hub
fi
"$VPY" -m pip install -q --no-index --no-deps "$GPU"/wheels/*.whl
nobuild=(--no-build-isolation --no-deps --no-index)
core_args=()
[ "$variants" = one ] && core_args+=(-C cmake.define.GGML_CPU_ALL_VARIANTS=OFF)

say "building the core wheel from $(basename "$sdist") (log: $work/core.log)"
"$VPY" -m pip wheel "${nobuild[@]}" -w "$work/wheels" "$sdist" "${core_args[@]}" >"$work/core.log" 2>&1 &
core_pid=$!
plugin_pid=
if [ $dry = 0 ]; then
  # The plugin builds from the unpacked sdist (backends/cuda13 uses the source
  # beside it), in parallel with the core.
  mkdir -p "$work/src" && tar -xzf "$sdist" -C "$work/src"
  src=$(ls -d "$work"/src/step35-*)
  say "building the CUDA 13 plugin for ${GPU_CHECK_ARCHS:-90-real} (log: $work/plugin.log)"
  (cd "$src" && STEP35_PLUGIN_NO_ISOLATION=1 PYTHON="$VPY" \
     bash scripts/build-cuda-plugin.sh 13 "${GPU_CHECK_ARCHS:-90-real}") >"$work/plugin.log" 2>&1 &
  plugin_pid=$!
fi
ok=1
wait "$core_pid" || { ok=0; tail -40 "$work/core.log"; }
say "core build done (rc $([ $ok = 1 ] && echo 0 || echo 1))"
if [ -n "$plugin_pid" ]; then
  if wait "$plugin_pid"; then cp "$src"/dist/plugins/step35_cuda13-*.whl "$work/wheels/"; else ok=0; tail -40 "$work/plugin.log"; fi
  say "plugin build done"
fi
[ $ok = 1 ] || { echo "a build failed (logs above)" >&2; cp "$work"/*.log "$out"/ 2>/dev/null || true; exit 1; }
ls -la "$work/wheels"

say "installing the wheels (offline)"
"$VPY" -m pip install -q "${nobuild[@]}" "$work"/wheels/step35-*.whl
if ls "$work"/wheels/step35_cuda13-*.whl >/dev/null 2>&1; then
  "$VPY" -m pip install -q "${nobuild[@]}" "$work"/wheels/step35_cuda13-*.whl
fi

say "checks"
check_args=(--json "$out/gpu-check.json")
[ $dry = 1 ] && check_args+=(--dry-run)
rc=0
(cd "$work" && PYTHONUNBUFFERED=1 "$VPY" "$REPO/scripts/gpu_check.py" "${check_args[@]}") || rc=$?
say "done (rc $rc)"
exit $rc
