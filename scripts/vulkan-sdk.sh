#!/usr/bin/env bash
# Prepare this Debian 12 machine to build and run the Vulkan plugin:
#  - Debian packages: glslc (shader compiler), libvulkan1 (the loader) and
#    mesa-vulkan-drivers (lavapipe, Mesa's software Vulkan driver: runs the
#    backend on the CPU, so the plugin is tested without a GPU), and
#    ninja-build: ggml-vulkan's shader generator is a CMake sub-build that
#    remembers the path of its ninja, so that ninja must outlive pip's
#    temporary build environment (backends/vulkan does not require pip's);
#  - Vulkan and SPIR-V headers from Debian trixie (1.4.309), unpacked into
#    build/vulkan-sdk: bookworm's 1.3.239 headers are too old for ggml-vulkan at
#    our pin (vk::LayerSettingEXT missing).
# Prints the CMake arguments for `pip wheel backends/vulkan` (see
# scripts/test-vulkan.sh). Idempotent; needs root for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
SDK=$PWD/build/vulkan-sdk
need=()
for p in glslc libvulkan1 mesa-vulkan-drivers ninja-build; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "vulkan-sdk: need root to install ${need[*]}" >&2; exit 1; fi
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -f "$SDK/usr/share/cmake/SPIRV-Headers/SPIRV-HeadersConfig.cmake" ] || [ ! -f "$SDK/usr/include/vulkan/vulkan.hpp" ]; then
  tmp=$(mktemp -d)
  cat > "$tmp/trixie.sources" <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/deb"
  O=(-o Dir::Etc::SourceList="$tmp/trixie.sources" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists="$tmp/lists" -o Dir::Cache="$tmp/cache" -o APT::Sandbox::User=root)
  apt-get "${O[@]}" update -qq >&2
  (cd "$tmp/deb" && apt-get "${O[@]}" download libvulkan-dev spirv-headers >&2)
  mkdir -p "$SDK"
  for d in "$tmp"/deb/*.deb; do dpkg -x "$d" "$SDK"; done
  rm -rf "$tmp"
fi
loader=$(ls /usr/lib/*-linux-gnu/libvulkan.so.1 2>/dev/null | head -1)
echo "-C cmake.define.Vulkan_INCLUDE_DIR=$SDK/usr/include -C cmake.define.Vulkan_LIBRARY=$loader -C cmake.define.CMAKE_PREFIX_PATH=$SDK/usr"
