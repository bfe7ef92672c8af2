#!/usr/bin/env bash
# Build mmcv 2.1.0 with its CUDA ops against the installed torch (the pinned 2.13), on a machine
# with nvcc. mmcv 2.1.0 ships only as source, and its CUDA sources include <THC/THCAtomics.cuh>,
# which torch 2.13 no longer has: this fetches the PyPI sdist, checks its sha256, applies
# workflow/patches/mmcv-2.1.0-torch2.patch (why, hunk by hunk, is written in the patch) and
# builds it with FORCE_CUDA=1.
#
#   bash workflow/scripts/build_mmcv_cuda.sh [PYTHON]
#       PYTHON: the interpreter of the environment to install into (default: python on PATH,
#       i.e. the active conda env; `FORCE_CUDA=1 make setup` passes .venv/bin/python).
#   bash workflow/scripts/build_mmcv_cuda.sh --prepare DIR [PYTHON]
#       only fetch, verify and patch the sdist into DIR/mmcv-2.1.0 (no nvcc, no build; the tests).
#
# Environment: TORCH_CUDA_ARCH_LIST (default: the compute capabilities of the GPUs nvidia-smi
# lists, e.g. "9.0"); MAX_JOBS (parallel compile jobs, default: all cores); MMCV_SDIST=/path/to/
# mmcv-2.1.0.tar.gz for a machine without PyPI access (its sha256 is checked all the same).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$here/../.." && pwd)
PATCH="$ROOT/workflow/patches/mmcv-2.1.0-torch2.patch"
SDIST_SHA256=d387bcab66b467479b6660310e23746cfc79c6e57acf04094680adb499a5cd3f
die() { echo "build_mmcv_cuda: $*" >&2; exit 1; }

# fetch (or take $MMCV_SDIST), verify, unpack and patch into $2/mmcv-2.1.0
fetch_and_patch() {
    local py=$1 dir=$2 sdist
    mkdir -p "$dir"
    if [ -n "${MMCV_SDIST:-}" ]; then
        sdist=$MMCV_SDIST
        [ -f "$sdist" ] || die "MMCV_SDIST=$sdist does not exist"
    else
        # --no-build-isolation: pip reads the sdist's metadata with this env's setuptools
        # (mmcv's setup.py imports pkg_resources, which an isolated newest setuptools lacks)
        "$py" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
            --no-build-isolation -d "$dir" "mmcv==2.1.0" \
            2> >(grep -v "is ignored: it is neither" >&2) \
            || die "could not download the mmcv 2.1.0 source from PyPI (offline? set MMCV_SDIST=/path/to/mmcv-2.1.0.tar.gz)"
        sdist="$dir/mmcv-2.1.0.tar.gz"
    fi
    local got
    got=$(sha256sum "$sdist" | cut -d' ' -f1)
    [ "$got" = "$SDIST_SHA256" ] || die "$sdist has sha256 $got, not the PyPI mmcv-2.1.0.tar.gz ($SDIST_SHA256)"
    rm -rf "$dir/mmcv-2.1.0"
    tar xzf "$sdist" -C "$dir"
    if command -v patch >/dev/null 2>&1; then
        (cd "$dir/mmcv-2.1.0" && patch -p1 --forward --quiet --no-backup-if-mismatch < "$PATCH") \
            || die "$PATCH does not apply to the mmcv 2.1.0 sdist"
    else
        (cd "$dir/mmcv-2.1.0" && git apply -p1 "$PATCH") \
            || die "$PATCH does not apply to the mmcv 2.1.0 sdist"
    fi
    if grep -rlE '#[[:space:]]*include[[:space:]]*[<"]THC/' "$dir/mmcv-2.1.0/mmcv/ops/csrc" >&2; then
        die "the files above still include THC/ after the patch"
    fi
}

if [ "${1:-}" = --prepare ]; then
    [ -n "${2:-}" ] || die "usage: $0 --prepare DIR [PYTHON]"
    fetch_and_patch "${3:-python3}" "$2"
    echo "$2/mmcv-2.1.0"
    exit 0
fi

