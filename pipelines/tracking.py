"""MLflow tracking of ablations through ``MlflowClient`` (one writer: the workflow's ingest rule).

Every name comes from :mod:`pipelines.contract`. What a user finds in ``mlflow ui``:

* the experiment (named after the ablation) opens on its runs table: its kind is set to model
  training (``mlflow.experimentKind``), not MLflow 3's GenAI default;
* one parent run per ablation; one child per grid run **and recipe**: a run whose recipe changed
  gets a new child, and the old one keeps its history under ``pipelines.role=superseded``;
* a child's start and end are the training's real ones; its params are every axis; its metrics
  are the final numbers plus the training curves (every loss term, lr, validation metrics) with
  one point per logged iteration; tags carry the git commit, a dirty flag and library versions.

Re-ingesting is idempotent and cheap: each child records a fingerprint of the files it was made
from, and an unchanged run is skipped; a changed one (same recipe) is written again. Children are
found with one paged query per experiment, and written with MLflow's batch API.

mmengine's ``MLflowVisBackend`` is not used: it breaks with MLflow >= 3.13 defaults.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipelines import contract as c
from pipelines.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"
BATCH = 1000  # MLflow's log_batch limit on metrics per call
PARAM_BATCH = 100


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
    """The experiment of an ablation, created once, its kind set to model training."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        experiment_id = exp.experiment_id
        if exp.tags.get(c.EXPERIMENT_KIND_TAG) != c.EXPERIMENT_KIND:
            client.set_experiment_tag(experiment_id, c.EXPERIMENT_KIND_TAG, c.EXPERIMENT_KIND)
        return experiment_id
    if artifact_location and "://" not in artifact_location:
        artifact_location = str(Path(artifact_location) / name)  # one folder per ablation
    return client.create_experiment(
        name, artifact_location=resolve_artifact_location(artifact_location),
        tags={c.EXPERIMENT_KIND_TAG: c.EXPERIMENT_KIND})


def search_all(client, experiment_id: str, filter_string: str = "") -> list:
    """Every run of an experiment matching ``filter_string``, page by page."""
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string,
                                  max_results=5000, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def get_or_create_parent(client, experiment_id: str, ablation: str,
                         description: str = "") -> str:
    """The ablation's parent run (created once; found again by its role tag)."""
    found = search_all(client, experiment_id, f"tags.`{c.ROLE_TAG}` = '{c.ROLE_PARENT}'")
    if found:
        parent = found[0].info.run_id
    else:
        run = client.create_run(experiment_id, run_name=ablation,
                                tags={c.ROLE_TAG: c.ROLE_PARENT, c.ABLATION_TAG: ablation})
        parent = run.info.run_id
        client.set_terminated(parent)
    if description:
        client.set_tag(parent, c.NOTE_TAG, description)
    return parent


def children_by_run_id(client, experiment_id: str, roles=c.POINT_ROLES) -> dict[str, list]:
    """Current children of an experiment by their ``pipelines.run_id`` (one paged query)."""
    out: dict[str, list] = {}
    for run in search_all(client, experiment_id):
        tags = run.data.tags
        if tags.get(c.ROLE_TAG) in roles and tags.get(c.RUN_ID_TAG):
            out.setdefault(tags[c.RUN_ID_TAG], []).append(run)
    return out


@dataclass
class ChildRecord:
    """Everything one child run holds (built by ``pipelines.ingest`` from a run's files).

    Args:
        run_id, recipe: the grid run and its recipe (the child's identity).
        params: strings: :data:`pipelines.contract.FIXED_PARAMS` and every axis.
        metrics: final numbers (non-finite ones are left out).
        curves: ``name -> [(step, value, timestamp_ms)]``: the training curves.
        tags: extra tags (axes list, methods, provenance).
        start_ms, end_ms: the training's real start and end (None: now).
        artifacts: ``(local file or folder, artifact sub-path)`` pairs.
        fingerprint: hash of the files the record was made from.
        role: ``run`` (grid) or ``trial`` (search).
    """

    run_id: str
    recipe: str
    params: Mapping[str, str]
    metrics: Mapping[str, float] = field(default_factory=dict)
    curves: Mapping[str, list] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    start_ms: int | None = None
    end_ms: int | None = None
    artifacts: Iterable[tuple[Path, str]] = ()
    fingerprint: str = ""
    role: str = c.ROLE_RUN
    status: str = "FINISHED"


