"""``python -m pipelines train``: mmengine's Runner on a config, resuming automatically."""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

from pipelines.config import check_dataset, ensure_writable_dir, load_config
from pipelines.errors import UserError
from pipelines.stages import weights
from pipelines.stages.disk import apply_retention, finalize


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a model config (resumes from the last checkpoint "
                       "in --work-dir)", description=__doc__)
    p.add_argument("config", help="mmengine config file (configs/models/*.py)")
    p.add_argument("--work-dir", required=True, help="checkpoints and logs go here")
    p.add_argument("--data-root", help="dataset folder (overrides data_root of every dataloader)")
    p.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE", default=[],
                   help="override config keys, e.g. train_cfg.max_iters=100 (keys must exist)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--done-file", metavar="JSON", help="after training finishes, write a small "
                   "JSON here (iterations, last checkpoint, training time): the workflow's "
                   "output, so checkpoints never need to be declared")
    p.add_argument("--stop-at", type=int, metavar="N", help="follow the schedule of "
                   "train_cfg.max_iters but stop after iteration N (a checkpoint and validation "
                   "iteration), keeping the resume checkpoint: the same training continues "
                   "from it with a later --stop-at, or without one to the end (a rung of a "
                   "multi-fidelity search); --done-file then reports iteration N")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="processes (GPUs) of this training on this node: N > 1 starts "
                   "`torchrun --standalone --nproc_per_node N` (DDP; NCCL on GPUs, gloo on "
                   "CPU); the workflow passes resources.train.gpus (pipelines/stages/launch.py)")
    p.add_argument("--record-failure", type=int, choices=(0, 1), default=0, metavar="0|1",
                   help="1: if training fails, write --done-file as a failure record (reason) "
                   "and exit 0; the workflow passes 1 on a job's last attempt so that the "
                   "rest of the ablation is still ingested (pipelines/stages/failures.py)")
    p.set_defaults(func=run)


def build_train_config(args: argparse.Namespace):
    cfg = load_config(args.config, args.cfg_options, args.data_root)
    weights.localise(cfg, weights.folder_of())  # $PIPELINES_WEIGHTS: no download at train time
    cfg.work_dir = str(ensure_writable_dir(args.work_dir))
    check_schedule(cfg)
    stop_at = getattr(args, "stop_at", None)
    if stop_at is not None:
        check_stop_at(cfg, stop_at)
    cfg.resume, cfg.load_from = choose_start(cfg.work_dir, cfg.get("load_from"))
    apply_retention(cfg)  # keep the last and the best checkpoint, not every one (disk.py)
    hooks = list(cfg.get("custom_hooks", []) or [])
    wanted = [dict(type="ExactResumeHook", resume=cfg.resume),  # pipelines/stages/resume.py
              dict(type="StopOnNonFiniteLossHook")]
    if stop_at is not None:
        wanted.append(dict(type="StopAtIterationHook", stop_at=stop_at))
    if not args.no_progress:
        wanted.append(dict(type="ProgressBarHook"))
    for hook in wanted:
        if not any(h.get("type") == hook["type"] for h in hooks):
            hooks.append(hook)
    cfg.custom_hooks = hooks
    loaders = ["train_dataloader"]
    if cfg.get("val_cfg") and cfg.get("val_dataloader"):
        loaders.append("val_dataloader")
    check_dataset(cfg, loaders)
    return cfg


def check_schedule(cfg) -> None:
    """Refuse a schedule that trains nothing (``train_cfg.max_iters=-5`` ran 0 iterations and
    exited 0) in one line."""
    train_cfg = cfg.get("train_cfg") or {}
    for key in ("max_iters", "max_epochs", "val_interval"):
        if key not in train_cfg:
            continue
        value = train_cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"train_cfg.{key} must be a whole number >= 1, got {value!r}")


def check_stop_at(cfg, stop_at: int) -> None:
    """``--stop-at N`` must be an iteration of the schedule at which the loop writes a resume
    checkpoint and validates (so the rung has a result and a point to continue from)."""
    max_iters = int(cfg.train_cfg.get("max_iters", 0))
    if isinstance(stop_at, bool) or not 1 <= stop_at <= max_iters:
        raise UserError(f"--stop-at {stop_at}: expected an iteration in 1..{max_iters} "
                        "(train_cfg.max_iters)")
    if stop_at == max_iters:
        return
    interval = int(((cfg.get("default_hooks") or {}).get("checkpoint") or {}).get("interval", 0))
    val_interval = int(cfg.train_cfg.get("val_interval", max_iters))
    if not interval or stop_at % interval or stop_at % val_interval:
        raise UserError(f"--stop-at {stop_at}: not a checkpoint and validation iteration "
                        f"(default_hooks.checkpoint.interval={interval or None}, "
                        f"train_cfg.val_interval={val_interval}); use a multiple of both")


def own_last_checkpoint(work_dir) -> str | None:
    """The checkpoint mmengine's ``last_checkpoint`` file in ``work_dir`` names, if it exists."""

    marker = Path(work_dir) / "last_checkpoint"
    try:
        last = marker.read_text().strip()
    except OSError:
        return None
    return last if last and Path(last).is_file() else None


def choose_start(work_dir, load_from: str | None) -> tuple[bool, str | None]:
    """``(resume, load_from)`` for mmengine's Runner: fine-tuning and resume together.

    mmengine 0.10.7 resumes *from* ``load_from`` whenever both ``resume`` and ``load_from``
    are set, so a retried fine-tuning would restart from the pretrained weights every time.
    Instead: a work dir with its own last checkpoint resumes from it (``load_from`` dropped,
    mmengine finds ``last_checkpoint`` itself); otherwise a ``load_from`` is loaded as
    weights only (fresh optimizer, iteration 0); otherwise training starts from scratch.

    Args:
        work_dir: the training's work dir.
        load_from: the config's ``load_from`` (pretrained or parent weights), or None.

    Returns:
        The values for the config's ``resume`` and ``load_from``.
    """
    if own_last_checkpoint(work_dir) is not None or not load_from:
        return True, None
    return False, str(load_from)


