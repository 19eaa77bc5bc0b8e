#!/usr/bin/env bash
# cibuildwheel before-all for the Vulkan plugin, inside manylinux_2_28
# (AlmaLinux 8, whose Vulkan headers are too old for ggml-vulkan at our pin):
# a Vulkan SDK in /opt/vulkan-sdk with headers >= 1.4, SPIR-V headers, the
# loader to link against, and glslc. x86_64: LunarG's SDK. aarch64 (no LunarG
# build): the same components from Khronos' and Google's sources at the SDK tag.
set -euo pipefail
SDK_VERSION=1.4.309.0
dest=/opt/vulkan-sdk
dnf install -y xz git ccache || true
if [ "$(uname -m)" = x86_64 ]; then
  curl -fsSL "https://sdk.lunarg.com/sdk/download/$SDK_VERSION/linux/vulkansdk-linux-x86_64-$SDK_VERSION.tar.xz" -o /tmp/sdk.tar.xz
  mkdir -p /tmp/sdk && tar -xf /tmp/sdk.tar.xz -C /tmp/sdk
  mv "/tmp/sdk/$SDK_VERSION/x86_64" "$dest"
else
  src=/tmp/vk-src; mkdir -p "$src"
  for repo in KhronosGroup/Vulkan-Headers KhronosGroup/SPIRV-Headers KhronosGroup/Vulkan-Loader; do
    name=${repo#*/}
    git clone -q --depth 1 -b "vulkan-sdk-$SDK_VERSION" "https://github.com/$repo" "$src/$name"
    cmake -S "$src/$name" -B "$src/$name/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$dest" \
          -DCMAKE_PREFIX_PATH="$dest" -DBUILD_TESTS=OFF -DBUILD_WSI_XCB_SUPPORT=OFF -DBUILD_WSI_XLIB_SUPPORT=OFF \
          -DBUILD_WSI_WAYLAND_SUPPORT=OFF
    cmake --build "$src/$name/build" -j"$(nproc)" --target install
  done
  git clone -q --depth 1 -b v2025.1 https://github.com/google/shaderc "$src/shaderc"
  (cd "$src/shaderc" && ./utils/git-sync-deps)
  cmake -S "$src/shaderc" -B "$src/shaderc/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$dest" \
        -DSHADERC_SKIP_TESTS=ON -DSHADERC_SKIP_EXAMPLES=ON -DSHADERC_SKIP_COPYRIGHT_CHECK=ON
  cmake --build "$src/shaderc/build" -j"$(nproc)" --target glslc_exe
  install -m 755 "$src/shaderc/build/glslc/glslc" "$dest/bin/glslc"
fi
"$dest/bin/glslc" --version