def upsert_child(client, experiment_id: str, parent_id: str, ablation: str, record: ChildRecord,
                 existing: list | None = None) -> tuple[str, str]:
    """Create, replace or skip the child of ``record``; returns ``(mlflow run id, action)``.

    Args:
        existing: the current children with this run id (from :func:`children_by_run_id`);
            None looks them up.

    Actions: ``unchanged`` (same recipe and fingerprint: nothing written), ``replaced`` (same
    recipe, new results: the old child is deleted and written again, so no curve point is
    doubled), ``created`` (new run id, or a new recipe: an older recipe's child is kept as
    ``superseded``).
    """
    from mlflow.entities import Metric, Param, RunTag

    if existing is None:
        existing = children_by_run_id(client, experiment_id).get(record.run_id, [])
    action = "created"
    for old in existing:
        tags = old.data.tags
        if tags.get(c.RECIPE_TAG) == record.recipe:
            if record.fingerprint and tags.get(c.INGEST_HASH_TAG) == record.fingerprint:
                return old.info.run_id, "unchanged"
            client.delete_run(old.info.run_id)
            action = "replaced"
        else:
            client.set_tag(old.info.run_id, c.ROLE_TAG, c.ROLE_SUPERSEDED)
            client.set_tag(old.info.run_id, "pipelines.superseded_by_recipe", record.recipe)
    tags = {c.ROLE_TAG: record.role, c.RUN_ID_TAG: record.run_id, c.RECIPE_TAG: record.recipe,
            c.ABLATION_TAG: ablation, c.PARENT_TAG: parent_id,
            c.INGEST_HASH_TAG: record.fingerprint, **record.tags}
    now = int(time.time() * 1000)
    run = client.create_run(experiment_id, run_name=record.run_id,
                            start_time=record.start_ms or now, tags=tags)
    mlflow_id = run.info.run_id
    params = [Param(k, str(v)) for k, v in record.params.items()]
    end = record.end_ms or now
    metrics = [Metric(k, float(v), end, 0) for k, v in record.metrics.items()
               if _finite(v)]
    for name, points in record.curves.items():
        metrics += [Metric(name, float(v), int(ts), int(step)) for step, v, ts in points
                    if _finite(v)]
    for batch_params, batch_metrics in _batches(params, metrics):
        client.log_batch(mlflow_id, params=batch_params, metrics=batch_metrics)
    log_artifacts_once(client, mlflow_id, record.artifacts)
    client.set_terminated(mlflow_id, status=record.status, end_time=end)
    return mlflow_id, action


def unchanged_child(existing: list, recipe: str, fingerprint: str):
    """The one current child when it has this recipe and ingest fingerprint, else None.

    ``upsert_child`` would leave such a run as it is (``unchanged``); knowing it from the
    fingerprint alone lets a re-ingest skip building the record. Anything else (no child,
    several, another recipe to supersede) is left to :func:`upsert_child`.
    """
    if len(existing) != 1 or not fingerprint:
        return None
    tags = existing[0].data.tags
    if tags.get(c.RECIPE_TAG) == recipe and tags.get(c.INGEST_HASH_TAG) == fingerprint:
        return existing[0]
    return None


def _batches(params: list, metrics: list):
    """``(params, metrics)`` chunks within MLflow's ``log_batch`` limits: the first call
    carries the params (at most :data:`PARAM_BATCH`) and fills up with metrics (at most
    :data:`BATCH` entities in all), so a typical run is written in one call (one transaction)."""
    params, metrics = list(params), list(metrics)
    while params or metrics:
        chunk_params, params = params[:PARAM_BATCH], params[PARAM_BATCH:]
        room = BATCH - len(chunk_params)
        chunk_metrics, metrics = metrics[:room], metrics[room:]
        yield chunk_params, chunk_metrics


def log_artifacts_once(client, mlflow_id: str, artifacts: Iterable[tuple[Path, str]]) -> None:
    """Upload ``(local file or folder, artifact sub-path)`` pairs with one ``log_artifacts`` call.

    The pairs are laid out as links in a staging folder (a file lands in ``sub/<name>``, a
    folder's content in ``sub/``, as ``log_artifact`` / ``log_artifacts`` place them), so the
    run's artifact store is looked up once per run instead of once per file.
    """
    import os
    import shutil
    import tempfile

    staged = False
    with tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
        staging = Path(tmp)
        for local, sub in artifacts:
            local = Path(local)
            if local.is_dir():
                files = [(f, staging / (sub or "") / f.relative_to(local))
                         for f in sorted(local.rglob("*")) if f.is_file()]
            elif local.is_file():
                files = [(local, staging / (sub or "") / local.name)]
            else:
                continue
            for src, dst in files:
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.unlink(missing_ok=True)
                try:
                    os.symlink(src.resolve(), dst)
                except OSError:  # no symlinks here: copy
                    shutil.copyfile(src, dst)
                staged = True
        if staged:
            client.log_artifacts(mlflow_id, str(staging))


def _finite(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(float(value)))


def provenance_tags(provenance: Mapping | None) -> dict[str, str]:
    """``train``'s provenance record -> the contract's tags."""
    if not provenance:
        return {}
    out = {}
    git = provenance.get("git") or {}
    if git.get("commit"):
        out[c.GIT_COMMIT_TAG] = str(git["commit"])
    if git.get("dirty") is not None:
        out[c.GIT_DIRTY_TAG] = "true" if git["dirty"] else "false"
    for lib, version in (provenance.get("versions") or {}).items():
        if version:
            out[c.VERSION_TAG_PREFIX + lib] = str(version)
    return out


def json_tag(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
