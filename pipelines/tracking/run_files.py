"""The numbers and curves of one run, read from the files its stages wrote, for ingest.

``metrics.json`` (evaluation: mIoU, aAcc, mAcc, per-class IoU; checked by :func:`check_miou`),
``flops.json`` (GFLOPs per component), ``benchmark.json`` (latency, and on a GPU every
precision and batch setting) and the training's ``scalars.json`` (every logged loss term, lr and
validation metric: :func:`read_curves`) -> the final metrics and the curves of its MLflow child.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines import contract as c
from pipelines.errors import UserError
from pipelines.grid import RunPaths


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file's content; None when the file is missing; unreadable or not JSON: one line."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path}: not JSON ({err})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror or err})") from None


def check_miou(metrics_json: Path) -> None:
    """An evaluation output (not a failure record) must hold ``miou`` as a number (NaN is one: a
    diverged training, recorded as a failed run); without it the run would be recorded as
    FINISHED with no mIoU."""
    from pipelines.stages.failures import read_failure

    if read_failure(metrics_json) is not None:
        return
    data = read_json(metrics_json)
    miou = data.get(c.MIOU) if isinstance(data, dict) else None
    if not isinstance(miou, (int, float)) or isinstance(miou, bool):
        what = "has no" if not isinstance(data, dict) or c.MIOU not in data else \
            f"has a {c.MIOU} that is no number ({json.dumps(miou)[:40]}), no"
        raise UserError(f"{metrics_json}: {what} mIoU (the evaluate stage writes "
                        f"{{\"{c.MIOU}\": <percent>, ...}}; rerun it)")


def _number(data: dict | None, *keys: str) -> float | None:
    """First numeric value under one of ``keys`` (``a.b`` walks nested dicts)."""
    for key in keys:
        node: Any = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            return float(node)
    return None


def collect_metrics(paths: RunPaths) -> dict[str, float]:
    """The contract's metric names from one run's stage outputs (absent stages -> missing)."""
    metrics: dict[str, float | None] = {}
    evaluation = read_json(paths.metrics)
    if evaluation:
        for key in (c.MIOU, c.AACC, c.MACC, c.MEAN_EXIT):
            metrics[key] = _number(evaluation, key)
        for cls, iou in (evaluation.get("per_class_iou") or {}).items():
            metrics[f"{c.IOU_PREFIX}{cls}"] = iou
        # ECO-M2F (evaluate-gated): every fixed exit and the oracle gate beside the gated run
        for row in evaluation.get("ladder") or []:
            for key in (c.MIOU, c.AACC, c.MACC, *c.GFLOPS):
                metrics[c.LADDER_METRIC.format(exit=row.get("exit"), metric=key)] = \
                    _number(row, key)
        for key in (c.MIOU, c.AACC, c.MACC, *c.GFLOPS, c.MEAN_EXIT):
            metrics[c.ORACLE_METRIC.format(metric=key)] = _number(evaluation, f"oracle.{key}")
    flops = read_json(paths.flops)
    if flops:
        for part, name in zip(c.GFLOPS_PARTS, c.GFLOPS):
            metrics[name] = _number(flops, f"gflops.{part}", name)
        for stage, value in (flops.get("encoder_stages_gflops") or {}).items():
            metrics[f"{c.GFLOPS_STAGE_PREFIX}{stage}"] = _number({"v": value}, "v")
        params = _number(flops, "params.total")
        if params is not None:
            metrics["params"] = params
    bench = read_json(paths.benchmark)
    if bench:
        # `python -m pipelines benchmark --json`: results.candidate.{model,pixel_decoder}.median_ms
        metrics[c.LATENCY_MS] = _number(bench, "results.candidate.model.median_ms")
        metrics[c.LATENCY_MS_PIXEL_DECODER] = _number(
            bench, "results.candidate.pixel_decoder.median_ms")
        metrics.update(_setting_metrics(bench))
    done = read_json(paths.train_done)
    if done:
        metrics[c.TRAIN_TIME_S] = _number(done, c.TRAIN_TIME_S)
    return {k: v for k, v in metrics.items() if v is not None}


def _setting_metrics(bench: dict) -> dict:
    """The benchmark's per-setting figures (batch, precision; ``--device cuda``) under
    :data:`pipelines.contract.SETTING_METRIC` names, ratios to the paired baseline included."""
    out = {}
    device = bench.get("device", "cpu")
    settings = ((bench.get("results") or {}).get("candidate") or {}).get("settings") or {}
    ratios = bench.get("settings_ratios") or {}
    for key, entry in settings.items():
        if not isinstance(entry, dict):
            continue
        values = {"latency_ms": _number(entry, "model.median_ms"),
                  "latency_ms_pixel_decoder": _number(entry, "pixel_decoder.median_ms"),
                  "images_per_s": _number(entry, "images_per_s"),
                  "peak_mem_mb": _number(entry, "peak_mem_mb"),
                  "latency_ratio": _number(ratios, f"{key}.model"),
                  "latency_ratio_pixel_decoder": _number(ratios, f"{key}.pixel_decoder")}
        out.update({c.SETTING_METRIC.format(device=device, precision=entry.get("precision"),
                                            batch=entry.get("batch"), metric=m): v
                    for m, v in values.items() if v is not None})
    return out


# mmengine's scalar-log keys that are bookkeeping, not curves
SCALAR_SKIP = ("iter", "step", "epoch", "memory", "data_time")


def read_curves(work_dir: Path, start_ms: int | None = None) -> dict[str, list]:
    """Training curves from mmengine's ``<work_dir>/<timestamp>/vis_data/scalars.json``.

    Every invocation (a resumed training has several timestamped folders) is read in order; a
    step logged twice (a killed invocation's steps redone after resuming) keeps its last value.
    Lines with ``lr`` are training iterations (``train/<key>``), the others validation
    (``val/<key>``). Timestamps accumulate mmengine's per-iteration ``time`` from ``start_ms``.

    Returns:
        ``name -> [(step, value, timestamp_ms)]`` sorted by step.
    """
    by_name: dict[str, dict[int, float]] = {}
    seconds: dict[int, float] = {}
    for log in sorted(Path(work_dir).glob("*/vis_data/scalars.json")):
        for line in log.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            step = row.get("step", row.get("iter"))
            if not isinstance(row, dict) or not isinstance(step, int):
                continue
            prefix = "train/" if "lr" in row else "val/"
            if prefix == "train/" and isinstance(row.get("time"), (int, float)):
                seconds[step] = float(row["time"])
            for key, value in row.items():
                if key in SCALAR_SKIP or isinstance(value, bool) \
                        or not isinstance(value, (int, float)):
                    continue
                by_name.setdefault(prefix + key, {})[step] = float(value)
    stamps: dict[int, int] = {}
    if start_ms is not None:
        clock, last = float(start_ms), 0
        for step in sorted(seconds):
            clock += seconds[step] * 1000 * (step - last)
            stamps[step], last = int(clock), step
    out = {}
    for name, points in by_name.items():
        out[name] = [(step, value, stamps.get(step, start_ms or 0))
                     for step, value in sorted(points.items())]
    return out