PY=${1:-python}
# 1. prerequisites, before anything is downloaded or compiled: nvcc, a CUDA build of torch whose
#    CUDA major version is nvcc's, and the GPU architectures to compile for.
found=$(bash "$here/cuda_preflight.sh") || exit 1
echo "$found"
# torch finds the toolkit as dirname(dirname(which nvcc)) when CUDA_HOME is unset: wrong for an
# nvcc on PATH that is a wrapper or a link outside the toolkit (/usr/local/bin/nvcc -> headers
# looked for in /usr/local/include: "cuda_runtime.h: No such file or directory" at the first
# .cu file, after minutes of C++). Ask nvcc where its toolkit is instead.
if [ -z "${CUDA_HOME:-}${CUDA_PATH:-}" ]; then
    top=$(nvcc --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
    if [ -n "$top" ] && [ -f "$top/include/cuda_runtime.h" ]; then
        export CUDA_HOME=$(cd "$top" && pwd -P)
        echo "build_mmcv_cuda: CUDA_HOME=$CUDA_HOME (nvcc's own toolkit)"
    fi
fi
# A toolkit without the CUDA libraries' headers (an nvcc-only install): torch's headers include
# cusparse.h and cublas*.h, which torch's own nvidia-* wheels ship; point the compilers there.
home=${CUDA_HOME:-${CUDA_PATH:-/usr/local/cuda}}
if [ ! -f "$home/include/cusparse.h" ]; then
    extra=$("$PY" -c '
import glob, os, torch
root = os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia")
print(":".join(sorted({os.path.dirname(p) for p in
                       glob.glob(os.path.join(root, "**", "cusparse.h"), recursive=True)})))' \
        2>/dev/null || true)
    if [ -n "$extra" ]; then
        export CPATH="$extra${CPATH:+:$CPATH}"
        echo "build_mmcv_cuda: $home has no cusparse.h; using the headers of torch's nvidia wheels ($extra)"
    fi
fi
nvcc_release=$(sed -n 's/^cuda_preflight: nvcc \([0-9.]*\) .*/\1/p' <<<"$found")
torch_cuda=$("$PY" -c 'import torch; print(torch.version.cuda or "none")' 2>/dev/null) \
    || die "$PY cannot import torch: install torch==2.13.0 (the CUDA wheel) first"
torch_version=$("$PY" -c 'import torch; print(torch.__version__)')
[ "$torch_cuda" != none ] \
    || die "torch $torch_version in $PY is a CPU-only build: install the CUDA wheel of torch==2.13.0 (pip install torch==2.13.0 from PyPI on Linux), then rerun"
if [ -n "$nvcc_release" ] && [ "${nvcc_release%%.*}" != "${torch_cuda%%.*}" ]; then
    die "nvcc is CUDA $nvcc_release but torch $torch_version was built with CUDA $torch_cuda: load a CUDA ${torch_cuda%%.*}.x toolkit (or set CUDA_HOME to one)"
fi
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    caps=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' ' | grep -E '^[0-9]+\.[0-9]+$' | sort -u | paste -sd';' || true)
    [ -n "$caps" ] || die "TORCH_CUDA_ARCH_LIST is unset and nvidia-smi lists no GPU here: set it for the GPUs that will run the jobs, e.g. TORCH_CUDA_ARCH_LIST=\"8.0;9.0\""
    export TORCH_CUDA_ARCH_LIST="$caps"
fi
jobs=${MAX_JOBS:-$(nproc)}
echo "build_mmcv_cuda: mmcv 2.1.0 + $(basename "$PATCH"), torch $torch_version (CUDA $torch_cuda), nvcc $nvcc_release, TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, MAX_JOBS=$jobs"

# 2. source
work=$(mktemp -d "${TMPDIR:-/tmp}/mmcv-cuda-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
fetch_and_patch "$PY" "$work/src"

# 3. build a wheel, then install it. mmcv's setup.py needs setuptools < 70 (it imports
#    pkg_resources); the runtime pin (pyproject.toml) is put back afterwards, also on failure.
#    ninja: without it torch compiles the ~100 files one by one, whatever MAX_JOBS says.
PIP=("$PY" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q "setuptools<70" wheel ninja 2> >(grep -v "is ignored: it is neither" >&2)
trap '"${PIP[@]}" install -q "setuptools==80.9.0" 2> >(grep -v "is ignored: it is neither" >&2); rm -rf "$work"' EXIT
start=$(date +%s)
echo "build_mmcv_cuda: compiling (about 60 CUDA files; tens of minutes with few cores)"
MMCV_WITH_OPS=1 FORCE_CUDA=1 MAX_JOBS=$jobs \
    "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$work/wheel" "$work/src/mmcv-2.1.0" \
    2> >(grep -v "is ignored: it is neither" >&2) \
    || die "the build failed (log above); report it with nvcc $nvcc_release, torch $torch_version"
echo "build_mmcv_cuda: built in $(( $(date +%s) - start )) s"
whl=$(ls "$work"/wheel/mmcv-2.1.0-*.whl)
"${PIP[@]}" install -q --force-reinstall --no-deps "$whl"
# mmcv's own dependencies (a no-op in the project's environments, which have them all)
"${PIP[@]}" install -q "$whl" 2> >(grep -v "is ignored: it is neither" >&2) \
    || echo "build_mmcv_cuda: warning: pip could not install mmcv's dependencies (offline?); the check below imports mmcv.ops" >&2

# 4. proof: the ops were compiled with CUDA; with a GPU here, the deformable-attention kernel
#    (the op Mask2Former uses) matches mmcv's PyTorch path
"$PY" - <<'EOF'
import torch
from mmcv.ops import get_compiling_cuda_version
from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttnFunction,
                                              multi_scale_deformable_attn_pytorch)

cuda = get_compiling_cuda_version()
if cuda == 'not available':
    raise SystemExit('build_mmcv_cuda: mmcv._ext was built without CUDA ops')
msg = f'build_mmcv_cuda: mmcv 2.1.0 CUDA ops built with CUDA {cuda}'
if torch.cuda.is_available():
    torch.manual_seed(0)
    shapes = torch.tensor([[8, 8], [4, 4]], device='cuda')
    start = torch.cat((shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]))
    value = torch.rand(2, int(shapes.prod(1).sum()), 4, 8, device='cuda', dtype=torch.float64)
    loc = torch.rand(2, 10, 4, 2, 3, 2, device='cuda', dtype=torch.float64)
    weight = torch.rand(2, 10, 4, 2, 3, device='cuda', dtype=torch.float64)
    weight = weight / weight.sum((-1, -2), keepdim=True)
    out = MultiScaleDeformableAttnFunction.apply(value, shapes, start, loc, weight, 64)
    ref = multi_scale_deformable_attn_pytorch(value, shapes, loc, weight)
    err = (out - ref).abs().max().item()
    if err > 1e-8:
        raise SystemExit(f'build_mmcv_cuda: deformable attention on {torch.cuda.get_device_name()} '
                         f'differs from the PyTorch path by {err:.1e}')
    msg += f'; deformable attention on {torch.cuda.get_device_name()} matches the PyTorch path ({err:.0e})'
else:
    msg += '; no GPU visible here, so the kernels were not run'
print(msg)
EOF
