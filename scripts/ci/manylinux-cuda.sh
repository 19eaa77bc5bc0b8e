#!/usr/bin/env bash
# cibuildwheel before-all for the CUDA plugins, inside manylinux_2_28
# (AlmaLinux 8): the CUDA compiler, runtime/cuBLAS headers and the driver stub
# from NVIDIA's RHEL 8 repository (x86_64, or sbsa for aarch64 incl. DGX Spark).
#   bash scripts/ci/manylinux-cuda.sh 12|13
set -euo pipefail
major=${1:?CUDA major version}
case "$major" in 12) v=12-9 ;; 13) v=13-0 ;; *) echo "CUDA $major?" >&2; exit 1 ;; esac
arch=$(uname -m); [ "$arch" = aarch64 ] && arch=sbsa
dnf install -y dnf-plugins-core
dnf config-manager --add-repo "https://developer.download.nvidia.com/compute/cuda/repos/rhel8/$arch/cuda-rhel8.repo"
dnf install -y "cuda-nvcc-$v" "cuda-cudart-devel-$v" "libcublas-devel-$v" "cuda-driver-devel-$v" "cuda-cccl-$v"
ln -sfn "/usr/local/cuda-${v/-/.}" /usr/local/cuda
/usr/local/cuda/bin/nvcc --version
dnf install -y ccache || true
