"""What produced a result: the git commit (and whether the tree was dirty), library versions and
the CPU the numbers were computed on.

Recorded by ``train`` into its done file, and by ``ingest`` as tags of each MLflow child run
(:data:`pipelines.contract.GIT_COMMIT_TAG`, ``GIT_DIRTY_TAG``, ``VERSION_TAG_PREFIX``).

The CPU matters for accuracy, not only for speed: a training is bit-reproducible on one machine
(analysis/README.md, "Trustworthy accuracy") but not across instruction sets. ATen, oneDNN and MKL each pick
their kernels by the CPU (and by ``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``,
``MKL_ENABLE_INSTRUCTIONS``), and a different kernel sums in a different order; 90 iterations
later the mIoU differs by points (``python -m pipelines.benchmarks.capability_spread``).
"""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

from pipelines.contract import PROVENANCE_LIBRARIES

REPO = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = {"torch": "torch", "mmcv": "mmcv", "mmengine": "mmengine",
                 "mmseg": "mmsegmentation", "mmdet": "mmdet"}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                             timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict:
    """``{"commit": sha or None, "dirty": bool or None}`` of the project's checkout.

    Dirty means tracked files differ from the commit (untracked files such as results do not
    count). Outside a git checkout (an installed copy) both are None.
    """
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def library_versions() -> dict:
    out = {}
    for name in PROVENANCE_LIBRARIES:
        try:
            out[name] = importlib.metadata.version(DISTRIBUTIONS[name])
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


# environment variables that change which CPU kernels (and so which rounding) a training gets
CPU_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
           "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "OMP_NUM_THREADS")
# the instruction-set flags of /proc/cpuinfo that decide those kernels (the model name of a
# virtual machine is often only "Intel(R) Xeon(R) Processor")
CPU_FLAGS = ("sse4_2", "avx", "fma", "avx2", "avx512f", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


def _cpuinfo(path: str | Path = "/proc/cpuinfo") -> tuple[str | None, list[str] | None]:
    """(model name, the :data:`CPU_FLAGS` it has) from the first processor of ``path``."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None, None
    model, flags = None, None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if model is None and key in ("model name", "Model", "Hardware"):
            model = value.strip() or None
        elif flags is None and key in ("flags", "Features"):
            have = set(value.split())
            flags = [flag for flag in CPU_FLAGS if flag in have]
    return model, flags


def aten_capability() -> str | None:
    """The kernel level ATen dispatches to in this process (``DEFAULT``, ``AVX2``, ``AVX512``
    on x86; after ``ATEN_CPU_CAPABILITY``, which can only lower it); None without torch."""
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability()) or None
    except Exception:  # noqa: BLE001 - provenance must never fail a training
        return None


def cpu_state(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """The CPU a result was computed on: ``model``, ``flags`` (instruction sets of
    :data:`CPU_FLAGS` it has), ``aten_capability`` (the level ATen really dispatched to),
    ``threads`` (torch's intra-op threads) and ``env`` (those of :data:`CPU_ENV` that are set)."""
    model, flags = _cpuinfo(cpuinfo)
    threads = None
    try:
        import torch

        threads = int(torch.get_num_threads())
    except Exception:  # noqa: BLE001
        pass
    return {"model": model or platform.processor() or platform.machine() or None,
            "machine": platform.machine() or None, "flags": flags,
            "aten_capability": aten_capability(), "threads": threads,
            "env": {name: os.environ[name] for name in CPU_ENV if name in os.environ}}


def collect() -> dict:
    return {"git": git_state(), "versions": library_versions(), "cpu": cpu_state()}
