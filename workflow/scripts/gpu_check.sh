#!/usr/bin/env bash
# The CUDA route on one GPU node, in one command: mmcv's CUDA ops built from the patched sdist,
# bare imports each in a fresh process (with a native backtrace if one crashes), tests/gpu, the
# GPU latency table, and a tiny DAG with resources.*.gpus: 1 through Snakemake.
#
#   on a machine with PyPI, in the project root:
#       bash workflow/scripts/gpu_check.sh prepare
#           fills .gpu/ (git-ignored): the OpenMMLab stack's cp312 wheels and mmcv's kernel kit
#           (../shared/gpu/prepare.sh), the mmcv 2.1.0 sdist and build tools, and Snakemake's
#           wheels, for a GPU node without network whose image has python3, torch and nvcc
#   on the GPU node (with .gpu/ beside the checkout), writing everything under $OUT:
#       bash workflow/scripts/gpu_check.sh run [PHASE...]
#           PHASE: build imports tests table dag (default: all, in that order; about 4 min for
#           build+imports+tests and 5 for table+dag on an H100/H200 with 16 cores). A later
#           call may run the rest: the build is cached in /tmp/gpu_check while the node lives.
#       bash workflow/scripts/gpu_check.sh run --cpu
#           the same steps on this machine's .venv without a GPU (no build: the CPU mmcv; the
#           table's --dry-run; the DAG on the CPU): checks the script itself.
# Results: $OUT/gpu_check.txt (the log: versions, build time, each import's exit status and
# backtrace), $OUT/gpu/gpu_table.{md,json}, $OUT/dag/ (the tiny DAG's report and metrics).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
case "${1:-}" in
prepare)
    set -e
    bash ../shared/gpu/prepare.sh
    PY=python3; [ -x .venv/bin/python ] && PY=.venv/bin/python
    mkdir -p .gpu/mmcv .gpu/snake
    q=(-q --disable-pip-version-check)
    [ -f .gpu/mmcv/mmcv-2.1.0.tar.gz ] || "$PY" -m pip download "${q[@]}" --no-deps \
        --no-binary :all: --no-build-isolation -d .gpu/mmcv mmcv==2.1.0
    plat=(--only-binary :all: --python-version 3.12 --platform manylinux2014_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any)
    for req in "setuptools==69.5.1" "setuptools==80.9.0" wheel ninja; do
        "$PY" -m pip download "${q[@]}" --no-deps "${plat[@]}" -d .gpu/mmcv "$req"
    done 2> >(grep -v "is ignored: it is neither" >&2)
    # Snakemake and what it needs that the GPU image lacks (the image has numpy, pandas, ...)
    # (a dependency published only as source, such as connection_pool, is built here into a
    # pure-Python wheel and found beside the others on the next try)
    snake=$(grep -o '"snakemake==[^"]*"' pyproject.toml | tr -d '"')
    for _ in 1 2 3 4 5 6; do
        err=$("$PY" -m pip download "${q[@]}" "${plat[@]}" --find-links .gpu/snake \
            -d .gpu/snake "$snake" 2>&1 >/dev/null) && break
        missing=$(sed -n 's/.*No matching distribution found for \([A-Za-z0-9_.-]*\).*/\1/p' <<<"$err")
        [ -n "$missing" ] || { echo "$err" >&2; exit 1; }
        echo "gpu_check: building a wheel of $missing (no binary on PyPI)"
        "$PY" -m pip wheel "${q[@]}" --no-deps -w .gpu/snake "$missing"
    done
    du -sh .gpu .gpu/mmcv .gpu/snake
    echo "gpu_check: ready; on the GPU node: bash workflow/scripts/gpu_check.sh run"
    exit 0
    ;;
run) shift ;;
*) echo "usage: $0 prepare | run [--cpu] [build] [imports] [tests] [table] [dag]" >&2; exit 2 ;;
esac

