"""``python -m pipelines ingest``: an ablation's results -> MLflow (one parent, one child per run).

Reads, per run, the files the workflow's stages wrote (``pipelines.grid.RunPaths``: per-run
outputs in the run's recipe folder ``<id>/<recipe>/``, the training in its recipe's work dir)::

    results/runs/<ablation>/<id>/<recipe>/run.json          settings (params), recipe
    results/train/<ablation>/<train-id>/work-<train recipe>/train_done.json  start/end,
      provenance, work dir; <work dir>/*/vis_data/scalars.json: training curves
    results/evaluate/<ablation>/<id>/<recipe>/metrics.json  miou, aacc, macc, per-class IoU
    results/flops/<ablation>/<id>/<recipe>/flops.json       GFLOPs per component (optional)
    results/benchmark/<ablation>/<id>/<recipe>/benchmark.json  latency (optional)
    results/logs/<ablation>/<id>/                           logs

(:mod:`pipelines.tracking.run_files` reads the numbers and curves) and writes them through
:mod:`pipelines.tracking.children` under the names of :mod:`pipelines.contract`.
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
from pipelines.tracking.run_files import check_miou, collect_metrics, read_curves, read_json


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


def read_runs(results: str, ablation: str, run_jsons: list[str]) -> list[dict]:
    """Every run.json, checked before the store is opened: it lies where ``results`` and
    ``ablation`` put its run (a wrong ``--results`` or ``--ablation`` would ingest runs without
    their results), and its training and evaluation outputs (normal or failure records) exist;
    every stage output there reads as JSON. Raises one :class:`UserError` for all problems."""
    runs, problems = [], []
    for run_json in run_jsons:
        try:
            run = read_json(Path(run_json))
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
                read_json(stage_file)
            check_miou(paths.metrics)
            runs.append(run)
        except UserError as err:
            problems.append(str(err))
    if problems:
        more = f" (and {len(problems) - 1} more runs)" if len(problems) > 1 else ""
        raise UserError(f"{problems[0]}{more}; nothing was written")
    return runs


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
    done = read_json(paths.train_done) or {}
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
    done = read_json(paths.train_done) or {}
    work_dir = Path(done.get("work_dir", "") or "/nonexistent")
    start_ms, end_ms = _ms(done.get("started_at")), _ms(done.get("ended_at"))
    artifacts: list[tuple] = [(p, "metrics") for p in stage_files if p.is_file()]
    if paths.config.is_file():  # the rendered config the run's stages read, byte for byte,
        artifacts.append((paths.config, "", c.CONFIG_ARTIFACT))  # under the artifact's name
    evaluation = read_json(paths.metrics) or {}
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
