"""Concurrent search workers on one Optuna study in a real PostgreSQL server (loopback).

Three worker processes run the same search (``pipelines.search.cli.Search``) on one study; their
trainings are replayed from the hand-made table of ``tests/unit/test_search.py`` through a
results folder they share (as the real workers share ``results/``). No trial may be lost (every trial finished, told by exactly one
worker), none duplicated (no trial number told twice, no run trained twice), none left RUNNING.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.services.test_postgres import postgres_uri  # noqa: F401  (fixture)

pytestmark = pytest.mark.services

WORKER = """
import dataclasses, json, sys
import optuna
from pipelines.benchmarks.search_replay import SPACE
from pipelines.search.cli import ReplayExecutor, Search, open_storage, open_study
from pipelines.search.space import load_search_space

url, results, out, seed = sys.argv[1:5]
optuna.logging.set_verbosity(optuna.logging.WARNING)
from tests.unit.test_search import TABLE as table
spec = dataclasses.replace(load_search_space(SPACE), name="concurrent", max_trials=24,
                           max_trainings=None, batch=2, seed=int(seed))
study = open_study(spec, open_storage(url))
executor = ReplayExecutor(table=table, results=results)
search = Search(spec=spec, study=study, executor=executor,
                cost=lambda run: table[run.run_id]["gflops_total"], log=lambda m: None)
search.run()
json.dump({"told": search.told, "launched": executor.launched}, open(out, "w"))
"""


def test_concurrent_workers_lose_and_duplicate_nothing(postgres_uri, tmp_path):  # noqa: F811
    import optuna

    procs = [subprocess.Popen([sys.executable, "-c", WORKER, postgres_uri,
                               str(tmp_path / "results"), str(tmp_path / f"w{i}.json"), str(i)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(3)]
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
    reports = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(3)]
    told = [n for r in reports for n in r["told"]]
    launched = [r_id for r in reports for r_id in r["launched"]]
    study = optuna.load_study(study_name="concurrent", storage=postgres_uri)
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers)
    assert sorted(told) == sorted(numbers), "a trial was lost or told twice"
    assert not [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]
    assert 24 <= len(trials) <= 24 + 2  # the shared budget (three workers may ask at once)
    assert len(launched) == len(set(launched)), f"a run was trained twice: {launched}"
    for t in trials:
        assert t.state.name == "COMPLETE", (t.number, t.user_attrs)
        rid = t.user_attrs["run_id"]
        if t.user_attrs["status"] != "infeasible":
            assert t.values[0] == pytest.approx(json.loads(
                (tmp_path / "results" / f"{rid}.json").read_text())["miou"])
