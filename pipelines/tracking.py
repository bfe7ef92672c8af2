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

Ingest never loses a finished run: a replacement is written as a ``pending`` child
(no reader takes it), checked against what was meant to be written, and turned into a data point
with :data:`pipelines.contract.COMPLETE_TAG` in one last write; only then is the child it replaces
retired. A kill at any point leaves the old child or both (a re-ingest keeps the complete, current
one and deletes leftovers); only a complete child is ever ``unchanged``. A good finished child is
never replaced by a worse record of the same recipe (a failure, or lost metrics: a missing input),
and a store that cannot be written is refused before anything is written.

mmengine's ``MLflowVisBackend`` is not used: it breaks with MLflow >= 3.13 defaults.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import unquote, urlsplit

from pipelines import contract as c
from pipelines.errors import UserError

DEFAULT_TRACKING_URI = "sqlite:///results/mlflow.db"
BATCH = 1000  # MLflow's log_batch limit on metrics per call
PARAM_BATCH = 100


#: URI schemes MLflow's tracking client writes to (``postgresql+psycopg2`` and the like too)
SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "file")
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
SQLITE_MAGIC = b"SQLite format 3\0"


def check_scheme(uri: str) -> None:
    """Refuse a URI no MLflow tracking store has (``foo://bar``, a bare path) in one line."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in (uri or "") else ""
    if scheme not in SCHEMES:
        raise UserError(f"tracking URI {uri!r}: expected sqlite:///FILE, postgresql://..., "
                        f"or http(s)://HOST:PORT")


def check_readable(uri: str) -> None:
    """What can be checked of a store without opening it (no connection, nothing written): its
    scheme, and that an existing ``sqlite:///FILE`` is an SQLite database. One-line UserError."""
    check_scheme(uri)
    if not uri.startswith("sqlite:///"):
        return
    path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except OSError as err:
        raise UserError(f"tracking URI {uri!r}: {path} cannot be read "
                        f"({err.strerror or err})") from None
    if head and head != SQLITE_MAGIC:
        raise UserError(f"tracking URI {uri!r}: {path} is not an SQLite database")


def resolve_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///FILE`` absolute and create its folder."""
    check_scheme(uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not path.is_absolute():
            path = Path.cwd() / path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"tracking URI {uri!r}: cannot create folder {path.parent} "
                            f"({err.strerror or err})") from None
        return f"sqlite:///{path}"
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
    check_writable(path, "artifact folder")
    return path.as_uri()


def check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and write a file there (and remove it), or a UserError."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(f"{what} {folder} is not writable ({err.strerror or err})") from None


def missing_sqlite_file(uri: str) -> Path | None:
    """The file of a ``sqlite:///FILE`` store when it does not exist or is empty (a reader must
    refuse it: opening it with MLflow would write an empty store there), else None."""
    if not (uri or "").startswith("sqlite:///"):
        return None
    path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    return None if path.is_file() and path.stat().st_size > 0 else path


@contextlib.contextmanager
def removed_if_new_and_failed(uri: str):
    """A ``sqlite:///FILE`` store (and the folders above it) that this block creates is removed
    again when the block fails: a refused ingest into a new store leaves nothing behind. A store
    that existed before is never touched here."""
    path, missing = None, []
    if (uri or "").startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):].split("?", 1)[0]).absolute()
        folder = path.parent
        while not folder.exists():  # the folders this block may create, deepest first
            missing.append(folder)
            folder = folder.parent
        if path.exists():
            path = None
    try:
        yield
    except BaseException:
        if path is not None:
            for leftover in (path, *(path.with_name(path.name + end)
                                     for end in ("-journal", "-wal", "-shm"))):
                with contextlib.suppress(OSError):  # never made (its folder is a file...)
                    leftover.unlink()
            for folder in missing:
                try:
                    folder.rmdir()  # only when empty
                except OSError:
                    break
        raise


