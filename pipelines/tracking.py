"""MLflow tracking of ablations through ``MlflowClient`` (one writer: the workflow's ingest rule).

Naming contract (the analysis code reads exactly these names):

* experiment = the ablation name (``demo``);
* one parent run per ablation, named after it, tag ``pipelines.role=parent``;
* one child run per grid run, named by its run id, tags ``pipelines.role=run``,
  ``pipelines.run_id=<id>``, ``pipelines.ablation=<name>``, ``mlflow.parentRunId=<parent>``;
* params :data:`PARAM_NAMES`; metrics :data:`METRIC_NAMES` plus ``iou.<class>``;
* artifacts ``metrics/*.json``, ``config.py``, ``logs/``.

Re-ingesting finds the existing child by its ``pipelines.run_id`` tag and updates it (never a
duplicate). MLflow params are immutable, so a child whose params changed (a new model config or
``max_iters`` under the same id) is deleted and written again.

mmengine's ``MLflowVisBackend`` is not used: it breaks with MLflow >= 3.13 defaults.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipelines.errors import UserError

ROLE_TAG = "pipelines.role"
RUN_ID_TAG = "pipelines.run_id"
ABLATION_TAG = "pipelines.ablation"
PARENT_TAG = "mlflow.parentRunId"
PARAM_NAMES = ("variant", "schedule", "trc", "lpe", "cluster_fraction", "beta", "seed", "config",
               "max_iters")
METRIC_NAMES = ("miou", "aacc", "macc", "gflops_backbone", "gflops_encoder",
                "gflops_pixel_decoder", "gflops_transformer_decoder", "gflops_total",
                "latency_ms", "latency_ms_pixel_decoder", "train_time_s")
DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///FILE`` absolute and create its folder."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_absolute():
            path = Path.cwd() / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    if not uri or "://" not in uri:
        raise UserError(f"tracking URI {uri!r}: expected sqlite:///FILE, postgresql://..., "
                        f"or http(s)://HOST:PORT")
    return uri


def resolve_artifact_location(location: str | None) -> str | None:
    """A folder -> ``file://`` URI (absolute); a URI stays; empty -> the server's default."""
    if not location:
        return None
    if "://" in location:
        return location
    path = Path(location)
    if not path.is_absolute():
        path = Path.cwd() / path
    path.mkdir(parents=True, exist_ok=True)
    return path.as_uri()


def open_client(tracking_uri: str = DEFAULT_TRACKING_URI):
    import logging

    from mlflow.tracking import MlflowClient

    # alembic announces every migration of a fresh store on INFO
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


def get_or_create_experiment(client, name: str, artifact_location: str | None = None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    if artifact_location and "://" not in artifact_location:
        artifact_location = str(Path(artifact_location) / name)  # one folder per ablation
    return client.create_experiment(name, artifact_location=resolve_artifact_location(
        artifact_location))


def _find_runs(client, experiment_id: str, filter_string: str) -> list:
    return list(client.search_runs([experiment_id], filter_string=filter_string,
                                   max_results=1000))


def get_or_create_parent(client, experiment_id: str, ablation: str,
                         description: str = "") -> str:
    """The ablation's parent run (created once; found again by its role tag)."""
    found = _find_runs(client, experiment_id, f"tags.`{ROLE_TAG}` = 'parent'")
    if found:
        parent = found[0].info.run_id
    else:
        run = client.create_run(experiment_id, run_name=ablation,
                                tags={ROLE_TAG: "parent", ABLATION_TAG: ablation})
        parent = run.info.run_id
        client.set_terminated(parent)
    if description:
        client.set_tag(parent, "mlflow.note.content", description)
    return parent


def find_child(client, experiment_id: str, run_id: str):
    found = _find_runs(client, experiment_id,
                       f"tags.`{ROLE_TAG}` = 'run' and tags.`{RUN_ID_TAG}` = '{run_id}'")
    return found[0] if found else None


def upsert_child(client, experiment_id: str, parent_id: str, ablation: str, run_id: str,
                 params: Mapping[str, str], metrics: Mapping[str, float],
                 artifacts: Iterable[tuple[Path, str]] = ()) -> tuple[str, str]:
    """Create or update the child run of ``run_id``; returns ``(mlflow run id, action)``.

    Args:
        params: strings under :data:`PARAM_NAMES`.
        metrics: finite numbers (others are skipped).
        artifacts: ``(local file or folder, artifact sub-path)`` pairs.
    """
    from mlflow.entities import Metric, Param, RunTag

    params = {k: str(v) for k, v in params.items()}
    existing = find_child(client, experiment_id, run_id)
    action = "updated"
    if existing is not None and existing.data.params != params:
        client.delete_run(existing.info.run_id)  # params are immutable: write it again
        existing, action = None, "replaced"
    tags = {ROLE_TAG: "run", RUN_ID_TAG: run_id, ABLATION_TAG: ablation, PARENT_TAG: parent_id}
    if existing is None:
        run = client.create_run(experiment_id, run_name=run_id, tags=tags)
        mlflow_id = run.info.run_id
        action = "created" if action == "updated" else action
        client.log_batch(mlflow_id, params=[Param(k, v) for k, v in params.items()])
    else:
        mlflow_id = existing.info.run_id
        client.update_run(mlflow_id, status="RUNNING")
        client.log_batch(mlflow_id, tags=[RunTag(k, v) for k, v in tags.items()])
    import time

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, 0) for k, v in metrics.items()
             if v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))]
    for i in range(0, len(batch), 500):
        client.log_batch(mlflow_id, metrics=batch[i:i + 500])
    for local, sub in artifacts:
        local = Path(local)
        if local.is_dir():
            client.log_artifacts(mlflow_id, str(local), sub)
        elif local.is_file():
            client.log_artifact(mlflow_id, str(local), sub or None)
    client.set_terminated(mlflow_id)
    return mlflow_id, action
