#!/usr/bin/env bash
# Build the CUDA plugin wheel (step35-cuda12 or step35-cuda13) into dist/plugins.
#
#   bash scripts/build-cuda-plugin.sh 13 "90-real"     # one architecture (a check build)
#   bash scripts/build-cuda-plugin.sh 12               # the release list (backends/README.md)
#
# Needs a CUDA toolkit of that major version (nvcc; CUDA_HOME or /usr/local/cuda-N.x
# or nvcc on PATH). When the toolkit has no cuBLAS (a compiler-only install), the
# cuBLAS headers and libraries are taken from NVIDIA's wheel on PyPI (the wheel the
# plugin depends on at run time): the installed one if PYTHON has it (offline), else
# downloaded from PyPI; either is copied into build/cuda<N>-cublas.
# PYTHON picks the interpreter (default python3); STEP35_PLUGIN_NO_ISOLATION=1 builds
# without build isolation, offline, with the build tools PYTHON already has.
set -euo pipefail
cd "$(dirname "$0")/.."
major=${1:?usage: build-cuda-plugin.sh 12|13 [CUDA architectures]}
PY=${PYTHON:-python3}
archs=${2:-}
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$PWD} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1} CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-8G}

home=${CUDA_HOME:-}
if [ -z "$home" ]; then
  for d in /usr/local/cuda-"$major".* /usr/local/cuda; do [ -x "$d/bin/nvcc" ] && home=$d; done
fi
if [ -z "$home" ] && command -v nvcc >/dev/null; then home=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")"); fi
[ -n "$home" ] && [ -x "$home/bin/nvcc" ] || { echo "no CUDA $major toolkit found: set CUDA_HOME" >&2; exit 1; }
have=$("$home/bin/nvcc" --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
[ "$have" = "$major" ] || { echo "$home/bin/nvcc is CUDA $have, not $major" >&2; exit 1; }

args=(-C "cmake.define.CMAKE_CUDA_COMPILER=$home/bin/nvcc" -C "cmake.define.CUDAToolkit_ROOT=$home")
if [ -n "$archs" ]; then args+=(-C "cmake.define.CMAKE_CUDA_ARCHITECTURES=$archs"); fi
if ! ls "$home"/lib*/libcublas.so* "$home"/targets/*/lib/libcublas.so* >/dev/null 2>&1; then
  extra=$PWD/build/cuda$major-cublas
  if [ "$major" = 12 ]; then wheel=nvidia-cublas-cu12; sub=nvidia/cublas; else wheel="nvidia-cublas==$major.*"; sub=nvidia/cu$major; fi
  if [ ! -f "$extra/include/cublas_v2.h" ]; then
    mkdir -p "$extra"; rm -rf "$extra/include" "$extra/lib"
    installed=$("$PY" -c "import nvidia, os, sys; [print(os.path.join(p, sys.argv[1])) for p in nvidia.__path__ if os.path.isfile(os.path.join(p, sys.argv[1], 'include', 'cublas_v2.h'))]" "${sub#nvidia/}" 2>/dev/null | head -1 || true)
    if [ -n "$installed" ]; then
      echo "== cuBLAS headers/libraries from the installed wheel ($installed) into $extra"
      cp -r "$installed/include" "$installed/lib" "$extra/"
    else
      echo "== cuBLAS headers/libraries from PyPI ($wheel) into $extra"
      tmp=$(mktemp -d)
      "$PY" -m pip download -q --no-deps "$wheel" -d "$tmp"
      "$PY" -m zipfile -e "$tmp"/*.whl "$tmp/x"
      cp -r "$tmp/x/$sub/include" "$tmp/x/$sub/lib" "$extra/"
      rm -rf "$tmp"
    fi
  fi
  ln -sf "libcublas.so.$major" "$extra/lib/libcublas.so"
  ln -sf "libcublasLt.so.$major" "$extra/lib/libcublasLt.so"
  args+=(-C "cmake.define.CUDA_cublas_LIBRARY=$extra/lib/libcublas.so"
         -C "cmake.define.CUDA_cublasLt_LIBRARY=$extra/lib/libcublasLt.so"
         -C "cmake.define.CMAKE_CUDA_FLAGS=-I$extra/include"
         -C "cmake.define.CMAKE_CXX_FLAGS=-I$extra/include")
fi
if ! ls "$home"/lib*/stubs/libcuda.so "$home"/targets/*/lib/stubs/libcuda.so >/dev/null 2>&1; then
  # A compiler-only toolkit has no driver stub to link against. The backend
  # needs only the NEEDED entry (libcuda.so.1, the driver, resolved at run
  # time), so an empty library with that soname stands in for the link.
  stub=$PWD/build/cuda-driver-stub
  mkdir -p "$stub"
  echo "/* link-time stand-in for the NVIDIA driver library */" > "$stub/stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/stub.c"
  # The stub exports nothing, so the linker must keep it without being asked
  # for a symbol (else the module would not name libcuda.so.1 at all).
  args+=(-C "cmake.define.CUDA_cuda_driver_LIBRARY=$stub/libcuda.so"
         -C "cmake.define.CMAKE_MODULE_LINKER_FLAGS=-Wl,--no-as-needed")
fi
mkdir -p dist/plugins
rm -f dist/plugins/step35_cuda"$major"-*.whl
t0=$(date +%s)
isolation=()
[ -n "${STEP35_PLUGIN_NO_ISOLATION:-}" ] && isolation=(--no-build-isolation --no-index)
# shellcheck disable=SC2086
"$PY" -m pip wheel "backends/cuda$major" --no-deps "${isolation[@]}" -w dist/plugins "${args[@]}" ${STEP35_PIP_ARGS:-}
echo "== built $(ls dist/plugins/step35_cuda"$major"-*.whl) in $(( $(date +%s) - t0 )) s (architectures: ${archs:-release list})"
