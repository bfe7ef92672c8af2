"""SIGKILL of ``python -m pipelines ingest`` at every step of writing a child, then a re-ingest:
no finished run is ever lost, no point child is ever incomplete, and the next ingest
repairs the store (each run one complete child with the new results; leftovers deleted)."""
from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from pipelines import contract as c
from pipelines.tracking import children
from pipelines.tracking import store as tracking
from pipelines.tracking.ingest import ingest
from tests.ingest_faults import run_ingest_stopped_at
from tests.unit.test_ingest_safety import (  # noqa: F401
    ABL,
    Store,
    empty_db,
    ingested,
    one_good_child_each,
)
from tests.unit.test_tracking import write_results

STEPS = ("created", "logged", "artifacts", "terminated", "completed", "retired")


def killed_ingest(store: Store, results: Path, jsons: list[str], at: str) -> None:
    """The CLI in its own process, SIGKILLed at ``at`` (:mod:`tests.ingest_faults`)."""
    proc = run_ingest_stopped_at(at, "--ablation", ABL, "--results", str(results),
                                 "--tracking-uri", store.uri, "--artifact-location",
                                 str(store.art), "--runs", *jsons)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def pending(store: Store) -> list:
    exp = store.client().get_experiment_by_name(ABL)
    return tracking.search_all(store.client(), exp.experiment_id,
                               f"tags.`{c.ROLE_TAG}` = '{c.ROLE_PENDING}'")


def check_killed(store: Store, jsons: list[str], step: str, old: float, new: float) -> None:
    """After a kill at the 2nd run's ``step``: the 1st run has its new child, the 3rd its old
    one, the 2nd its old one, its new one as well once that is complete; nothing incomplete is a
    data point, and an unfinished child is pending (no reader takes it)."""
    points = store.points()
    order = [json.loads(Path(j).read_text())["run_id"] for j in jsons]
    for i, run_id in enumerate(order):
        runs = points[run_id]
        assert all(children.is_complete(r) and r.info.status == "FINISHED" for r in runs)
        mious = sorted(r.data.metrics["miou"] - i for r in runs)
        if i == 1 and step == "completed":
            assert mious == sorted([old, new])
        else:
            assert mious == [new if i == 0 or (i == 1 and step == "retired") else old], \
                (step, run_id, mious)
    assert len(pending(store)) == (1 if STEPS.index(step) < STEPS.index("completed") else 0)


@pytest.mark.slow
def test_sigkill_at_every_step_then_a_reingest_repairs(tmp_path, empty_db, capsys):  # noqa: F811
    store, *first = ingested(tmp_path, empty_db, capsys)
    second = write_results(tmp_path / "b", miou=55.0)
    sets = [(*second, 55.0), (*first, 40.0)]  # each kill lands on the other results
    for k, step in enumerate(STEPS):
        results, jsons, new = sets[k % 2]
        old = sets[(k + 1) % 2][2]
        killed_ingest(store, results, jsons, f"{step}@2")
        check_killed(store, jsons, step, old, new)
        summary = ingest(ABL, str(results), jsons, store.uri, str(store.art), progress=False)
        one_good_child_each(store, new)
        assert not pending(store)
        actions = summary["actions"]
        assert summary.get("pending_deleted", 0) == (STEPS.index(step) < 4), (step, summary)
        assert actions.get("repaired", 0) == (step == "completed"), (step, actions)
        assert ingest(ABL, str(results), jsons, store.uri, None,
                      progress=False)["actions"] == {"unchanged": 3}


@pytest.mark.slow
def test_sigkill_in_the_first_ingest_then_a_reingest_repairs(tmp_path, empty_db):  # noqa: F811
    """An empty store, killed while its first child is written: no half child is a data point;
    the re-ingest writes all three and deletes the leftover."""
    store = Store(tmp_path, empty_db)
    results, jsons = write_results(tmp_path)
    killed_ingest(store, results, jsons, "artifacts@1")
    assert store.points() == {} and len(pending(store)) == 1
    summary = ingest(ABL, str(results), jsons, store.uri, str(store.art), progress=False)
    assert summary["actions"] == {"created": 3} and summary["pending_deleted"] == 1
    one_good_child_each(store, 40.0)
    assert not pending(store)
