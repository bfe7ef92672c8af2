"""Ingest into a SQL store writes MLflow's rows itself (pipelines.tracking.sql_write.write_sql): the same
children as MLflow's client calls, one child per transaction pair or a chunk of them, with the
same guarantees (a failure part-way leaves every finished run and nothing pending)."""
from __future__ import annotations

import json

import pytest

from pipelines import contract as c
from pipelines.tracking import children, sql_write
from pipelines.tracking import store as tracking
from pipelines.tracking.ingest import ingest
from tests.ingest_faults import stopped_at
from tests.unit.test_ingest_safety import ABL, Store, empty_db, one_good_child_each, refused  # noqa
from tests.unit.test_tracking import write_results


def _child_view(client, run) -> dict:
    """What a reader sees of a child, its MLflow id left out."""
    info = run.info
    tags = {k: v for k, v in run.data.tags.items() if k != c.PARENT_TAG}
    history = {key: sorted((m.step, m.timestamp, m.value)
                           for m in client.get_metric_history(info.run_id, key))
               for key in run.data.metrics}
    artifacts = sorted(a.path for a in client.list_artifacts(info.run_id))
    nested = sorted(a.path for a in client.list_artifacts(info.run_id, "metrics"))
    return {"name": info.run_name, "status": info.status, "start": info.start_time,
            "end": info.end_time, "stage": info.lifecycle_stage, "user": info.user_id,
            "params": run.data.params, "metrics": run.data.metrics, "tags": tags,
            "history": history, "artifacts": artifacts, "nested": nested}


def _store_view(store: Store) -> dict:
    client = store.client()
    return {run_id: _child_view(client, runs[0]) for run_id, runs in store.points().items()}


def test_sql_rows_read_like_the_clients_calls(tmp_path, empty_db, capsys,  # noqa: F811
                                              monkeypatch):
    """The same results through MLflow's client (``sql_target`` off) and through the SQL path,
    one by one and in a chunk: every param, metric (final and curve points, with steps and
    timestamps), tag, status, time and artifact reads back the same."""
    results, jsons = write_results(tmp_path / "r")
    for done in (tmp_path / "r" / "results" / "train").rglob("train_done.json"):  # its times
        record = json.loads(done.read_text())
        done.write_text(json.dumps(dict(record, started_at=1.7e9, ended_at=1.7e9 + 60)))
    for work in (tmp_path / "r" / "results" / "train").glob("*/*/work-*"):  # curves
        logs = work / "20260101_000000" / "vis_data"
        logs.mkdir(parents=True)
        lines = [{"lr": 0.1 / step, "loss": 5.0 - step, "time": 0.5, "iter": step, "step": step}
                 for step in (2, 4, 6)] + [{"mIoU": 40.0, "step": 6}]
        (logs / "scalars.json").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    views = {}
    for name, chunk_min in (("client", None), ("one by one", 100), ("chunk", 2)):
        store = Store(tmp_path / name, empty_db)
        if chunk_min is None:
            monkeypatch.setattr(sql_write, "sql_target", lambda client, experiment_id: None)
        else:
            monkeypatch.setattr(children, "SQL_CHUNK_MIN", chunk_min)
        rc, out, err = store.ingest(capsys, results, jsons)
        assert rc == 0, err
        assert "3 created" in out
        views[name] = _store_view(store)
        monkeypatch.undo()
    assert views["client"] == views["one by one"] == views["chunk"]
    for view in views["chunk"].values():
        assert view["tags"][c.COMPLETE_TAG] == "true" and view["status"] == "FINISHED"
        assert "config.py" in view["artifacts"] and "metrics" in view["artifacts"]


@pytest.mark.parametrize("fault", ["artifacts@2:raise", "terminated@1:raise"])
def test_a_failed_chunk_keeps_every_finished_run_and_leaves_nothing_pending(
        tmp_path, empty_db, capsys, monkeypatch, fault):  # noqa: F811
    """Three runs re-ingested with new results in chunks of two: a failure in the first chunk
    writes none of it (the old children stay, nothing pending); a re-ingest replaces all."""
    store = Store(tmp_path, empty_db)
    results, jsons = write_results(tmp_path / "old")
    assert store.ingest(capsys, results, jsons)[0] == 0
    old = one_good_child_each(store, 40.0)
    results, jsons = write_results(tmp_path / "new", miou=55.0)
    monkeypatch.setattr(children, "SQL_CHUNK_MIN", 2)
    monkeypatch.setattr(children, "SQL_CHUNK", 2)
    with stopped_at(fault):
        rc, _, err = store.ingest(capsys, results, jsons)
    refused(rc, err, "injected fault", "keeps the records it held")
    assert one_good_child_each(store, 40.0) == old
    exp = store.client().get_experiment_by_name(ABL)
    assert not tracking.search_all(store.client(), exp.experiment_id,
                                   f"tags.`{c.ROLE_TAG}` = '{c.ROLE_PENDING}'")
    summary = ingest(ABL, str(results), jsons, store.uri, str(store.art), progress=False)
    assert summary["actions"] == {"replaced": 3}
    new = one_good_child_each(store, 55.0)
    assert not set(new.values()) & set(old.values())
    assert ingest(ABL, str(results), jsons, store.uri, None,
                  progress=False)["actions"] == {"unchanged": 3}
