"""Children written straight into a SQL tracking store (SQLite, PostgreSQL, MySQL).

MLflow's client writes a child in six sessions and five commits, with an ORM object and a
validation per curve point (about 0.1 s per run with a thousand points). When the store is SQL
and the experiment keeps its artifacts in a local folder, :func:`write_sql` writes the same
rows (MLflow's own table models, validated by MLflow's own validators) in two transactions for
a whole chunk of runs, with the same steps and guarantees as the client path
(:func:`pipelines.tracking.children.write_child`).
"""
from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterable

from pipelines import contract as c
from pipelines.errors import UserError
from pipelines.tracking.store import STEPS, _local_folder, finite


def sql_target(client, experiment_id: str):
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


def write_sql(store, experiment, parent_id: str, ablation: str,
               records: list) -> list[str]:
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
    from mlflow.store.tracking.dbmodels.models import (
        SqlLatestMetric,
        SqlMetric,
        SqlParam,
        SqlRun,
        SqlTag,
    )
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
        points = {(k, end, 0, float(v)) for k, v in record.metrics.items() if finite(v)}
        for name, curve in record.curves.items():
            points |= {(name, int(ts), int(step), float(v)) for step, v, ts in curve
                       if finite(v)}
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
        for record in records:  # both written by the transaction above
            STEPS.debug("%s %s", "created", record.run_id)
            STEPS.debug("%s %s", "logged", record.run_id)
        uploaded = {}
        for run_uuid, record in zip(ids, records):
            folder = _local_folder(append_to_uri_path(experiment.artifact_location, run_uuid,
                                                      store.ARTIFACTS_FOLDER_NAME))
            uploaded[run_uuid] = (folder, copy_artifacts(record.artifacts, folder))
            STEPS.debug("%s %s", "artifacts", record.run_id)
        with store.ManagedSessionMaker(read_only=False) as session:
            for run_uuid, record in zip(ids, records):
                session.execute(update(SqlRun).where(SqlRun.run_uuid == run_uuid)
                                .values(status=record.status, end_time=record.end_ms or now))
                STEPS.debug("%s %s", "terminated", record.run_id)
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
