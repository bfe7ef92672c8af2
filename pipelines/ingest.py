"""``python -m pipelines ingest``: an ablation's results folder -> MLflow (one parent, one child per run).

Reads, per run, the files the workflow's stages wrote (``pipelines.grid.RunPaths``)::

    results/runs/<ablation>/<id>/run.json          settings (params)
    results/train/<ablation>/<id>/train_done.json  training time, work dir (resolved config)
    results/evaluate/<ablation>/<id>/metrics.json  miou, aacc, macc, per-class IoU
    results/flops/<ablation>/<id>/flops.json       GFLOPs per component (optional)
    results/benchmark/<ablation>/<id>/benchmark.json  latency (optional)
    results/logs/<ablation>/<id>/                  logs

and writes them through :mod:`pipelines.tracking`. Safe to repeat: runs are updated, never
duplicated. Run it from one process only (the workflow makes it a local rule).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipelines.errors import UserError
from pipelines.grid import RunPaths

FLOPS_KEYS = ("backbone", "encoder", "pixel_decoder", "transformer_decoder", "total")


def add_parser(sub) -> None:
    p = sub.add_parser("ingest", help="record an ablation's results as MLflow runs (one parent, "
                       "a child per run; re-ingesting updates)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ablation", required=True, help="ablation name (the MLflow experiment)")
    p.add_argument("--results", default="results", help="results folder (default results)")
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN_JSON",
                   help="run.json of every run to ingest")
    p.add_argument("--tracking-uri", default="sqlite:///results/mlflow.db",
                   help="sqlite:///FILE (default sqlite:///results/mlflow.db), "
                   "postgresql://USER@HOST:PORT/DB or http://HOST:PORT")
    p.add_argument("--artifact-location", default="results/mlartifacts",
                   help="artifact root of a new experiment (default results/mlartifacts)")
    p.add_argument("--description", default="", help="note on the parent run")
    p.add_argument("--out", help="summary JSON to write (MLflow ids per run)")
    p.set_defaults(func=run)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path}: not JSON ({err})") from None


def _number(data: dict | None, *keys: str) -> float | None:
    """First numeric value under one of ``keys`` (``a.b`` walks nested dicts)."""
    for key in keys:
        node: Any = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, (int, float)) and not isinstance(node, bool):
            return float(node)
    return None


def collect_metrics(paths: RunPaths) -> dict[str, float | None]:
    """The contract's metric names from one run's stage outputs (absent stages -> missing)."""
    metrics: dict[str, float | None] = {}
    evaluation = _read_json(paths.metrics)
    if evaluation:
        for key in ("miou", "aacc", "macc"):
            metrics[key] = _number(evaluation, key)
        for cls, iou in (evaluation.get("per_class_iou") or {}).items():
            metrics[f"iou.{cls}"] = iou
    flops = _read_json(paths.flops)
    if flops:
        for key in FLOPS_KEYS:
            metrics[f"gflops_{key}"] = _number(flops, key, f"gflops.{key}", f"gflops_{key}")
        for stage, value in (flops.get("encoder_stages_gflops") or {}).items():
            metrics[f"gflops_encoder_{stage}"] = _number({"v": value}, "v")
        params = _number(flops, "params", "params.total")
        if params is not None:
            metrics["params"] = params
    bench = _read_json(paths.benchmark)
    if bench:
        # `python -m pipelines benchmark --json`: results.candidate.{model,pixel_decoder}.median_ms
        metrics["latency_ms"] = _number(bench, "results.candidate.model.median_ms",
                                        "latency_ms", "model.median_ms")
        metrics["latency_ms_pixel_decoder"] = _number(
            bench, "results.candidate.pixel_decoder.median_ms", "latency_ms_pixel_decoder",
            "pixel_decoder.median_ms")
    done = _read_json(paths.train_done)
    if done:
        metrics["train_time_s"] = _number(done, "train_time_s")
    return {k: v for k, v in metrics.items() if v is not None}


def _resolved_config(work_dir: Path) -> Path | None:
    """The config mmengine dumped into the work dir (every --cfg-options applied)."""
    if not work_dir.is_dir():
        return None
    dumped = sorted(work_dir.glob("*.py"), key=lambda p: p.stat().st_mtime)
    return dumped[-1] if dumped else None


def ingest(ablation: str, results: str, run_jsons: list[str], tracking_uri: str,
           artifact_location: str | None, description: str = "") -> dict[str, Any]:
    from pipelines import tracking

    client = tracking.open_client(tracking_uri)
    experiment_id = tracking.get_or_create_experiment(client, ablation, artifact_location)
    parent = tracking.get_or_create_parent(client, experiment_id, ablation, description)
    summary: dict[str, Any] = {"ablation": ablation, "experiment_id": experiment_id,
                               "parent_run_id": parent, "runs": {}}
    for run_json in run_jsons:
        run = _read_json(Path(run_json))
        if run is None:
            raise UserError(f"run file not found: {run_json}")
        paths = RunPaths(results, ablation, run["run_id"])
        with tempfile.TemporaryDirectory() as tmp:
            artifacts = [(p, "metrics") for p in (paths.run_json, paths.train_done,
                                                   paths.metrics, paths.flops, paths.benchmark)
                         if p.is_file()]
            done = _read_json(paths.train_done) or {}
            config = _resolved_config(Path(done.get("work_dir", "")))
            if config is not None:
                shutil.copy(config, Path(tmp) / "config.py")
                artifacts.append((Path(tmp) / "config.py", ""))
            if paths.logs.is_dir():
                artifacts.append((paths.logs, "logs"))
            mlflow_id, action = tracking.upsert_child(
                client, experiment_id, parent, ablation, run["run_id"], run["params"],
                collect_metrics(paths), artifacts)
        summary["runs"][run["run_id"]] = {"mlflow_run_id": mlflow_id, "action": action}
        print(f"{action:8s} {run['run_id']}  ({mlflow_id})")
    return summary


def run(args: argparse.Namespace) -> int:
    from pipelines.config import write_json_atomic

    summary = ingest(args.ablation, args.results, args.runs, args.tracking_uri,
                     args.artifact_location, args.description)
    summary["tracking_uri"] = args.tracking_uri
    if args.out:
        write_json_atomic(args.out, summary)
    print(f"{len(summary['runs'])} runs of {args.ablation!r} in {args.tracking_uri} "
          f"(experiment {summary['experiment_id']}, parent run {summary['parent_run_id']})")
    return 0