def check_store(uri: str) -> None:
    """Refuse, before anything is written, a store ingest cannot write: an SQLite file that is
    not a database or not writable, or a server (MLflow, PostgreSQL) that does not answer."""
    if uri.startswith("sqlite:///"):
        check_readable(uri)
        path = Path(uri[len("sqlite:///"):])
        if path.exists():
            try:
                open(path, "r+b").close()
            except OSError as err:
                raise UserError(f"tracking URI {uri!r}: {path} cannot be written "
                                f"({err.strerror or err})") from None
        check_writable(path.parent, "folder of the tracking store")
        return
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[0].lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
        socket.create_connection((parts.hostname, port), timeout=5).close()
    except (OSError, ValueError) as err:
        raise UserError(f"tracking server {parts.hostname}:{parts.port or DEFAULT_PORTS[scheme]} "
                        f"of {uri!r} does not answer ({getattr(err, 'strerror', None) or err})"
                        ) from None


def open_client(tracking_uri: str = DEFAULT_TRACKING_URI):
    from mlflow.tracking import MlflowClient

    # alembic announces every migration of a fresh store on INFO, MLflow the store's creation
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=resolve_tracking_uri(tracking_uri))


def open_writer(tracking_uri: str = DEFAULT_TRACKING_URI):
    """:func:`open_client` for ingest: the store checked first (:func:`check_store`)."""
    uri = resolve_tracking_uri(tracking_uri)
    check_store(uri)
    with store_errors(uri):
        return open_client(uri)


def _one_line(err: BaseException) -> str:
    text = str(getattr(err, "message", "") or err or type(err).__name__).strip()
    return (text.splitlines() or [type(err).__name__])[0][:300]


@contextlib.contextmanager
def store_errors(uri: str, note: str = "", what: str = "MLflow store"):
    """An error of the store (MLflow, SQL, HTTP, file system) -> one-line :class:`UserError`
    (``<what> <uri>: <the error's first line><note>``)."""
    from mlflow.exceptions import MlflowException

    kinds: list[type] = [MlflowException, OSError]
    with contextlib.suppress(ImportError):
        from sqlalchemy.exc import SQLAlchemyError

        kinds.append(SQLAlchemyError)
    try:
        yield
    except tuple(kinds) as err:
        raise UserError(f"{what} {uri}: {_one_line(err)}{note}") from None


