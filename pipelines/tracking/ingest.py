"""``python -m pipelines ingest``: an ablation's results folder -> MLflow (one parent, one child per run).

Reads, per run, the files the workflow's stages wrote (``pipelines.grid.RunPaths``: per-run
outputs in the run's recipe folder ``<id>/<recipe>/``, the training in its recipe's work dir)::

    results/runs/<ablation>/<id>/<recipe>/run.json          settings (params), recipe
    results/train/<ablation>/<train-id>/work-<train recipe>/train_done.json  start/end,
      provenance, work dir; <work dir>/*/vis_data/scalars.json: training curves
    results/evaluate/<ablation>/<id>/<recipe>/metrics.json  miou, aacc, macc, per-class IoU
    results/flops/<ablation>/<id>/<recipe>/flops.json       GFLOPs per component (optional)
    results/benchmark/<ablation>/<id>/<recipe>/benchmark.json  latency (optional)
    results/logs/<ablation>/<id>/                           logs

and writes them through :mod:`pipelines.tracking.store` under the names of :mod:`pipelines.contract`.
Safe to repeat: an unchanged run is skipped, a changed one rewritten, never duplicated. Run it
from one process only (the workflow makes it a local rule).

Safe to stop: every run.json must lie where ``--results`` and ``--ablation`` put it, and its
training and evaluation outputs must be there and readable, or nothing is written (exit 2); a
store that cannot be written is refused the same way. A finished child is retired only after its
replacement is written whole, and kept when the new results are worse (a failure or lost
metrics of the same recipe, such as an evaluation whose checkpoint was deleted): ``KEPT`` lines
say so. A killed or failed ingest is repaired by the next one.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipelines import contract as c
from pipelines.errors import UserError
from pipelines.grid import RunPaths
from pipelines.tracking import children, store


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
    p.add_argument("--baseline-variant", metavar="VARIANT",
                   help="the ablation's baseline variant now (the workflow passes it): its runs "
                   "are tagged pipelines.baseline; without it, each run.json's own flag")
    p.add_argument("--out", help="summary JSON to write (MLflow ids per run)")
    p.set_defaults(func=run)


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise UserError(f"{path}: not JSON ({err})") from None
    except OSError as err:
        raise UserError(f"{path}: cannot be read ({err.strerror or err})") from None


def read_runs(results: str, ablation: str, run_jsons: list[str]) -> list[dict]:
    """Every run.json, checked before the store is opened: it lies where ``results`` and
    ``ablation`` put its run (a wrong ``--results`` or ``--ablation`` would ingest runs without
    their results), and its training and evaluation outputs (normal or failure records) exist;
    every stage output there reads as JSON. Raises one :class:`UserError` for all problems."""
    runs, problems = [], []
    for run_json in run_jsons:
        try:
            run = _read_json(Path(run_json))
            if run is None:
                raise UserError(f"run file not found: {run_json}")
            if not isinstance(run, dict) or not run.get("run_id") or "params" not in run:
                raise UserError(f"{run_json}: not a run.json (no run_id or params)")
            paths = RunPaths.of(results, ablation, run)
            if Path(run_json).resolve() != paths.run_json.resolve():
                raise UserError(
                    f"{run_json} is not run {run['run_id']} of ablation {ablation!r} under "
                    f"results folder {results!r} (that is {paths.run_json}): check --ablation "
                    f"and --results")
            for needed in (paths.train_done, paths.metrics):
                if not needed.is_file():
                    raise UserError(f"run {run['run_id']}: {needed} not found (ingest reads a "
                                    f"run once it is trained and evaluated)")
            for stage_file in (paths.train_done, paths.metrics, paths.flops, paths.benchmark):
                _read_json(stage_file)
            check_miou(paths.metrics)
            runs.append(run)
        except UserError as err:
            problems.append(str(err))
    if problems:
        more = f" (and {len(problems) - 1} more runs)" if len(problems) > 1 else ""
        raise UserError(f"{problems[0]}{more}; nothing was written")
    return runs


def check_miou(metrics_json: Path) -> None:
    """An evaluation output (not a failure record) must hold ``miou`` as a number (NaN is one: a
    diverged training, recorded as a failed run); without it the run would be recorded as
    FINISHED with no mIoU."""
    from pipelines.stages.failures import read_failure

    if read_failure(metrics_json) is not None:
        return
    data = _read_json(metrics_json)
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
    evaluation = _read_json(paths.metrics)
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
    flops = _read_json(paths.flops)
    if flops:
        for part, name in zip(c.GFLOPS_PARTS, c.GFLOPS):
            metrics[name] = _number(flops, f"gflops.{part}", name)
        for stage, value in (flops.get("encoder_stages_gflops") or {}).items():
            metrics[f"{c.GFLOPS_STAGE_PREFIX}{stage}"] = _number({"v": value}, "v")
        params = _number(flops, "params.total")
        if params is not None:
            metrics["params"] = params
    bench = _read_json(paths.benchmark)
    if bench:
        # `python -m pipelines benchmark --json`: results.candidate.{model,pixel_decoder}.median_ms
        metrics[c.LATENCY_MS] = _number(bench, "results.candidate.model.median_ms")
        metrics[c.LATENCY_MS_PIXEL_DECODER] = _number(
            bench, "results.candidate.pixel_decoder.median_ms")
        metrics.update(_setting_metrics(bench))
    done = _read_json(paths.train_done)
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


def _fingerprint(files, role: str) -> str:
    h = hashlib.sha256(role.encode() + b"\0")
    for path in files:
        h.update(str(path).encode() + b"\0")
        h.update(path.read_bytes() if path.is_file() else b"-")
    return h.hexdigest()[:16]


def _ms(seconds) -> int | None:
    return int(float(seconds) * 1000) if isinstance(seconds, (int, float)) else None


def _scalar_logs(work_dir: Path) -> list[Path]:
    return sorted(work_dir.glob("*/vis_data/scalars.json")) if work_dir.is_dir() else []


def run_fingerprint(results: str, ablation: str, run: dict) -> str:
    """The fingerprint :func:`child_record` gives a run, from its files alone (no record built):
    re-ingest compares it with the child's first and skips an unchanged run at this cost. The
    run's baseline role is part of it: the role is the ablation's (``grid.baseline``), not the
    run's recipe, so a changed baseline re-records runs whose files did not change."""
    paths = RunPaths.of(results, ablation, run)
    done = _read_json(paths.train_done) or {}
    work_dir = Path(done.get("work_dir", "") or "/nonexistent")
    return _fingerprint([paths.run_json, paths.config, paths.train_done, paths.metrics,
                         paths.flops, paths.benchmark] + _scalar_logs(work_dir),
                        role=f"baseline={bool(run.get('baseline'))}")


