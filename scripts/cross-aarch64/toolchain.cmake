# CMake toolchain: Linux aarch64 from a Debian bookworm amd64 host.
#
# Compiler (environment variable STEP35_CROSS_COMPILER, read again by every
# try_compile, so it is the environment, not a cache variable):
#   clang (default)  Debian's clang-19 with --target=aarch64-linux-gnu, on the
#                    libc/libstdc++/binutils of Debian's cross toolchain
#                    (gcc-12-aarch64-linux-gnu's sysroot /usr/aarch64-linux-gnu).
#   gcc              aarch64-linux-gnu-gcc/g++ 12. NOTE: GCC 12 does not know
#                    -march=armv9.2-a+...+sme, which GGML_CPU_ALL_VARIANTS uses for
#                    the armv9.2_1 / armv9.2_2 CPU variants (manylinux_2_28 has
#                    GCC 14), so the full core build fails with it.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(_triple aarch64-linux-gnu)
if(DEFINED ENV{STEP35_CROSS_COMPILER})
  set(_cc "$ENV{STEP35_CROSS_COMPILER}")
else()
  set(_cc clang)
endif()

if(_cc STREQUAL "gcc")
  set(CMAKE_C_COMPILER   ${_triple}-gcc)
  set(CMAKE_CXX_COMPILER ${_triple}-g++)
elseif(_cc STREQUAL "clang")
  find_program(_clang NAMES clang-19 REQUIRED NO_CMAKE_FIND_ROOT_PATH)
  find_program(_clangxx NAMES clang++-19 REQUIRED NO_CMAKE_FIND_ROOT_PATH)
  set(CMAKE_C_COMPILER   ${_clang})
  set(CMAKE_CXX_COMPILER ${_clangxx})
  set(CMAKE_C_COMPILER_TARGET   ${_triple})
  set(CMAKE_CXX_COMPILER_TARGET ${_triple})
  # GNU binutils of the cross toolchain for archives/strip (clang assembles
  # itself and links through aarch64-linux-gnu-ld, found beside its gcc).
  set(CMAKE_AR      /usr/bin/${_triple}-ar)
  set(CMAKE_RANLIB  /usr/bin/${_triple}-ranlib)
  set(CMAKE_STRIP   /usr/bin/${_triple}-strip)
  set(CMAKE_OBJCOPY /usr/bin/${_triple}-objcopy)
  set(CMAKE_OBJDUMP /usr/bin/${_triple}-objdump)
else()
  message(FATAL_ERROR "STEP35_CROSS_COMPILER must be clang or gcc, not '${_cc}'")
endif()

# Libraries and headers of the target only from the cross sysroot; programs
# (ccache, python, ninja) and CMake packages (pybind11 from the host build
# venv: header-only) from the host.
set(CMAKE_FIND_ROOT_PATH /usr/${_triple})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