def get_or_create_experiment(client, name: str, artifact_location: str | None = None) -> str:
    """The experiment of an ablation, created once, its kind set to model training."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        folder = _local_folder(exp.artifact_location or "")
        if folder is not None:
            check_writable(folder, f"artifact folder of experiment {name!r}")
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


def _local_folder(location: str) -> Path | None:
    """The folder of a local artifact location (a ``file://`` URI or a path), else None."""
    if location.startswith("file:"):
        return Path(unquote(urlsplit(location).path))
    return Path(location) if location and "://" not in location else None


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
        if found[0].info.status == "RUNNING":  # an ingest killed right after creating it
            client.set_terminated(parent)
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
    and every snakemake start imports this module for :func:`check_readable`."""
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
                  if m in old.data.metrics and not _finite(record.metrics.get(m)))
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
        and _sql_target(client, experiment_id) is not None else 1
    for start in range(0, len(writes), size):
        chunk = writes[start:start + size]
        ids = write_children(client, experiment_id, parent_id, ablation,
                             [items[i][0] for i in chunk])
        for i, mlflow_id in zip(chunk, ids):
            record, existing = items[i]
            _fault("completed")
            retire(client, existing, record.recipe)
            _fault("retired")
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
    written in two transactions (:func:`_write_sql`)."""
    from mlflow.entities import Metric, Param

    target = _sql_target(client, experiment_id)
    if target is not None:
        return _write_sql(*target, parent_id, ablation, [record])[0]

    tags = {c.ROLE_TAG: c.ROLE_PENDING, c.RUN_ID_TAG: record.run_id,
            c.RECIPE_TAG: record.recipe, c.ABLATION_TAG: ablation, c.PARENT_TAG: parent_id,
            c.INGEST_HASH_TAG: record.fingerprint, **record.tags}
    now = int(time.time() * 1000)
    run = client.create_run(experiment_id, run_name=record.run_id,
                            start_time=record.start_ms or now, tags=tags)
    mlflow_id = run.info.run_id
    try:
        _fault("created")
        params = [Param(k, str(v)) for k, v in record.params.items()]
        end = record.end_ms or now
        metrics = [Metric(k, float(v), end, 0) for k, v in record.metrics.items()
                   if _finite(v)]
        for name, points in record.curves.items():
            metrics += [Metric(name, float(v), int(ts), int(step)) for step, v, ts in points
                        if _finite(v)]
        for batch_params, batch_metrics in _batches(params, metrics):
            client.log_batch(mlflow_id, params=batch_params, metrics=batch_metrics)
        _fault("logged")
        uploaded = log_artifacts_once(client, mlflow_id, record.artifacts)
        _fault("artifacts")
        client.set_terminated(mlflow_id, status=record.status, end_time=end)
        _fault("terminated")
        check_child(client, mlflow_id, record.status, {p.key for p in params},
                    {m.key for m in metrics}, uploaded)
        client.log_batch(mlflow_id, tags=_tags({c.ROLE_TAG: record.role,
                                                c.COMPLETE_TAG: "true"}))
    except BaseException:
        with contextlib.suppress(Exception):
            client.delete_run(mlflow_id)
        raise
    return mlflow_id


def _sql_target(client, experiment_id: str):
    """``(store, experiment)`` when ``client`` writes a SQL store (SQLite, PostgreSQL, MySQL)
    whose experiment keeps its artifacts in a local folder, else None."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if not isinstance(store, SqlAlchemyStore):
        return None
    key = (store.db_uri, experiment_id)
    if key not in _EXPERIMENTS:
        _EXPERIMENTS[key] = client.get_experiment(experiment_id)
    experiment = _EXPERIMENTS[key]
    if _local_folder(experiment.artifact_location or "") is None:
        return None
    return store, experiment


#: (store, experiment id) -> the experiment (its artifact location never changes)
_EXPERIMENTS: dict = {}


#: new children a SQL store receives per transaction (:func:`upsert_children`), and the fewest
#: that are written so: fewer are written one by one (a child per transaction)
SQL_CHUNK = 100
SQL_CHUNK_MIN = 20


def write_children(client, experiment_id: str, parent_id: str, ablation: str,
                   records: list[ChildRecord]) -> list[str]:
    """:func:`write_child` of several records; returns their MLflow run ids, in order. A SQL
    store with local artifacts takes them together (:func:`_write_sql`, the same steps, each
    for all of them): one transaction, one disk sync, serves them all."""
    target = _sql_target(client, experiment_id)
    if target is None or len(records) < 2:
        return [write_child(client, experiment_id, parent_id, ablation, r) for r in records]
    return _write_sql(*target, parent_id, ablation, records)


def _write_sql(store, experiment, parent_id: str, ablation: str,
               records: list[ChildRecord]) -> list[str]:
    """:func:`write_child` on a SQL store, for one record or a chunk, in two transactions
    instead of a client call per step: the ``pending`` runs with their tags, params, metrics
    and curves (MLflow's own table models, the rows its ``create_run`` and ``log_batch`` write,
    one multi-row insert per table); the artifacts copied into each run's folder in one pass;
    then their status and end, read back, and their role with the complete marker. The same
    steps and guarantees as the client path (``tests/unit/test_tracking.py`` compares the two
    stores): a kill leaves ``pending`` children that no reader takes and the next ingest
    deletes; an error deletes them at once. Per run with a thousand curve points this costs
    a few ms instead of about 0.1 s (an ORM object and a validation per point, six sessions
    and five commits)."""
    from mlflow.entities import LifecycleStage, RunStatus, SourceType
    from mlflow.store.tracking.dbmodels.models import (SqlLatestMetric, SqlMetric, SqlParam,
                                                        SqlRun, SqlTag)
    from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
    from mlflow.utils.uri import append_to_uri_path
    from mlflow.utils.validation import _validate_metric, _validate_param, _validate_tag
    from sqlalchemy import delete, func, select, update

    now = int(time.time() * 1000)
    rows: dict = {SqlRun: [], SqlTag: [], SqlParam: [], SqlMetric: [], SqlLatestMetric: []}
    expected: dict[str, list[int]] = {}  # run -> tags, params, latest metrics it must hold
    for record in records:
        run_uuid = uuid.uuid4().hex
        tags = {c.ROLE_TAG: c.ROLE_PENDING, c.RUN_ID_TAG: record.run_id,
                c.RECIPE_TAG: record.recipe, c.ABLATION_TAG: ablation, c.PARENT_TAG: parent_id,
                c.INGEST_HASH_TAG: record.fingerprint, **record.tags}
        tags.setdefault(MLFLOW_RUN_NAME, record.run_id)
        params = {k: str(v) for k, v in record.params.items()}
        for k, v in tags.items():
            _validate_tag(k, v)
        for k, v in params.items():
            _validate_param(k, v)
        end = record.end_ms or now
        points = {(k, end, 0, float(v)) for k, v in record.metrics.items() if _finite(v)}
        for name, curve in record.curves.items():
            points |= {(name, int(ts), int(step), float(v)) for step, v, ts in curve
                       if _finite(v)}
        latest: dict[str, tuple] = {}
        for key, ts, step, value in points:
            if key not in latest:
                _validate_metric(key, value, ts, step)
            if key not in latest or (step, ts, value) > latest[key][1:]:
                latest[key] = (key, step, ts, value)
        rows[SqlRun].append(dict(
            run_uuid=run_uuid, name=record.run_id, experiment_id=int(experiment.experiment_id),
            artifact_uri=append_to_uri_path(experiment.artifact_location, run_uuid,
                                            store.ARTIFACTS_FOLDER_NAME),
            source_type=SourceType.to_string(SourceType.UNKNOWN), source_name="",
            entry_point_name="", user_id="unknown", status=RunStatus.to_string(RunStatus.RUNNING),
            start_time=record.start_ms or now, end_time=None, deleted_time=None,
            source_version="", lifecycle_stage=LifecycleStage.ACTIVE))
        rows[SqlTag] += [dict(run_uuid=run_uuid, key=k, value=v) for k, v in tags.items()]
        rows[SqlParam] += [dict(run_uuid=run_uuid, key=k, value=v) for k, v in params.items()]
        rows[SqlMetric] += [dict(run_uuid=run_uuid, key=k, value=v, timestamp=ts, step=step,
                                 is_nan=False) for k, ts, step, v in points]
        rows[SqlLatestMetric] += [dict(run_uuid=run_uuid, key=k, value=v, timestamp=ts,
                                       step=step, is_nan=False)
                                  for k, step, ts, v in latest.values()]
        expected[run_uuid] = [len(tags), len(params), len(latest)]
    with store.ManagedSessionMaker(read_only=False) as session:
        # SQLAlchemy Core's executemany on the tables of MLflow's models (the ORM's bulk insert
        # costs several times more per row; the rows are the same)
        connection = session.connection()
        for model, values in rows.items():
            if values:
                connection.execute(model.__table__.insert(), values)
    ids = list(expected)
    try:
        for _ in records:
            _fault("created")
            _fault("logged")
        uploaded = {}
        for run_uuid, record in zip(ids, records):
            folder = _local_folder(append_to_uri_path(experiment.artifact_location, run_uuid,
                                                      store.ARTIFACTS_FOLDER_NAME))
            uploaded[run_uuid] = (folder, copy_artifacts(record.artifacts, folder))
            _fault("artifacts")
        with store.ManagedSessionMaker(read_only=False) as session:
            for run_uuid, record in zip(ids, records):
                session.execute(update(SqlRun).where(SqlRun.run_uuid == run_uuid)
                                .values(status=record.status, end_time=record.end_ms or now))
                _fault("terminated")
            found = {u: [0, 0, 0] for u in ids}
            for i, model in enumerate((SqlTag, SqlParam, SqlLatestMetric)):
                for run_uuid, count in session.execute(
                        select(model.run_uuid, func.count()).where(model.run_uuid.in_(ids))
                        .group_by(model.run_uuid)):
                    found[run_uuid][i] = count
            status = dict(session.execute(select(SqlRun.run_uuid, SqlRun.status)
                                          .where(SqlRun.run_uuid.in_(ids))).all())
            for run_uuid, record in zip(ids, records):
                folder, files = uploaded[run_uuid]
                missing = files - ({p.name for p in folder.iterdir()} if folder.is_dir()
                                   else set())
                if (status.get(run_uuid) != record.status or missing
                        or found[run_uuid] != expected[run_uuid]):
                    raise UserError(
                        f"MLflow run {run_uuid} ({record.run_id}) reads back incomplete "
                        f"(status {status.get(run_uuid)}; tags, params, metrics "
                        f"{found[run_uuid]} of {expected[run_uuid]}; missing artifacts "
                        f"{', '.join(sorted(missing)[:5]) or 'none'}); its previous child is "
                        f"kept")
            session.execute(delete(SqlTag).where(SqlTag.run_uuid.in_(ids),
                                                 SqlTag.key == c.ROLE_TAG))
            session.connection().execute(SqlTag.__table__.insert(), [
                dict(run_uuid=u, key=k, value=v) for u, record in zip(ids, records)
                for k, v in ((c.ROLE_TAG, record.role), (c.COMPLETE_TAG, "true"))])
    except BaseException:
        for run_uuid in ids:
            with contextlib.suppress(Exception):
                store.delete_run(run_uuid)
        raise
    return ids


def copy_artifacts(artifacts: Iterable[tuple], dest: Path) -> set:
    """``(local file or folder, artifact sub-path)`` pairs copied under ``dest`` as
    ``log_artifact`` / ``log_artifacts`` place them (a file in ``sub/<name>``, a folder's content
    in ``sub/``); returns the top-level names written."""
    top, made = set(), set()
    for src, dst in artifact_files(artifacts, dest):
        if dst.parent not in made:
            dst.parent.mkdir(parents=True, exist_ok=True)
            made.add(dst.parent)
        shutil.copyfile(src, dst)
        top.add(dst.relative_to(dest).parts[0])
    return top


def artifact_files(artifacts: Iterable[tuple], dest: Path) -> list[tuple[Path, Path]]:
    """``(source file, its place under dest)`` of every file of ``(local file or folder,
    artifact sub-path)`` pairs: a file in ``sub/<name>``, a folder's files under ``sub/``, as
    ``log_artifact`` / ``log_artifacts`` place them. A file may come as ``(file, sub, name)``:
    it lands in ``sub/<name>`` (a file of another name, without a staged copy)."""
    out = []
    for local, sub, *name in artifacts:
        local = Path(local)
        if local.is_dir():
            out += [(f, dest / (sub or "") / f.relative_to(local))
                    for f in sorted(local.rglob("*")) if f.is_file()]
        elif local.is_file():
            out.append((local, dest / (sub or "") / (name[0] if name else local.name)))
    return out


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


#: test hook: ``STEP[@N][:raise]`` kills the process (SIGKILL) or raises OSError the Nth time
#: (default first) ingest reaches STEP (created, logged, artifacts, terminated, completed,
#: retired): how the tests stop an ingest part-way
FAULT_ENV = "PIPELINES_INGEST_FAULT"
_reached: dict[str, int] = {}


def _fault(step: str) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    where, _, mode = spec.partition(":")
    name, _, nth = where.partition("@")
    if name != step:
        return
    _reached[spec] = _reached.get(spec, 0) + 1
    if _reached[spec] != int(nth or 1):
        return
    if mode == "raise":
        raise OSError(f"injected fault at {step}")
    os.kill(os.getpid(), signal.SIGKILL)


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
        for src, dst in artifact_files(artifacts, staging):
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