def child_record(results: str, ablation: str, run: dict, tmp: Path,
                 fingerprint: str | None = None):
    """One run's files -> the :class:`pipelines.tracking.children.ChildRecord` ingest writes
    (``fingerprint``: its :func:`run_fingerprint`, when the caller has it already)."""
    from pipelines.tracking.children import ChildRecord, json_tag, provenance_tags

    paths = RunPaths.of(results, ablation, run)
    stage_files = [paths.run_json, paths.train_done, paths.metrics, paths.flops, paths.benchmark]
    done = _read_json(paths.train_done) or {}
    work_dir = Path(done.get("work_dir", "") or "/nonexistent")
    start_ms, end_ms = _ms(done.get("started_at")), _ms(done.get("ended_at"))
    artifacts: list[tuple] = [(p, "metrics") for p in stage_files if p.is_file()]
    if paths.config.is_file():  # the rendered config the run's stages read, byte for byte,
        artifacts.append((paths.config, "", c.CONFIG_ARTIFACT))  # under the artifact's name
    evaluation = _read_json(paths.metrics) or {}
    if evaluation.get("exit_histogram"):
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / c.EXIT_HISTOGRAM_ARTIFACT).write_text(json.dumps(evaluation["exit_histogram"]))
        artifacts.append((tmp / c.EXIT_HISTOGRAM_ARTIFACT, ""))
    if paths.logs.is_dir():
        artifacts.append((paths.logs, "logs"))
    settings = run.get("settings") or {}
    tags = {c.AXES_TAG: json_tag(list(settings)),
            c.METHODS_TAG: ",".join(run.get("methods") or []),
            c.BASELINE_TAG: "true" if run.get("baseline") else "false",
            **provenance_tags(done.get("provenance"))}
    record = ChildRecord(
        run_id=run["run_id"], recipe=run.get("recipe", ""), params=run["params"],
        metrics=collect_metrics(paths),
        curves=read_curves(work_dir, start_ms),
        tags=tags, start_ms=start_ms, end_ms=end_ms, artifacts=artifacts,
        # the one fingerprint definition, so a re-ingest's shortcut and the record agree
        fingerprint=fingerprint or run_fingerprint(results, ablation, run))
    return mark_failure(record, run_failure(paths, record.metrics))


