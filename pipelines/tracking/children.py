"""The children of an ablation's parent run: one per grid run and recipe, never lost.

What a user finds in ``mlflow ui``: one child per grid run **and recipe**: a run whose recipe
changed gets a new child, and the old one keeps its history under ``pipelines.role=superseded``;
a child's start and end are the training's real ones; its params are every axis; its metrics
are the final numbers plus the training curves (every loss term, lr, validation metrics) with
one point per logged iteration; tags hold the git commit, a dirty flag, library versions and
the CPU it trained on. Every name comes from :mod:`pipelines.contract`.

Re-ingesting is idempotent and cheap: each child records a fingerprint of the files it was made
from, and an unchanged run is skipped; a changed one (same recipe) is written again, with
MLflow's batch API (or, on a SQL store, in two transactions: :mod:`pipelines.tracking.sql_write`).

Ingest never loses a finished run: a replacement is written as a ``pending`` child
(no reader takes it), checked against what was meant to be written, and turned into a data point
with :data:`pipelines.contract.COMPLETE_TAG` in one last write; only then is the child it replaces
retired. A kill at any point leaves the old child or both (a re-ingest keeps the complete, current
one and deletes leftovers); only a complete child is ever ``unchanged``. A good finished child is
never replaced by a worse record of the same recipe (a failure, or lost metrics: a missing input).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipelines import contract as c
from pipelines.errors import UserError
from pipelines.tracking import sql_write
from pipelines.tracking.store import (
    BATCH,
    PARAM_BATCH,
    STEPS,
    children_by_run_id,
    finite,
    search_all,
)


@dataclass
class ChildRecord:
    """Everything one child run holds (built by ``pipelines.tracking.ingest`` from a run's files).

    Args:
        run_id, recipe: the grid run and its recipe (the child's identity).
        params: strings: :data:`pipelines.contract.FIXED_PARAMS` and every axis.
        metrics: final numbers (non-finite ones are left out).
        curves: ``name -> [(step, value, timestamp_ms)]``: the training curves.
        tags: extra tags (axes list, methods, provenance).
        start_ms, end_ms: the training's real start and end (None: now).
        artifacts: ``(local file or folder, artifact sub-path)`` pairs, or ``(file, sub-path,
            name)`` for a file logged under another name (:func:`artifact_files`).
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
    artifacts: Iterable[tuple] = ()
    fingerprint: str = ""
    role: str = c.ROLE_RUN
    status: str = "FINISHED"
    kept_because: str = ""  # set by upsert_child when it kept the old child instead


def record_metrics() -> tuple[str, ...]:
    """Final numbers whose loss marks a worse record (what search_tracking adds later is left
    out). A function: the metric names come from the method registry, which imports mmengine,
    and every snakemake start checks the store (:mod:`pipelines.store_uri`)."""
    return tuple(m for m in c.METRICS if m != c.TRIAL_NUMBER)


def is_complete(run) -> bool:
    """A child ingest finished writing: the complete marker (set last) and a final status."""
    return (run.data.tags.get(c.COMPLETE_TAG) == "true"
            and run.info.status in ("FINISHED", "FAILED"))


def is_good(run) -> bool:
    """A finished child with an mIoU and no failure (a child from before the complete marker
    counts when FINISHED: that status was its last write)."""
    return (run.info.status == "FINISHED" and c.FAILURE_TAG not in run.data.tags
            and c.MIOU in run.data.metrics
            and run.data.tags.get(c.COMPLETE_TAG, "true") == "true")


def worse_than(record: ChildRecord, old) -> str | None:
    """Why ``record`` would be a worse child than the good ``old`` one (same recipe), or None:
    it failed where the same recipe once finished, or it lost final metrics (an input missing)."""
    if not is_good(old):
        return None
    if record.status == "FAILED":
        return f"its results now record a failure ({record.tags.get(c.FAILURE_TAG, '?')})"
    lost = sorted(m for m in record_metrics()
                  if m in old.data.metrics and not finite(record.metrics.get(m)))
    if lost:
        return f"its results now lack {', '.join(lost)}"
    return None


def upsert_child(client, experiment_id: str, parent_id: str, ablation: str, record: ChildRecord,
                 existing: list | None = None) -> tuple[str, str]:
    """Create, replace or keep the child of ``record``; returns ``(mlflow run id, action)``.

    Args:
        existing: the current children with this run id (from :func:`children_by_run_id`);
            None looks them up.

    Actions: ``unchanged`` (a complete child of this recipe and fingerprint: nothing written),
    ``repaired`` (the same, with leftovers of a killed ingest retired), ``kept`` (the record
    would be worse than the good child of this recipe, see :func:`worse_than`: nothing written;
    ``record.kept_because`` says why), ``replaced`` (same recipe, new results), ``created`` (new
    run id, or a new recipe). A new child is written whole and checked (:func:`write_child`)
    before the old one of its recipe is deleted (so no curve point is doubled) or an older
    recipe's child is marked ``superseded`` (it keeps its history).
    """
    if existing is None:
        existing = children_by_run_id(client, experiment_id).get(record.run_id, [])
    return upsert_children(client, experiment_id, parent_id, ablation, [(record, existing)])[0]


def upsert_children(client, experiment_id: str, parent_id: str, ablation: str,
                    items: list[tuple[ChildRecord, list]]) -> list[tuple[str, str]]:
    """:func:`upsert_child` of many ``(record, existing children)`` pairs, the new children
    written together (:func:`write_children`); each old child is retired once its replacement
    is complete."""
    out: list = [None] * len(items)
    writes = []
    for i, (record, existing) in enumerate(items):
        out[i] = _settled(client, record, existing)
        if out[i] is None:
            writes.append(i)
    # many new children: a chunk per transaction on a SQL store; a few: one by one
    size = SQL_CHUNK if len(writes) >= SQL_CHUNK_MIN \
        and sql_write.sql_target(client, experiment_id) is not None else 1
    for start in range(0, len(writes), size):
        chunk = writes[start:start + size]
        ids = write_children(client, experiment_id, parent_id, ablation,
                             [items[i][0] for i in chunk])
        for i, mlflow_id in zip(chunk, ids):
            record, existing = items[i]
            STEPS.debug("%s %s", "completed", record.run_id)
            retire(client, existing, record.recipe)
            STEPS.debug("%s %s", "retired", record.run_id)
            same = any(r.data.tags.get(c.RECIPE_TAG) == record.recipe for r in existing)
            out[i] = (mlflow_id, "replaced" if same else "created")
    return out


def _settled(client, record: ChildRecord, existing: list) -> tuple[str, str] | None:
    """``(mlflow run id, action)`` of a record that needs no new child (unchanged, repaired,
    kept), else None."""
    same = [r for r in existing if r.data.tags.get(c.RECIPE_TAG) == record.recipe]
    current = [r for r in same if is_complete(r) and record.fingerprint
               and r.data.tags.get(c.INGEST_HASH_TAG) == record.fingerprint]
    if current:
        stale = [r for r in existing if r is not current[0]]
        retire(client, stale, record.recipe)
        return current[0].info.run_id, "repaired" if stale else "unchanged"
    for old in same:
        why = worse_than(record, old)
        if why is not None:
            record.kept_because = why
            retire(client, [r for r in same if r.info.status == "RUNNING"], record.recipe)
            return old.info.run_id, "kept"
    return None


def retire(client, children: list, recipe: str) -> None:
    """Children a complete new one replaces: of its recipe deleted, of another superseded."""
    for old in children:
        if old.data.tags.get(c.RECIPE_TAG) == recipe:
            client.delete_run(old.info.run_id)
        else:
            client.log_batch(old.info.run_id, tags=_tags({
                c.ROLE_TAG: c.ROLE_SUPERSEDED, "pipelines.superseded_by_recipe": recipe}))


def write_child(client, experiment_id: str, parent_id: str, ablation: str,
                record: ChildRecord) -> str:
    """Write ``record`` as a new child: ``pending`` until everything is written and read back,
    then its role and the complete marker in one write. On an error the pending child is
    deleted (a kill leaves it to :func:`drop_pending`). A SQL store with local artifacts is
    written in two transactions (:func:`~pipelines.tracking.sql_write.write_sql`)."""
    from mlflow.entities import Metric, Param

    target = sql_write.sql_target(client, experiment_id)
    if target is not None:
        return sql_write.write_sql(*target, parent_id, ablation, [record])[0]

    tags = {c.ROLE_TAG: c.ROLE_PENDING, c.RUN_ID_TAG: record.run_id,
            c.RECIPE_TAG: record.recipe, c.ABLATION_TAG: ablation, c.PARENT_TAG: parent_id,
            c.INGEST_HASH_TAG: record.fingerprint, **record.tags}
    now = int(time.time() * 1000)
    run = client.create_run(experiment_id, run_name=record.run_id,
                            start_time=record.start_ms or now, tags=tags)
    mlflow_id = run.info.run_id
    try:
        STEPS.debug("%s %s", "created", record.run_id)
        params = [Param(k, str(v)) for k, v in record.params.items()]
        end = record.end_ms or now
        metrics = [Metric(k, float(v), end, 0) for k, v in record.metrics.items()
                   if finite(v)]
        for name, points in record.curves.items():
            metrics += [Metric(name, float(v), int(ts), int(step)) for step, v, ts in points
                        if finite(v)]
        for batch_params, batch_metrics in _batches(params, metrics):
            client.log_batch(mlflow_id, params=batch_params, metrics=batch_metrics)
        STEPS.debug("%s %s", "logged", record.run_id)
        uploaded = log_artifacts_once(client, mlflow_id, record.artifacts)
        STEPS.debug("%s %s", "artifacts", record.run_id)
        client.set_terminated(mlflow_id, status=record.status, end_time=end)
        STEPS.debug("%s %s", "terminated", record.run_id)
        check_child(client, mlflow_id, record.status, {p.key for p in params},
                    {m.key for m in metrics}, uploaded)
        client.log_batch(mlflow_id, tags=_tags({c.ROLE_TAG: record.role,
                                                c.COMPLETE_TAG: "true"}))
    except BaseException:
        with contextlib.suppress(Exception):
            client.delete_run(mlflow_id)
        raise
    return mlflow_id


#: new children a SQL store receives per transaction (:func:`upsert_children`), and the fewest
#: that are written so: fewer are written one by one (a child per transaction)
SQL_CHUNK = 100
SQL_CHUNK_MIN = 20


def write_children(client, experiment_id: str, parent_id: str, ablation: str,
                   records: list[ChildRecord]) -> list[str]:
    """:func:`write_child` of several records; returns their MLflow run ids, in order. A SQL
    store with local artifacts takes them together (:func:`~pipelines.tracking.sql_write.write_sql`, the same steps, each
    for all of them): one transaction, one disk sync, serves them all."""
    target = sql_write.sql_target(client, experiment_id)
    if target is None or len(records) < 2:
        return [write_child(client, experiment_id, parent_id, ablation, r) for r in records]
    return sql_write.write_sql(*target, parent_id, ablation, records)


def check_child(client, mlflow_id: str, status: str, params: set, metrics: set,
                artifacts: set) -> None:
    """Read a written child back: its status, every param, metric and top-level artifact."""
    run = client.get_run(mlflow_id)
    missing = sorted(params - set(run.data.params)) + sorted(metrics - set(run.data.metrics))
    if artifacts:
        missing += sorted(artifacts - {a.path for a in client.list_artifacts(mlflow_id)})
    if run.info.status != status or missing:
        raise UserError(f"MLflow run {mlflow_id} ({run.data.tags.get(c.RUN_ID_TAG)}) reads back "
                        f"incomplete (status {run.info.status}, missing "
                        f"{', '.join(missing[:5]) or 'nothing'}); its previous child is kept")


def drop_pending(client, experiment_id: str) -> int:
    """Delete the ``pending`` children an interrupted ingest left; returns how many."""
    found = search_all(client, experiment_id, f"tags.`{c.ROLE_TAG}` = '{c.ROLE_PENDING}'")
    for run in found:
        client.delete_run(run.info.run_id)
    return len(found)


def _tags(tags: Mapping[str, str]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(k, v) for k, v in tags.items()]


def unchanged_child(existing: list, recipe: str, fingerprint: str):
    """The one current child when it is complete with this recipe and ingest fingerprint.

    ``upsert_child`` would leave such a run as it is (``unchanged``); knowing it from the
    fingerprint alone lets a re-ingest skip building the record. Anything else (no child,
    several, another recipe to supersede, an incomplete child) is left to
    :func:`upsert_child`.
    """
    if len(existing) != 1 or not fingerprint or not is_complete(existing[0]):
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


def log_artifacts_once(client, mlflow_id: str, artifacts: Iterable[tuple]) -> set:
    """Upload ``(local file or folder, artifact sub-path)`` pairs with one ``log_artifacts`` call.

    The pairs are laid out as links in a staging folder (a file lands in ``sub/<name>``, a
    folder's content in ``sub/``, as ``log_artifact`` / ``log_artifacts`` place them), so the
    run's artifact store is looked up once per run instead of once per file. Returns the
    top-level artifact names written.
    """
    staged = False
    with tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
        staging = Path(tmp)
        for src, dst in sql_write.artifact_files(artifacts, staging):
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.unlink(missing_ok=True)
            try:
                os.symlink(src.resolve(), dst)
            except OSError:  # no symlinks here: copy
                shutil.copyfile(src, dst)
            staged = True
        if not staged:
            return set()
        client.log_artifacts(mlflow_id, str(staging))
        return {p.name for p in staging.iterdir()}


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
    cpu = provenance.get("cpu") or {}
    for tag, key in ((c.CPU_MODEL_TAG, "model"), (c.CPU_ATEN_TAG, "aten_capability"),
                     (c.CPU_THREADS_TAG, "threads")):
        if cpu.get(key) is not None:
            out[tag] = str(cpu[key])
    if cpu.get("flags"):
        out[c.CPU_FLAGS_TAG] = " ".join(cpu["flags"]) if isinstance(cpu["flags"], list) \
            else str(cpu["flags"])
    if cpu.get("env"):
        out[c.CPU_ENV_TAG] = json_tag(cpu["env"])
    return out


def json_tag(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
