"""``python -m pipelines evaluate``: mmengine's test loop on a checkpoint -> plain metrics JSON."""
from __future__ import annotations

import argparse
import json
import math
import warnings
from pathlib import Path

from pipelines.config import check_dataset, ensure_writable_dir, load_config, write_json_atomic
from pipelines.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the config's test set "
                       "(mIoU, per-class IoU, aAcc as JSON)", description=__doc__)
    p.add_argument("config", help="mmengine config file")
    p.add_argument("checkpoint", nargs="?", help="a checkpoint written by `train` (or give "
                   "--train-done)")
    p.add_argument("--train-done", metavar="JSON", help="(used by the workflow) take the "
                   "checkpoint from this `train --done-file`; a failure record there makes "
                   "--out a failure record too")
    p.add_argument("--record-failure", type=int, choices=(0, 1), default=0, metavar="0|1",
                   help="1: if evaluation fails, write --out as a failure record and exit 0 "
                   "(the workflow's last attempt; pipelines/stages/failures.py)")
    p.add_argument("--out", required=True, help="metrics JSON to write")
    p.add_argument("--work-dir", help="logs of the test run (default: next to --out)")
    p.add_argument("--data-root", help="dataset folder (overrides data_root of every dataloader)")
    p.add_argument("--cfg-options", nargs="+", metavar="KEY=VALUE", default=[])
    p.set_defaults(func=run)


def metrics_to_json(metrics: dict) -> dict:
    """mmseg's metric dict (percent) -> our schema: ``miou``, ``aacc``, ``macc``, ``per_class_iou``."""
    per_class = {k.split(".", 1)[1]: (None if v != v else float(v))
                 for k, v in metrics.items() if k.startswith("IoU.")}
    return {"miou": float(metrics["mIoU"]), "aacc": float(metrics["aAcc"]),
            "macc": float(metrics["mAcc"]), "per_class_iou": per_class, "units": "percent"}


def evaluate(cfg, checkpoint: str | Path) -> dict:
    from pipelines.stages.runner import build_runner, run_loop

    cfg.load_from = None  # loaded below, strictly: a checkpoint of another model is refused
    cfg.resume = False
    runner = build_runner(cfg)
    load_weights(runner, checkpoint)
    metrics = run_loop(runner, "test")
    return metrics_to_json(metrics)


def load_weights(runner, checkpoint: str | Path) -> None:
    """The checkpoint's weights into the runner's model, every key and shape matching (mmengine
    alone only warns about a mismatch and evaluates a half-random model); one-line
    :class:`UserError` for a file that is not a checkpoint or one of another model."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runner.load_checkpoint(str(checkpoint), map_location="cpu", strict=True)
    except Exception as err:  # noqa: BLE001 - a user's file: whatever torch.load or the
        # state-dict loader raise (UnpicklingError, KeyError, RuntimeError...) is bad input
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        mismatch = [line for line in lines if line.startswith(
            ("size mismatch", "missing keys", "unexpected key"))]
        if mismatch:
            more = f" (and {len(mismatch) - 1} more)" if len(mismatch) > 1 else ""
            raise UserError(f"checkpoint {checkpoint} does not fit this config's model: "
                            f"{mismatch[0][:300]}{more}") from None
        raise UserError(f"loading the checkpoint failed: {checkpoint}: {type(err).__name__}: "
                        f"{lines[0][:300] if lines else ''}") from None


def check_finite(result: dict) -> dict:
    """Refuse a NaN or infinite mIoU/aAcc (it would otherwise vanish silently in MLflow)."""
    bad = [k for k in ("miou", "aacc", "macc") if not math.isfinite(result[k])]
    if bad:
        raise ValueError(f"evaluation gave a non-finite {', '.join(bad)}: "
                         + ", ".join(f"{k}={result[k]}" for k in bad))
    return result


def run(args: argparse.Namespace) -> int:
    from pipelines.stages.failures import run_stage

    return run_stage("evaluate", _run, args, outs=[args.out], upstreams=[args.train_done],
                     record=bool(args.record_failure))


def _checkpoint(args: argparse.Namespace) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    if not args.train_done:
        raise UserError("give a CHECKPOINT or --train-done")

    try:
        checkpoint = json.loads(Path(args.train_done).read_text())["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"{args.train_done}: no checkpoint recorded ({err})") from None
    if not checkpoint:
        raise UserError(f"{args.train_done}: no checkpoint recorded")
    return Path(checkpoint)


def _run(args: argparse.Namespace) -> int:
    import pipelines.registry  # noqa: F401

    checkpoint = _checkpoint(args)
    if not checkpoint.is_file():
        raise UserError(f"checkpoint not found: {checkpoint}")
    cfg = load_config(args.config, args.cfg_options, args.data_root)
    out = Path(args.out)
    work_dir = Path(args.work_dir) if args.work_dir else out.with_name(out.stem + "_work_dir")
    cfg.work_dir = str(ensure_writable_dir(work_dir))
    ensure_writable_dir(out.parent, "output folder")
    check_dataset(cfg, ["test_dataloader"], images=True)
    result = check_finite(evaluate(cfg, checkpoint))
    result.update(config=str(args.config), checkpoint=str(checkpoint))
    write_json_atomic(out, result)
    print(f"mIoU {result['miou']:.2f}  aAcc {result['aacc']:.2f}  -> {out}")
    return 0