CPU=0
if [ "${1:-}" = --cpu ]; then CPU=1; shift; fi
phases=("$@"); [ ${#phases[@]} -gt 0 ] || phases=(build imports tests table dag)
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.txt"
say() { echo "gpu_check: $*" | tee -a "$LOG"; }
status=0
step() {  # step NAME COMMAND...: run it, log its output and exit status, go on
    local name=$1 start rc; shift
    start=$(date +%s)
    say "== $name"
    "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    say "$name: exit $rc in $(( $(date +%s) - start )) s"
    [ "$rc" = 0 ] || status=1
    return "$rc"
}

if [ "$CPU" = 1 ]; then
    PY=$ROOT/.venv/bin/python
    export PATH="$ROOT/.venv/bin:$PATH"
    device=cpu
else
    PY=python3
    SITE=/tmp/gpu_check/site
    mkdir -p "$SITE"
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" \
        .gpu/whl/*.whl .gpu/snake/*.whl 2>&1 | grep -v "WARNING: Target directory" | tail -3
    rm -rf "$SITE"/mmcv "$SITE"/mmcv-2.1.0.dist-info "$SITE"/torch "$SITE"/numpy  # the image's
    export PYTHONPATH="$SITE:$ROOT" PATH="$SITE/bin:$PATH" PYTHONUNBUFFERED=1
    export PIP_NO_INDEX=1 PIP_FIND_LINKS="$ROOT/.gpu/mmcv" PIP_BREAK_SYSTEM_PACKAGES=1
    export MMCV_SDIST="$ROOT/.gpu/mmcv/mmcv-2.1.0.tar.gz" MAX_JOBS=${MAX_JOBS:-$(nproc)}
    device=cuda
fi
{
    date -u
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader \
        2>/dev/null || echo "no nvidia-smi"
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
"CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version(), "GPU",
torch.cuda.is_available())'
    command -v nvcc >/dev/null && nvcc --version | tail -1
} 2>&1 | tee -a "$LOG"

# a bare import in a fresh process; on a crash, Python's faulthandler stack and (where gdb is
# installed) the native backtrace go to the log
bare_import() {
    local code=$1 rc
    "$PY" -X faulthandler -c "$code"
    rc=$?
    if [ "$rc" -ge 128 ]; then  # killed by a signal (SIGSEGV: 139)
        echo "crashed (exit $rc): $code"
        if command -v gdb >/dev/null; then
            gdb -q -batch -ex run -ex bt -ex "info sharedlibrary" --args "$PY" -c "$code" 2>&1 \
                | tail -80
        fi
    fi
    return "$rc"
}

for phase in "${phases[@]}"; do
    case "$phase" in
    build)
        [ "$CPU" = 1 ] && { say "build: skipped on the CPU (the .venv's mmcv)"; continue; }
        if "$PY" -c 'import sys; from mmcv.ops import get_compiling_cuda_version as v
sys.exit(v() == "not available")' 2>/dev/null; then
            say "build: mmcv CUDA ops already installed"
        else
            step build bash workflow/scripts/build_mmcv_cuda.sh "$PY"
        fi ;;
    imports)
        step "bare import mmcv.ops" bare_import "import mmcv.ops; print('mmcv.ops ok')"
        step "bare import torch, mmcv, mmcv._ext" bare_import \
            "import torch, mmcv, mmcv._ext; print('mmcv._ext ok')"
        step "import mmcv._ext after CUDA init" bare_import \
            "import torch; torch.cuda.is_available() and torch.cuda.init(); import mmcv._ext; print('ok after init')"
        step "train-style import" bare_import \
            "import pipelines.registry, mmseg.models, mmdet.models; from mmcv.ops import MultiScaleDeformableAttention; print('model registry ok')" ;;
    tests)
        step "tests/gpu" "$PY" -m pytest -q -p no:cacheprovider tests/gpu ;;
    table)
        if [ "$CPU" = 1 ]; then
            step "gpu_table (dry run)" "$PY" -m pipelines.benchmarks.gpu_table --dry-run --out "$OUT/gpu" --only pro_scale_r50
        else
            step "gpu_table" "$PY" -m pipelines.benchmarks.gpu_table --out "$OUT/gpu"
        fi ;;
    dag)
        step "tiny DAG (resources.*.gpus: 1)" "$PY" workflow/scripts/gpu_tiny_dag.py \
            --out "$OUT/dag" --device "$device" ;;
    *) say "unknown phase $phase"; status=2 ;;
    esac
done
say "done: exit $status (log $LOG)"
exit "$status"
