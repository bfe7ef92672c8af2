"""``python -m pipelines train``: mmengine's Runner on a config, resuming automatically."""
from __future__ import annotations

import argparse

from pipelines.config import check_dataset, ensure_writable_dir, load_config


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
    p.set_defaults(func=run)


def build_train_config(args: argparse.Namespace):
    cfg = load_config(args.config, args.cfg_options, args.data_root)
    cfg.work_dir = str(ensure_writable_dir(args.work_dir))
    cfg.resume = True  # mmengine finds `last_checkpoint` in work_dir itself; none -> from scratch
    cfg.load_from = cfg.get("load_from")
    if not args.no_progress:
        hooks = list(cfg.get("custom_hooks", []) or [])
        if not any(h.get("type") == "ProgressBarHook" for h in hooks):
            hooks.append(dict(type="ProgressBarHook"))
        cfg.custom_hooks = hooks
    loaders = ["train_dataloader"]
    if cfg.get("val_cfg") and cfg.get("val_dataloader"):
        loaders.append("val_dataloader")
    check_dataset(cfg, loaders)
    return cfg


def train(cfg):
    """Run training; returns the runner (its ``iter`` and ``work_dir`` tell what happened)."""
    import pipelines.hooks  # noqa: F401
    from pipelines.runner import build_runner, run_loop

    runner = build_runner(cfg)
    run_loop(runner, "train")
    return runner


def run(args: argparse.Namespace) -> int:
    import pipelines.registry  # noqa: F401  (before the config: it imports mmseg/mmdet)

    import time
    from pathlib import Path

    cfg = build_train_config(args)
    work_dir = Path(cfg.work_dir)
    started_at = _first_start(work_dir, time.time())
    start = time.perf_counter()
    runner = train(cfg)
    elapsed = time.perf_counter() - start
    if args.done_file:
        from pipelines import provenance
        from pipelines.config import write_json_atomic

        last = work_dir / "last_checkpoint"
        checkpoint = last.read_text().strip() if last.is_file() else ""
        write_json_atomic(args.done_file, {
            "config": str(args.config), "work_dir": str(work_dir), "checkpoint": checkpoint,
            "iters": int(runner.iter), "max_iters": int(runner.max_iters),
            "train_time_s": _total_train_time(work_dir, elapsed),
            "started_at": started_at, "ended_at": time.time(),
            "provenance": provenance.collect(),
            "cfg_options": list(args.cfg_options)})
    return 0


def _state(work_dir) -> tuple:
    import json
    from pathlib import Path

    path = Path(work_dir) / "train_time.json"
    try:
        data = json.loads(path.read_text())
        return path, data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return path, {}


def _first_start(work_dir, now: float) -> float:
    """When training in ``work_dir`` first started (kept across resumed invocations)."""
    import json

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
    import json

    path, data = _state(work_dir)
    try:
        before = float(data.get("train_time_s", 0.0))
    except (TypeError, ValueError):
        before = 0.0
    data["train_time_s"] = before + elapsed
    path.write_text(json.dumps(data) + "\n")
    return round(before + elapsed, 3)
