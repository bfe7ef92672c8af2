#!/usr/bin/env bash
# Create .venv/ in the repository root and install the pinned stack into it.
#
#   bash workflow/scripts/install.sh          (what `make setup` runs)
#
# Idempotent: when .venv already holds exactly what pyproject.toml pins (checked by a
# stamp plus a real import of the compiled mmcv ops), it returns in seconds.
# mmcv 2.1.0 exists only as a source distribution. When ../shared/wheels holds a
# prebuilt wheel for this torch/Python it is used as a find-links cache; otherwise mmcv
# is compiled here (~25 min on 2 cores). On a GPU node, FORCE_CUDA=1 builds mmcv with its
# CUDA ops instead, through workflow/scripts/build_mmcv_cuda.sh (PyPI sdist + the reviewed
# workflow/patches/mmcv-2.1.0-torch2.patch; TORCH_CUDA_ARCH_LIST defaults to the GPUs that
# nvidia-smi lists). Without nvcc, FORCE_CUDA=1 stops at once, before anything is installed.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
FORCE_CUDA=${FORCE_CUDA:-0}
if [ "$FORCE_CUDA" = 1 ]; then
    bash workflow/scripts/cuda_preflight.sh || exit 1
fi
VENV="$ROOT/.venv"
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "install.sh: CPython 3.11 is required (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 1
fi

# `snakemake --profile slurm` from the repository root (never replaces a profile of your own)
bash workflow/scripts/install_profile.sh

stamp_of() { cat pyproject.toml workflow/scripts/install.sh | sha256sum | cut -c1-16; }
STAMP="$VENV/.pipelines-installed"
want=$(stamp_of)
# mmcv as this run wants it: its compiled ops import, and with FORCE_CUDA=1 they include CUDA
mmcv_ok() {
    "$VENV/bin/python" -c '
import sys, mmcv, mmcv.ops
from mmcv.ops import get_compiling_cuda_version
sys.exit(mmcv.__version__ != "2.1.0"
         or (sys.argv[1] == "1" and get_compiling_cuda_version() == "not available"))' \
        "$FORCE_CUDA" 2>/dev/null
}
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && mmcv_ok \
   && "$VENV/bin/python" -c 'import mmseg, mmdet, pipelines' 2>/dev/null; then
    "$VENV/bin/python" -c 'from pipelines.snakemake_hook import write_pth; write_pth()'  # one file
    echo "install.sh: .venv is up to date"
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
find_links=()
if [ -d "$ROOT/../shared/wheels" ]; then
    find_links=(--find-links "$ROOT/../shared/wheels")
fi

# pip's "Location ... is ignored" chatter about absent local index folders is noise
quiet() { "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
# torch first (mmcv compiles against it). On this machine pip finds the local CPU wheel.
# torch 2.13 wants setuptools >= 77.0.3 and mmengine imports pkg_resources (gone in 81): 80.9.0.
quiet "${PIP[@]}" install -q "pip>=23" wheel ninja "setuptools==80.9.0" \
    "torch==2.13.0" "numpy==2.4.6" "mmengine==0.10.7"
if [ "$FORCE_CUDA" = 1 ] && ! mmcv_ok; then
    # CUDA ops: the patched sdist (THC headers are gone from torch 2.13), see the script
    bash workflow/scripts/build_mmcv_cuda.sh "$VENV/bin/python"
elif ! mmcv_ok; then
    if compgen -G "$ROOT/../shared/wheels/mmcv-2.1.0-cp311-*.whl" >/dev/null; then
        echo "install.sh: installing mmcv 2.1.0 from the wheel cache ../shared/wheels (about a minute)"
        quiet "${PIP[@]}" install -q "${find_links[@]}" --no-build-isolation "mmcv==2.1.0"
    else
        echo "install.sh: building mmcv 2.1.0 with compiled ops from source (no cached wheel in ../shared/wheels: ~20-25 min on 2 cores)"
        # mmcv's setup.py needs an old setuptools (the recipe in ../shared/wheels/README.md);
        # pip warns that torch wants a newer one: the runtime pin is put back right after.
        quiet "${PIP[@]}" install -q "setuptools<70"
        MAX_JOBS=${MAX_JOBS:-2} MMCV_WITH_OPS=1 FORCE_CUDA=0 \
            quiet "${PIP[@]}" install --no-build-isolation --no-binary mmcv "mmcv==2.1.0"
        quiet "${PIP[@]}" install -q "setuptools==80.9.0"
    fi
fi
quiet "${PIP[@]}" install -q "${find_links[@]}" --no-build-isolation -e "$ROOT"
# a YAML error in `snakemake --configfile` names its line and column (pipelines/snakemake_hook.py)
"$VENV/bin/python" -c 'from pipelines.snakemake_hook import write_pth; write_pth()'
"$VENV/bin/python" -c 'import mmcv.ops, mmseg, mmdet, pipelines'
echo "$want" > "$STAMP"
echo "install.sh: .venv ready ($("$VENV/bin/python" -c 'import torch, mmcv, mmseg, mmdet; print(f"torch {torch.__version__}, mmcv {mmcv.__version__}, mmseg {mmseg.__version__}, mmdet {mmdet.__version__}")'))"
