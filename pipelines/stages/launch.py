"""Multi-GPU training per job: mmengine's distributed launch through PyTorch's ``torchrun``.

``python -m pipelines train ... --nproc N`` (the workflow passes ``resources.train.gpus``)
starts N processes on this node with ``torchrun --standalone --nproc_per_node N`` (inside a
SLURM allocation as well: one job = one node, N GPUs; the rendezvous is local). Each process
runs the same ``train`` command with ``launcher='pytorch'``, so mmengine initialises the
process group, wraps the model in ``MMDistributedDataParallel``, shards the data and saves
checkpoints from rank 0 only; a retry resumes from the work dir's last checkpoint exactly as a
single-process run does. On GPUs the backend is NCCL; without CUDA it is gloo on CPU (the same
code path, which is how the tests run two processes here).

The effective batch is ``N x train_dataloader.batch_size``; with ``auto_scale_lr.enable=True``
(set in the full-size ablations) mmengine scales the learning rate by effective batch /
``auto_scale_lr.base_batch_size`` (16 in MMSeg's Mask2Former recipe: 8 GPUs x 2 images).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import Sequence


def world_size() -> int:
    """The number of processes of this (torchrun) launch; 1 outside one."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def is_main_process() -> bool:
    return rank() == 0


def without_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` less its ``--nproc N`` (torchrun would read it as its own ``--nproc-per-node``;
    the processes know their launch from ``WORLD_SIZE``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def torchrun_argv(nproc: int, argv: Sequence[str]) -> list[str]:
    """``torchrun --standalone --nproc_per_node N -m pipelines ARGV`` with this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={int(nproc)}", "-m", "pipelines", *without_nproc(argv)]


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m pipelines ARGV`` as ``nproc`` torchrun processes; their exit status."""
    env = dict(os.environ)
    # each process gets its share of the job's cores
    threads = max(1, int(env.get("OMP_NUM_THREADS", os.cpu_count() or 1)) // int(nproc))
    env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.call(torchrun_argv(nproc, argv), env=env)


def die_with_launcher() -> None:
    """Make this rank die when its launcher does (Linux ``PR_SET_PDEATHSIG``).

    torchrun starts each rank in a session of its own, so a SIGKILL of the job's process group
    (a killed Snakemake job, a local executor stopped) would leave the ranks training on as
    orphans and writing checkpoints beside the retry. On a cluster the scheduler kills the whole
    job; this makes a local kill behave the same.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return  # not glibc Linux: nothing to do
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before the line above
        os._exit(1)


def configure(cfg) -> None:
    """Set an mmengine config up for the launch this process belongs to (no-op alone)."""
    if world_size() <= 1:
        return
    import torch

    die_with_launcher()

    cfg.launcher = "pytorch"
    env_cfg = dict(cfg.get("env_cfg") or {})
    dist_cfg = dict(env_cfg.get("dist_cfg") or {})
    dist_cfg["backend"] = "nccl" if torch.cuda.is_available() else "gloo"
    env_cfg["dist_cfg"] = dist_cfg
    cfg.env_cfg = env_cfg
    if not torch.cuda.is_available():
        # mmengine's pytorch launcher calls torch.cuda.set_device unconditionally, which a
        # CPU-only torch lacks; with the group already up, mmengine skips its own init_dist
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
        # DDP over CPU modules takes no device ids (mmengine passes LOCAL_RANK by default)
        wrapper = dict(cfg.get("model_wrapper_cfg") or {})
        wrapper.setdefault("type", "MMDistributedDataParallel")
        wrapper["device_ids"] = None
        wrapper.setdefault("broadcast_buffers", False)
        wrapper.setdefault("find_unused_parameters", cfg.get("find_unused_parameters", False))
        cfg.model_wrapper_cfg = wrapper
