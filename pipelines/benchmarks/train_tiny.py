"""Benchmark: the tiny Mask2Former trains 300 iterations on 2 CPU cores and beats a
majority-class predictor by a wide margin.

    python -m pipelines.benchmarks.train_tiny [--iters 300] [--out results/bench/train_tiny]

Prints the wall time of training, the median seconds per iteration (mmengine's own
``train/time`` records), the validation mIoU of the trained model (a real evaluation through
mmseg's IoU metric) and the mIoU of predicting the majority class everywhere, computed by the
same metric code on the same validation images.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "models" / "mask2former_r18_synthetic-128x128.py"


def majority_miou(data_root: Path, num_classes: int) -> float:
    """mIoU (percent) of predicting the most frequent training class on every pixel."""
    import torch
    from mmseg.evaluation import IoUMetric
    from PIL import Image

    counts = np.zeros(num_classes, dtype=np.int64)
    for png in sorted((data_root / "annotations" / "training").glob("*.png")):
        counts += np.bincount(np.asarray(Image.open(png)).ravel(), minlength=num_classes)
    majority = int(counts.argmax())
    totals = [0, 0, 0, 0]
    for png in sorted((data_root / "annotations" / "validation").glob("*.png")):
        label = torch.from_numpy(np.asarray(Image.open(png)).astype(np.int64))
        pred = torch.full_like(label, majority)
        for i, area in enumerate(IoUMetric.intersect_and_union(pred, label, num_classes, 255)):
            totals[i] = totals[i] + area
    metrics = IoUMetric.total_area_to_metrics(*totals, ["mIoU"])
    return float(np.nanmean(np.asarray(metrics["IoU"])) * 100)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--val-images", type=int, default=50)
    parser.add_argument("--out", default=str(REPO / "results" / "bench" / "train_tiny"))
    args = parser.parse_args(argv)

    import torch

    import pipelines.registry  # noqa: F401
    from pipelines.config import load_config
    from pipelines.data.synthetic import CLASSES, SyntheticSpec, write_dataset
    from pipelines.stages.evaluate import evaluate
    from pipelines.stages.train import train

    out = Path(args.out)
    data_root = out / "data"
    write_dataset(data_root, SyntheticSpec(train=args.train_images, val=args.val_images,
                                           size=128, seed=0), progress=False)
    work = out / "work"
    if work.exists():
        shutil.rmtree(work)
    cfg = load_config(TINY_CONFIG, [f"train_cfg.max_iters={args.iters}",
                                    f"train_cfg.val_interval={args.iters}"], str(data_root))
    cfg.work_dir = str(work)
    cfg.resume = False
    t0 = time.perf_counter()
    runner = train(cfg)
    train_wall = time.perf_counter() - t0
    iter_times = list(runner.message_hub.get_scalar("train/time").data[0])
    ckpt = work / f"iter_{args.iters}.pth"
    cfg = load_config(TINY_CONFIG, [], str(data_root))
    cfg.work_dir = str(out / "eval")
    metrics = evaluate(cfg, ckpt)
    base = majority_miou(data_root, len(CLASSES))
    report = {
        "iters": args.iters, "batch_size": 2, "threads": torch.get_num_threads(),
        "train_wall_s": round(train_wall, 1),
        "median_s_per_iter": round(statistics.median(iter_times), 3),
        "val_miou": metrics["miou"], "majority_class_miou": round(base, 2),
        "per_class_iou": metrics["per_class_iou"],
    }
    (out / "train_tiny.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n== tiny Mask2Former (R18, 128x128, batch 2) on the synthetic set ==")
    print(f"iterations                 {args.iters}")
    print(f"train wall time            {train_wall:8.1f} s  (includes the final validation)")
    print(f"median time per iteration  {report['median_s_per_iter']:8.3f} s")
    print(f"validation mIoU            {metrics['miou']:8.2f} %")
    print(f"majority-class mIoU        {base:8.2f} %")
    print(f"ratio                      {metrics['miou'] / base:8.2f} x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
