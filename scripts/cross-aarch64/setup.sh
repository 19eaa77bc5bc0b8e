#!/usr/bin/env bash
# One-time host setup for the linux-aarch64 cross build and its qemu smoke test
# (Debian 12 bookworm amd64 host, run as root). Idempotent; light work only.
#
#   1. Debian's cross toolchain (aarch64-linux-gnu-gcc/g++ 12, binutils: the
#      target libc/libstdc++), clang-19 (the compiler build.sh uses by default,
#      see toolchain.cmake) and qemu-user (qemu-aarch64; this container has no
#      binfmt_misc, so it is called explicitly, see smoke.sh).
#   2. An aarch64 sysroot $ROOT (default /opt/aarch64-root) holding Debian's
#      arm64 CPython 3.11 and its libraries, unpacked with `dpkg -x` (the host's
#      dpkg database, python3 and apt are left alone: only `dpkg
#      --add-architecture arm64` is added so that apt-get download finds them).
#      Its headers (with the arm64 pyconfig.h) are what the extension compiles
#      against; qemu-aarch64 -L $ROOT runs its python3.11.
#   3. A host venv $CROSS/venv with the build tools (scikit-build-core,
#      pybind11, cmake, ninja, build).
#   4. Checks: a hello-world cross-compiled and run under qemu, a CMake
#      configure of a tiny C/C++ project with toolchain.cmake, and the sysroot
#      Python printing platform.machine() under qemu.
#
#   bash scripts/cross-aarch64/setup.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=${AARCH64_ROOT:-/opt/aarch64-root}
CROSS=${STEP35_CROSS_DIR:-/opt/step35-cross}
export DEBIAN_FRONTEND=noninteractive

# ---- 1. toolchain + qemu -----------------------------------------------------
need=()
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu binutils-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
# clang-19 (bookworm main): GCC 12 cannot build ggml's armv9.2 (+sme) CPU variants
command -v clang-19 >/dev/null || need+=(clang-19)
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  dpkg --add-architecture arm64
  apt-get update -q
fi
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need[@]}"
fi

# ---- 2. aarch64 sysroot with Debian's python3.11 ----------------------------
PKGS_ARM64=(
  libc6 libgcc-s1 libstdc++6 gcc-12-base libgomp1 libatomic1
  python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libpython3.11
  libpython3.11-dev python3.11 python3.11-venv
  zlib1g libffi8 libssl3 libexpat1 libbz2-1.0 liblzma5 libsqlite3-0
  libncursesw6 libtinfo6 libreadline8 libuuid1 libdb5.3 libnsl2 libtirpc3
  libcrypt1 libgssapi-krb5-2 libk5crypto3 libkrb5-3 libkrb5support0
  libkeyutils1 libcom-err2
)
PKGS_ALL=(python3-pip-whl python3-setuptools-whl media-types readline-common libtirpc-common ca-certificates)
if [ ! -x "$ROOT/usr/bin/python3.11" ] || [ "${1:-}" = "--fresh" ]; then
  rm -rf "$ROOT" "$CROSS/debs"
  mkdir -p "$ROOT" "$CROSS/debs"
  (cd "$CROSS/debs" && apt-get download -q "${PKGS_ARM64[@]/%/:arm64}" "${PKGS_ALL[@]}")
  for d in "$CROSS"/debs/*.deb; do dpkg -x "$d" "$ROOT"; done
  # Debian's /usr/include/python3.11/pyconfig.h dispatches on the multiarch
  # triplet (<aarch64-linux-gnu/python3.11/pyconfig.h>), which would need all of
  # $ROOT/usr/include on the include path; put the arm64 one in its place.
  cp "$ROOT/usr/include/aarch64-linux-gnu/python3.11/pyconfig.h" "$ROOT/usr/include/python3.11/pyconfig.h"
fi

# ---- 3. host build tools ----------------------------------------------------
if [ ! -x "$CROSS/venv/bin/python" ]; then
  python3 -m venv "$CROSS/venv"
  "$CROSS/venv/bin/python" -m pip install -q --upgrade pip
fi
"$CROSS/venv/bin/python" -m pip install -q "scikit-build-core>=0.11" "pybind11>=2.13" "cmake>=3.21" ninja build

# ---- 4. checks ----------------------------------------------------------------
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
cat > "$T/hello.cpp" <<'EOF'
#include <cstdio>
#include <thread>
int main() { std::thread t([] { std::puts("hello from aarch64 (C++ + pthread)"); }); t.join(); }
EOF
aarch64-linux-gnu-g++ -O2 -o "$T/hello" "$T/hello.cpp" -pthread
file "$T/hello" | sed 's/, BuildID.*//'
qemu-aarch64 -L "$ROOT" "$T/hello"

mkdir -p "$T/proj"
cat > "$T/proj/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.21)
project(probe C CXX)
message(STATUS "probe: system=${CMAKE_SYSTEM_NAME} processor=${CMAKE_SYSTEM_PROCESSOR} crosscompiling=${CMAKE_CROSSCOMPILING}")
message(STATUS "probe: CXX=${CMAKE_CXX_COMPILER} strip=${CMAKE_STRIP}")
find_package(Threads REQUIRED)
EOF
for cc in clang gcc; do
  STEP35_CROSS_COMPILER=$cc PATH="$CROSS/venv/bin:$PATH" cmake -S "$T/proj" -B "$T/proj/build-$cc" -G Ninja \
    -DCMAKE_TOOLCHAIN_FILE="$HERE/toolchain.cmake" | grep -E "probe:|compiler identification|Configuring done"
done

qemu-aarch64 -L "$ROOT" "$ROOT/usr/bin/python3.11" -c \
  'import sys, platform, sysconfig, ssl, sqlite3, ctypes, ensurepip; print("sysroot python", platform.python_version(), platform.machine(), sysconfig.get_config_var("EXT_SUFFIX"))'
echo "setup OK: sysroot $ROOT, build tools $CROSS/venv"
