"""``python -m pipelines evaluate``: mmengine's test loop on a checkpoint -> plain metrics JSON."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.config import check_dataset, ensure_writable_dir, load_config, write_json_atomic
from pipelines.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the config's test set "
                       "(mIoU, per-class IoU, aAcc as JSON)", description=__doc__)
    p.add_argument("config", help="mmengine config file")
    p.add_argument("checkpoint", help="a checkpoint written by `train`")
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
    from pipelines.runner import build_runner, run_loop

    cfg.load_from = str(checkpoint)
    cfg.resume = False
    runner = build_runner(cfg)
    metrics = run_loop(runner, "test")
    return metrics_to_json(metrics)


def run(args: argparse.Namespace) -> int:
    import pipelines.registry  # noqa: F401

    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise UserError(f"checkpoint not found: {checkpoint}")
    cfg = load_config(args.config, args.cfg_options, args.data_root)
    out = Path(args.out)
    work_dir = Path(args.work_dir) if args.work_dir else out.with_name(out.stem + "_work_dir")
    cfg.work_dir = str(ensure_writable_dir(work_dir))
    ensure_writable_dir(out.parent, "output folder")
    check_dataset(cfg, ["test_dataloader"])
    result = evaluate(cfg, checkpoint)
    result.update(config=str(args.config), checkpoint=str(checkpoint))
    write_json_atomic(out, result)
    print(f"mIoU {result['miou']:.2f}  aAcc {result['aacc']:.2f}  -> {out}")
    return 0
