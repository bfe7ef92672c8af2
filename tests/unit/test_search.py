"""The search loop: cost first (nothing over budget trains), constraints in both formats, reuse,
settling RUNNING trials of a dead head, trial and training budgets, journal-file resume.

Trainings are replayed from a **hand-made** table over the benchmark's space
(:func:`replay_table`: plausible GFLOPs and mIoU per setting, not measured): these tests check
the loop's invariants, which do not depend on the numbers. The real recorded grid
(``tests/data/grid_tiny.csv``) is the efficiency benchmark's; the FLOPs of the slow
no-training-over-budget test come from the real counter, and the slow workflow test
(``tests/workflow/test_search_resume.py``) trains for real.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import time

import optuna
import pytest

from pipelines.benchmarks.search_replay import SPACE, hypervolume, run_cache
from pipelines.search import (CONSTRAINT, ReplayExecutor, Search, SnakemakeExecutor,
                              open_study, set_gflops_constraint)
from pipelines.search_runs import FlopsCache, make_run, point_ablation
from pipelines.search_space import AxisSpace, load_search_space

SPEC = load_search_space(SPACE)
MAKE_RUN = run_cache(SPEC)


def replay_table(spec=SPEC, make_run=MAKE_RUN) -> dict:
    """Hand-made results of every setting of the space: GFLOPs shaped like the tiny model's at
    64x64 (the baseline 0.815; PRO-SCALE grows with its layers, LPE saves 0.12), mIoU rising with
    cost plus a fixed per-setting wiggle. Budget 0.65: the baseline and the deep schedules without
    LPE are over it."""
    from pipelines.search_runs import space_points

    table = {}
    for i, (variant, settings) in enumerate(space_points(spec)):
        if variant == "baseline":
            gflops = 0.815
        else:
            layers = sum(int(p) for p in settings["schedule"].split("-"))
            gflops = 0.43 + 0.03 * layers - 0.12 * settings["lpe"] + 0.001 * settings["trc"]
        miou = 8.0 + 9.0 * gflops + (i * 7 % 5) * 0.3
        table[make_run(variant, settings).run_id] = {"miou": round(miou, 3),
                                                     "gflops_total": round(gflops, 4)}
    return table


TABLE = replay_table()


@pytest.fixture(scope="module")
def spec():
    return SPEC


def rid(variant="pro_scale", **settings) -> str:
    """The current grid's run id of a setting (lpe and trc off unless given)."""
    if variant == "pro_scale":
        settings = {"trc": False, "lpe": False, **settings}
    return MAKE_RUN(variant, settings).run_id


def _variant(spec, **axes):
    """The spec restricted to PRO-SCALE with the given choices (and the baseline)."""
    pro = tuple(dataclasses.replace(a, choices=tuple(axes[a.axis])) if a.axis in axes else a
                for a in spec.variants["pro_scale"])
    return dataclasses.replace(spec, variants={"baseline": (), "pro_scale": pro})


def _search(spec, executor, cost=None, seed=0, storage=None, **changes):
    spec = dataclasses.replace(spec, seed=seed, **changes)
    study = open_study(spec, storage or optuna.storages.InMemoryStorage())
    cost = cost or (lambda run: TABLE[run.run_id]["gflops_total"])
    return Search(spec=spec, study=study, executor=executor, cost=cost, make_run=MAKE_RUN,
                  log=lambda m: None)


@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp"])
def test_no_trial_over_budget_ever_trains(spec, sampler):
    """Full space, GFLOPs as the real flops rule traced them for the recorded grid."""
    executor = ReplayExecutor(table=TABLE)
    search = _search(spec, executor, sampler=sampler, max_trials=12, max_trainings=None,
                     batch=4)
    search.run()
    over = {r for r, v in TABLE.items() if v["gflops_total"] > spec.gflops_budget}
    assert over and not over & set(executor.launched)
    infeasible = [t for t in search.study.trials if t.user_attrs["status"] == "infeasible"]
    assert infeasible and all(t.state.name == "COMPLETE" and t.constraints[CONSTRAINT] > 0
                              for t in infeasible)


@pytest.mark.slow
def test_no_trial_over_budget_ever_trains_real_flops(spec):
    """The real FLOPs counter prices each setting; those over budget are told infeasible and
    never reach the executor, for every sampler."""
    small = _variant(spec, schedule=["1-1-1"], trc=[False], lpe=[False])
    cache = FlopsCache(path=None, shape=(64, 64))
    traced = {}

    def cost(run):
        traced[run.run_id] = cache.gflops(run)["total"]
        return traced[run.run_id]

    for sampler in ("tpe", "nsga2", "gp"):
        executor = ReplayExecutor(table=TABLE)
        search = _search(small, executor, cost=cost, sampler=sampler, max_trials=6,
                         max_trainings=None, batch=2)
        search.run()
        over = {r for r, g in traced.items() if g > small.gflops_budget}
        assert over == {rid("baseline")}, traced  # 0.815 GFLOPs at 64x64, budget 0.65
        assert not over & set(executor.launched), (sampler, executor.launched)
        assert set(executor.launched) <= {rid(schedule="1-1-1")}
        assert len(executor.launched) == len(set(executor.launched))  # trained once at most
        for t in search.study.trials:
            assert t.state.name == "COMPLETE"
            g = t.user_attrs["gflops_total"]
            assert t.constraints[CONSTRAINT] == pytest.approx(g - small.gflops_budget)
            assert t.system_attrs["constraints"] == [pytest.approx(g - small.gflops_budget)]
            if g > small.gflops_budget:
                assert t.user_attrs["status"] == "infeasible"
                assert t.values == [small.infeasible_miou, pytest.approx(g)]
    assert cache.traced == len(traced) == 2  # cached: each model traced once for all samplers


