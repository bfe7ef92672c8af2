#!/usr/bin/env bash
# FORCE_CUDA=1 prerequisite check, run before anything is downloaded or compiled (install.sh
# calls it first; build_mmcv_cuda.sh too). Finds nvcc the way torch.utils.cpp_extension will:
# $CUDA_HOME (or $CUDA_PATH)/bin/nvcc when that is set, else nvcc on PATH, else
# /usr/local/cuda/bin/nvcc. Without one it refuses in one line (exit 1); with one it prints it.
#
#   bash workflow/scripts/cuda_preflight.sh
set -u
home=${CUDA_HOME:-${CUDA_PATH:-}}
if [ -n "$home" ]; then
    nvcc="$home/bin/nvcc"
    where="CUDA_HOME=$home"
elif command -v nvcc >/dev/null 2>&1; then
    nvcc=$(command -v nvcc)
    where="PATH"
else
    nvcc=/usr/local/cuda/bin/nvcc
    where="PATH or /usr/local/cuda"
fi
if [ ! -x "$nvcc" ]; then
    echo "FORCE_CUDA=1: no nvcc in $where: load your CUDA toolkit (e.g. 'module load cuda') or set CUDA_HOME, then rerun; nothing was downloaded or built" >&2
    exit 1
fi
release=$("$nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9.]*\).*/\1/p' | head -1)
echo "cuda_preflight: nvcc ${release:-(unknown release)} at $nvcc"
