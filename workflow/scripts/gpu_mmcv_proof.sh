#!/usr/bin/env bash
# The GPU proof of the CUDA install route (issue 22) on the lent GPU machine, which has Python 3.12,
# torch 2.11 + CUDA 13 and nvcc but no OpenMMLab packages and no network (../shared/gpu/README.md).
# It runs the project's real route, workflow/scripts/build_mmcv_cuda.sh: the PyPI sdist, the
# patch, FORCE_CUDA=1, every mmcv CUDA op (not only the kit's deformable-attention kernel).
#
#   here, in the project root:   bash workflow/scripts/gpu_mmcv_proof.sh prepare
#       the kit's wheels in .gpu/ (../shared/gpu/prepare.sh) + .gpu/mmcv/: the mmcv 2.1.0 sdist
#       and the build tools' wheels (setuptools 69 and 80.9, wheel, ninja), about 3 MiB more
#   device call:                 bash workflow/scripts/gpu_mmcv_proof.sh device   carry [".gpu"]
#       installs the kit's wheels into /tmp/site (without its pure-Python mmcv), builds mmcv
#       with MAX_JOBS=16 for the machine's GPU, then runs tests/gpu; the build log's times and
#       the versions go to $OUT/gpu_mmcv_proof.txt
set -euo pipefail
cd "$(dirname "$0")/../.."
case "${1:-}" in
prepare)
    bash ../shared/gpu/prepare.sh
    PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python
    mkdir -p .gpu/mmcv
    q=(-q --disable-pip-version-check)
    [ -f .gpu/mmcv/mmcv-2.1.0.tar.gz ] || "$PY" -m pip download "${q[@]}" --no-deps \
        --no-binary :all: --no-build-isolation -d .gpu/mmcv mmcv==2.1.0
    for req in "setuptools==69.5.1" "setuptools==80.9.0" wheel ninja; do
        "$PY" -m pip download "${q[@]}" --no-deps --only-binary :all: --python-version 3.12 \
            --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform any \
            -d .gpu/mmcv "$req"
    done 2> >(grep -v "is ignored: it is neither" >&2)
    du -sh .gpu .gpu/mmcv
    echo "gpu_mmcv_proof: ready. Device call: command 'bash workflow/scripts/gpu_mmcv_proof.sh device', carry ['.gpu']"
    ;;
device)
    out=${OUT:-/tmp}/gpu_mmcv_proof.txt
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site \
        .gpu/whl/*.whl 2>&1 | grep -v "WARNING: Target directory" | tail -3 || true
    rm -rf /tmp/site/mmcv /tmp/site/mmcv-2.1.0.dist-info   # the kit's ops-less mmcv
    export PYTHONPATH="/tmp/site:$(pwd)" PYTHONUNBUFFERED=1
    export PIP_NO_INDEX=1 PIP_FIND_LINKS="$(pwd)/.gpu/mmcv" PIP_BREAK_SYSTEM_PACKAGES=1
    export MMCV_SDIST="$(pwd)/.gpu/mmcv/mmcv-2.1.0.tar.gz" MAX_JOBS=${MAX_JOBS:-16}
    {
        nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader || true
        python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)'
        start=$(date +%s)
        bash workflow/scripts/build_mmcv_cuda.sh python3
        echo "gpu_mmcv_proof: build_mmcv_cuda.sh took $(( $(date +%s) - start )) s"
        python3 -m pytest -q -p no:cacheprovider tests/gpu tests/unit/test_mmcv_patch.py -m "not slow"
    } 2>&1 | tee "$out"
    ;;
*)
    echo "usage: $0 prepare|device" >&2
    exit 2
    ;;
esac