# ----------------------------------------------------------------------------- failures
def run_failure(paths: RunPaths, metrics: dict[str, float]) -> str | None:
    """Why a run failed: a stage's failure record (pipelines/stages/failures.py) or a NaN mIoU."""
    from pipelines.stages.failures import read_failure

    for stage_file in (paths.train_done, paths.metrics, paths.flops, paths.benchmark):
        failure = read_failure(stage_file)
        if failure is not None:
            return f"{failure.get('stage', '?')}: {failure.get('reason', 'failed')}"
    miou = metrics.get(c.MIOU)
    if miou is not None and not math.isfinite(miou):
        return f"evaluate: mIoU is {miou}"
    return None


def mark_failure(record, reason: str | None):
    """A failed run's child: status FAILED, the reason under the contract's failure tag."""
    if reason is not None:
        record.status = "FAILED"
        record.tags = {**record.tags, c.FAILURE_TAG: reason}
    return record


def ingest(ablation: str, results: str, run_jsons: list[str], tracking_uri: str,
           artifact_location: str | None, description: str = "", progress: bool = True,
           role: str = c.ROLE_RUN, baseline_variant: str | None = None) -> dict[str, Any]:
    """Record the runs of ``run_jsons``. ``baseline_variant`` (the workflow passes the
    ablation's current one) decides each run's baseline role; a run.json's own flag was written
    with the run and can be older than a changed ``grid.baseline``."""
    from tqdm import tqdm


    runs = read_runs(results, ablation, run_jsons)  # bad input: refused before the store opens
    if baseline_variant is not None:
        variants = sorted({str(run.get("variant")) for run in runs})
        if baseline_variant not in variants:
            raise UserError(f"--baseline-variant {baseline_variant!r} is no variant of these "
                            f"runs ({', '.join(variants)})")
        runs = [{**run, "baseline": run.get("variant") == baseline_variant} for run in runs]
    with store.removed_if_new_and_failed(tracking_uri):  # a refusal leaves no empty store
        client = store.open_writer(tracking_uri)
        with store.store_errors(tracking_uri, "; the store keeps the records it held (a "
                                   "re-ingest repairs what this one left)"):
            return _ingest(client, ablation, results, runs, artifact_location, description,
                           progress, role, tqdm)