def test_dashboard_reads_the_constraint(spec):
    from optuna_dashboard._serializer import serialize_frozen_trial

    study = optuna.create_study(directions=["maximize", "minimize"])
    trial = study.ask()
    set_gflops_constraint(study, trial, 0.9, 0.65)
    study.tell(trial, [0.0, 0.9])
    frozen = study.trials[0]
    out = serialize_frozen_trial(study._study_id, frozen, {})
    assert out["constraints"] == [pytest.approx(0.25)]
    assert frozen.constraints[CONSTRAINT] == pytest.approx(0.25)


def test_budgets_reuse_and_feasible_front(spec):
    executor = ReplayExecutor(table=TABLE, pretrained=(rid(schedule="1-1-1"),))
    search = _search(spec, executor, max_trials=30, max_trainings=5, batch=3)
    summary = search.run()
    assert len(executor.launched) == len(set(executor.launched)) <= 5
    assert rid(schedule="1-1-1") not in executor.launched  # reused, never trained
    trials = search.study.trials
    assert len(trials) <= 30 and all(t.state.name in ("COMPLETE", "FAIL") for t in trials)
    for t in trials:
        if t.user_attrs.get("status") in ("trained", "reused"):
            assert t.values[0] == TABLE[t.user_attrs["run_id"]]["miou"]
    assert all(p["gflops_total"] <= spec.gflops_budget for p in summary["pareto_front"])
    assert hypervolume([(p["miou"], p["gflops_total"]) for p in summary["pareto_front"]],
                       spec.gflops_budget) > 0


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_settle_running_trials_of_a_dead_head(spec):
    """A new head tells a finished trial, trains again one whose head died, fails (and asks
    again) one past its deadline; nothing stays RUNNING."""
    import socket

    done, dead, late = rid(schedule="2-2-2"), rid(schedule="1-1-1"), rid(schedule="1-1-1",
                                                                          trc=True)
    executor = ReplayExecutor(table=TABLE, pretrained=(done,))
    search = _search(spec, executor, max_trials=3, max_trainings=None, batch=3, retries=1)
    study = search.study
    dead_worker = f"{socket.gethostname()}:{_dead_pid()}"
    cases = {done: ("2-2-2", False, time.time() + 600),   # finished meanwhile: told
             dead: ("1-1-1", False, time.time() + 600),   # its head died: trained again
             late: ("1-1-1", True, time.time() - 1)}      # deadline passed: failed
    for run_id, (schedule, trc, deadline) in cases.items():
        settings = {"schedule": schedule, "trc": trc, "lpe": False, "seed": 0}
        trial = study.ask({"variant": optuna.distributions.CategoricalDistribution(
            ["baseline", "pro_scale"])})
        for k, v in {"worker": dead_worker, "run_id": run_id, "variant": "pro_scale",
                     "settings": json.dumps(settings), "gflops_total": 0.5,
                     "deadline": deadline, "status": "submitted",
                     "trained_by_search": True}.items():
            trial.set_user_attr(k, v)
    search.run()
    states = {t.user_attrs["run_id"]: t.state.name for t in study.trials[:3]}
    assert states == {done: "COMPLETE", dead: "COMPLETE", late: "FAIL"}
    assert executor.launched == [dead]
    assert not [t for t in study.trials if t.state.name == "RUNNING"]
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") is not None]
    assert len(retry) <= 1  # the failed one asked again (when the trial budget allowed)


def test_point_ablation_lists_exact_settings(spec):
    from pipelines.grid import expand_grid, validate_ablation

    points = [("pro_scale", {"schedule": "1-1-1", "trc": True, "lpe": False}),
              ("pro_scale", {"schedule": "3-3-3", "trc": False, "lpe": True}),
              ("baseline", {})]
    ablation = validate_ablation(point_ablation(spec.ablation, points, name="gen"))
    ids = sorted(r.run_id for r in expand_grid(ablation, repo="."))
    assert len(ids) == 3  # exactly the points, no product
    assert ids == sorted(make_run(spec, v, s).run_id for v, s in points)  # the grid's own ids


def test_axis_space_contains_and_distributions():
    axis = AxisSpace(name="q", axis="q", low=10, high=30, step=10, integer=True)
    assert axis.contains(20) and not axis.contains(25) and not axis.contains(True)
    assert axis.distribution().step == 10
    cat = AxisSpace(name="trc", axis="trc", choices=(False, True))
    assert cat.contains(True) and not cat.contains(1)


def test_snakemake_executor_grace_covers_every_attempt(spec):
    executor = SnakemakeExecutor(spec=spec)
    res = spec.ablation["resources"]
    once = res["train"]["runtime"] + res["evaluate"]["runtime"]
    attempts = spec.ablation["retries"] + 1
    assert executor.job_minutes() == once * attempts * (attempts + 1) / 2


def test_journal_file_resume_trains_nothing_twice(spec, tmp_path):
    """Optuna's journal file (the cluster storage without a server): a second head on the same
    file continues the study; the first head's trainings are not redone."""
    from pipelines.search import open_storage

    journal = str(tmp_path / "study.log")
    first = ReplayExecutor(table=TABLE, results=tmp_path / "results")
    _search(spec, first, storage=open_storage(journal), max_trials=8, max_trainings=None,
            batch=2).run()
    second = ReplayExecutor(table=TABLE, results=tmp_path / "results")
    search = _search(spec, second, storage=open_storage(journal), max_trials=16,
                     max_trainings=None, batch=2)
    search.run()
    assert len(search.study.trials) == 16
    assert not set(first.launched) & set(second.launched)
    assert all(t.state.name == "COMPLETE" for t in search.study.trials)