def train(cfg):
    """Run training; returns the runner (its ``iter`` and ``work_dir`` tell what happened)."""
    import pipelines.stages.hooks  # noqa: F401
    import pipelines.stages.resume  # noqa: F401
    from pipelines.stages.hooks import NonFiniteLossError
    from pipelines.stages.runner import build_runner, run_loop

    runner = build_runner(cfg)
    try:
        run_loop(runner, "train")
    except AssertionError as err:
        # mmcv's LoadImageFromFile asserts on a file it cannot decode (also from a data worker)
        unreadable = re.search(r"failed to load image: (\S+)", str(err))
        if unreadable is None:
            raise
        raise UserError(f"cannot read image {unreadable.group(1)}: not an image file (or a "
                        "corrupt one); remove or replace it in the dataset") from None
    except ValueError as err:
        # mmdet's HungarianAssigner (Mask2Former's matcher) is where NaN/inf predictions of a
        # diverged model surface first, before any loss exists: name the cause
        if "invalid numeric entries" not in str(err):
            raise
        raise NonFiniteLossError(
            f"predictions are NaN or infinite at iteration {runner.iter + 1} (the Hungarian "
            "matcher got non-finite costs): training diverged and was stopped") from err
    return runner


def run(args: argparse.Namespace) -> int:
    from pipelines.stages import launch
    from pipelines.stages.failures import run_stage

    if args.nproc < 1:
        raise UserError(f"--nproc must be >= 1, got {args.nproc}")
    # in a launch, rank 0 alone records a failure; the other ranks fail and torchrun stops
    record = bool(args.record_failure) and launch.is_main_process()
    return run_stage("train", _run_or_launch, args, outs=[args.done_file], record=record)


def _run_or_launch(args: argparse.Namespace) -> int:
    """Train in this process, or (``--nproc`` > 1 outside a launch) through torchrun."""
    from pipelines.stages import launch
    from pipelines.stages.failures import read_failure

    if not (args.nproc > 1 and launch.world_size() == 1):
        return _run(args)

    argv = sys.argv[1:]
    if not argv or argv[0] != "train":
        raise UserError("--nproc > 1 works from the command line (python -m pipelines "
                        "train ...) only")
    status = launch.launch(args.nproc, argv)
    record = bool(args.record_failure) and launch.is_main_process()
    if status == 0 or (record and read_failure(args.done_file or "") is not None):
        return 0  # done, or rank 0 recorded why it failed
    raise RuntimeError(f"distributed training failed (torchrun exit status {status}); "
                       "the ranks' errors are in the log above")


def _run(args: argparse.Namespace) -> int:
    import pipelines.registry  # noqa: F401  (before the config: it imports mmseg/mmdet)
    from pipelines.stages import launch

    cfg = build_train_config(args)
    launch.configure(cfg)
    work_dir = Path(cfg.work_dir)
    main = launch.is_main_process()
    started_at = _first_start(work_dir, time.time()) if main else time.time()
    start = time.perf_counter()
    runner = train(cfg)
    elapsed = time.perf_counter() - start
    stopped = int(runner.iter) < int(runner.max_iters)  # a rung (--stop-at): it continues
    # done: keep the weights (and the best), not the resume checkpoints (pipelines/stages/disk.py)
    if stopped:
        checkpoint = own_last_checkpoint(work_dir) or "" if main else ""
    else:
        checkpoint = str(finalize(runner)) if main else ""
    if args.done_file and main:
        from pipelines.config import write_json_atomic
        from pipelines.tracking import provenance

        write_json_atomic(args.done_file, {
            "config": str(Path(args.config).resolve()), "work_dir": str(work_dir),
            "checkpoint": checkpoint,
            "iters": int(runner.iter), "max_iters": int(runner.max_iters),
            "train_time_s": _total_train_time(work_dir, elapsed),
            "started_at": started_at, "ended_at": time.time(),
            "provenance": provenance.collect(), "processes": launch.world_size(),
            "batch_size": int(cfg.train_dataloader.batch_size),
            "config_sha256": _sha256(args.config), "stopped": stopped,
            **({"cfg_options": list(args.cfg_options)} if args.cfg_options else {})})
    return 0


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _state(work_dir) -> tuple:
    path = Path(work_dir) / "train_time.json"
    try:
        data = json.loads(path.read_text())
        return path, data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return path, {}


def _first_start(work_dir, now: float) -> float:
    """When training in ``work_dir`` first started (kept across resumed invocations)."""
    path, data = _state(work_dir)
    if "started_at" not in data:
        data["started_at"] = now
        path.write_text(json.dumps(data) + "\n")
    return float(data["started_at"])


def _total_train_time(work_dir, elapsed: float) -> float:
    """Seconds spent training in ``work_dir`` over every (resumed) invocation.

    Each invocation that finishes adds its wall time to ``train_time.json`` in the work dir.
    An invocation that was killed adds nothing, so a resumed run reports the time of the
    finishing invocation (plus earlier finished ones, when ``max_iters`` was raised later).
    """
    path, data = _state(work_dir)
    try:
        before = float(data.get("train_time_s", 0.0))
    except (TypeError, ValueError):
        before = 0.0
    data["train_time_s"] = before + elapsed
    path.write_text(json.dumps(data) + "\n")
    return round(before + elapsed, 3)