def _ingest(client, ablation, results, runs, artifact_location, description, progress, role,
            tqdm) -> dict[str, Any]:
    from pipelines.tracking import mlflow_ui

    experiment_id = store.get_or_create_experiment(client, ablation, artifact_location)
    parent = store.get_or_create_parent(client, experiment_id, ablation, description)
    # the runs-table view `python -m pipelines ui` links to (its columns: these runs' axes)
    mlflow_ui.share_view(client, experiment_id,
                         [axis for run in runs for axis in run.get("settings", {})])
    pending = children.drop_pending(client, experiment_id)
    existing = store.children_by_run_id(client, experiment_id)
    summary: dict[str, Any] = {"ablation": ablation, "experiment_id": experiment_id,
                               "parent_run_id": parent, "runs": {}}
    if pending:
        summary["pending_deleted"] = pending
    counts: dict[str, int] = {}

    def write(batch: list) -> None:
        """The records of ``batch`` into the store, their new children written together
        (children.upsert_children: a SQL store takes a chunk per transaction)."""
        done = children.upsert_children(client, experiment_id, parent, ablation,
                                        [(record, existing.get(record.run_id, []))
                                         for record in batch])
        for record, (mlflow_id, action) in zip(batch, done):
            summary["runs"][record.run_id] = {"mlflow_run_id": mlflow_id, "action": action,
                                              "recipe": record.recipe}
            if action == "kept":
                summary.setdefault("kept", {})[record.run_id] = record.kept_because
            elif record.status == "FAILED":
                summary.setdefault("failed", {})[record.run_id] = record.tags[c.FAILURE_TAG]
            counts[action] = counts.get(action, 0) + 1

    batch: list = []
    # the records of a chunk are written together; their staged files (the resolved config, an
    # exit histogram) live until then
    with tempfile.TemporaryDirectory() as staging:
        # no bar when stderr is not a terminal (a log file; an error then is the one line there)
        for i, run in enumerate(tqdm(runs, desc="ingest", unit="run",
                                     disable=None if progress else True)):
            fingerprint = run_fingerprint(results, ablation, run)
            old = children.unchanged_child(existing.get(run["run_id"], []),
                                           run.get("recipe", ""), fingerprint)
            if old is not None:  # nothing to read further, nothing to write
                summary["runs"][run["run_id"]] = {"mlflow_run_id": old.info.run_id,
                                                  "action": "unchanged",
                                                  "recipe": run.get("recipe", "")}
                if old.info.status == "FAILED":
                    summary.setdefault("failed", {})[run["run_id"]] = \
                        old.data.tags.get(c.FAILURE_TAG, "")
                counts["unchanged"] = counts.get("unchanged", 0) + 1
                continue
            tmp = Path(staging) / str(i)  # made when the run has a file to stage
            record = child_record(results, ablation, run, tmp, fingerprint)
            record.role = role
            batch.append(record)
            if len(batch) == children.SQL_CHUNK:
                write(batch)
                batch = []
                shutil.rmtree(staging, ignore_errors=True)
                Path(staging).mkdir(exist_ok=True)
        write(batch)
    summary["actions"] = counts
    return summary


def run(args: argparse.Namespace) -> int:
    from pipelines.config import write_json_atomic

    summary = ingest(args.ablation, args.results, args.runs, args.tracking_uri,
                     args.artifact_location, args.description,
                     baseline_variant=args.baseline_variant)
    summary["tracking_uri"] = args.tracking_uri
    if args.out:
        write_json_atomic(args.out, summary)
    actions = ", ".join(f"{n} {a}" for a, n in sorted(summary["actions"].items()))
    print(f"{len(summary['runs'])} runs of {args.ablation!r} in {args.tracking_uri} "
          f"({actions}; experiment {summary['experiment_id']}, parent run "
          f"{summary['parent_run_id']})")
    if summary.get("pending_deleted"):
        print(f"deleted {summary['pending_deleted']} incomplete child run(s) an interrupted "
              f"ingest left")
    for run_id, reason in sorted(summary.get("failed", {}).items()):
        print(f"FAILED {run_id}: {reason}")
    for run_id, why in sorted(summary.get("kept", {}).items()):
        mlflow_id = summary["runs"][run_id]["mlflow_run_id"]
        print(f"KEPT {run_id}: {why}; its finished MLflow run {mlflow_id} stays (restore the "
              f"input and rerun the stage, or delete that MLflow run to record the new result)")
    return 0
