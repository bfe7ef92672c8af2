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
from pipelines.search.cli import (
    CONSTRAINT,
    ReplayExecutor,
    Search,
    SnakemakeExecutor,
    open_study,
    set_gflops_constraint,
)
from pipelines.search.runs import FlopsCache, make_run, point_ablation
from pipelines.search.space import AxisSpace, load_search_space

SPEC = load_search_space(SPACE)
MAKE_RUN = run_cache(SPEC)


def replay_table(spec=SPEC, make_run=MAKE_RUN) -> dict:
    """Hand-made results of every setting of the space: GFLOPs shaped like the tiny model's at
    64x64 (the baseline 0.815; PRO-SCALE grows with its layers, LPE saves 0.12), mIoU rising with
    cost plus a fixed per-setting wiggle. Budget 0.65: the baseline and the deep schedules without
    LPE are over it."""
    from pipelines.search.runs import space_points

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
    assert infeasible and all(t.constraints[CONSTRAINT] > 0
                              and t.system_attrs["constraints"][0] > 0 for t in infeasible)
    _check_refused(search.study)


def _check_refused(study):
    """A refused trial is told its real GFLOPs and the mIoU floor measured before it (never
    mIoU 0, which squeezed the dashboard's front), PRUNED while nothing was measured."""
    measured = []
    for t in sorted(study.trials, key=lambda t: (t.datetime_complete, t.number)):
        if t.user_attrs.get("status") == "infeasible":
            if not measured:
                assert t.state.name == "PRUNED" and t.values is None
            else:
                assert t.state.name == "COMPLETE" and t.user_attrs["miou_told"] == "floor"
                assert t.values == [min(measured), pytest.approx(t.user_attrs["gflops_total"])]
        elif t.state.name == "COMPLETE":
            measured.append(t.values[0])
    assert not [t for t in study.trials if t.values and t.values[0] == 0]


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
            g = t.user_attrs["gflops_total"]
            assert t.constraints[CONSTRAINT] == pytest.approx(g - small.gflops_budget)
            assert t.system_attrs["constraints"] == [pytest.approx(g - small.gflops_budget)]
            if g > small.gflops_budget:
                assert t.user_attrs["status"] == "infeasible"
            else:
                assert t.state.name == "COMPLETE"
        _check_refused(search.study)
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
    assert len(trials) <= 30 and all(t.state.name in ("COMPLETE", "PRUNED", "FAIL")
                                     for t in trials)
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
    from pipelines.search.cli import open_storage

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
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in search.study.trials)


# ----------------------------------------------------------------------------- known settings
@pytest.mark.parametrize("sampler", ["tpe", "nsga2", "gp"])
def test_no_setting_trained_twice_and_known_ones_cost_nothing(spec, sampler):
    """Whatever the sampler proposes again (a setting the grid trained, an earlier trial's, one
    refused by cost) is answered from what is known: no training, no second pricing."""
    grid = rid(schedule="1-1-1")
    executor = ReplayExecutor(table=TABLE, pretrained=(grid,))
    priced = []

    def cost(run):
        priced.append(run.run_id)
        return TABLE[run.run_id]["gflops_total"]

    search = _search(spec, executor, cost=cost, sampler=sampler, max_trials=80,
                     max_trainings=8, batch=3)
    search.run()
    assert len(executor.launched) == len(set(executor.launched))  # never trained twice
    assert grid not in executor.launched  # the grid's run is reused
    over = {r for r, v in TABLE.items() if v["gflops_total"] > spec.gflops_budget}
    refused_priced = [r for r in priced if r in over]
    assert len(refused_priced) == len(set(refused_priced))  # a refusal is priced once
    trials = search.study.trials
    by_run: dict[str, list] = {}
    for t in trials:
        by_run.setdefault(t.user_attrs["run_id"], []).append(t)
    assert any(len(ts) > 1 for ts in by_run.values())  # the samplers did propose again
    for run_id, ts in by_run.items():
        trained = [t for t in ts if t.user_attrs["status"] == "trained"]
        assert len(trained) <= 1, run_id
        for t in ts:
            if t.user_attrs["status"] == "reused":
                assert t.values[0] == TABLE[run_id]["miou"] and t.state.name == "COMPLETE"
    _check_refused(search.study)


def test_earlier_trials_answer_a_later_head_without_results_on_disk(spec):
    """A second head on the same study, whose executor has no result on disk, tells a setting
    an earlier trial trained from that trial's values (no training)."""
    storage = optuna.storages.InMemoryStorage()
    first = ReplayExecutor(table=TABLE)
    _search(spec, first, storage=storage, max_trials=40, max_trainings=4, batch=2).run()
    second = ReplayExecutor(table=TABLE)  # knows nothing
    search = _search(spec, second, storage=storage, max_trials=80, max_trainings=7, batch=2)
    summary = search.run()
    assert len(first.launched) == 4 and not set(first.launched) & set(second.launched)
    assert summary["trainings"] == 7 and len(second.launched) == 3
    reused = [t for t in search.study.trials if t.user_attrs.get("reused_from", "")
              .startswith("trial")]
    for t in reused:
        assert t.user_attrs["run_id"] in first.launched
        assert t.values[0] == TABLE[t.user_attrs["run_id"]]["miou"]


def test_training_budget_stops_the_search(spec):
    """The trial cap is a safety net: with a cap far above, the search stops at exactly the
    training budget."""
    executor = ReplayExecutor(table=TABLE)
    search = _search(spec, executor, max_trials=500, max_trainings=6, batch=4)
    summary = search.run()
    assert len(executor.launched) == 6 == summary["trainings"]
    assert "training budget" in summary["stopped"]
    assert summary["trials"] < 500


def test_a_finite_space_stops_when_every_setting_is_known(spec):
    small = _variant(spec, schedule=["1-1-1", "2-2-2"], trc=[False], lpe=[False, True])
    executor = ReplayExecutor(table=TABLE)
    search = _search(small, executor, max_trials=500, max_trainings=None, batch=2)
    summary = search.run()
    feasible = {rid(schedule=s, lpe=lpe) for s in ("1-1-1", "2-2-2") for lpe in (False, True)}
    assert set(executor.launched) == feasible and len(executor.launched) == 4
    assert summary["stopped"] == "every setting of the space is known"
    assert summary["trials"] < 500


def test_front_lists_each_setting_once(spec):
    """Reused trials repeat a trained setting's values: Optuna's best trials then hold the same
    setting more than once, the search's front once."""
    executor = ReplayExecutor(table=TABLE)
    search = _search(spec, executor, max_trials=200, max_trainings=10, batch=2)
    summary = search.run()
    ids = [p["run_id"] for p in summary["pareto_front"]]
    assert ids and len(ids) == len(set(ids))
    best = [t.user_attrs["run_id"] for t in search.study.best_trials]
    assert set(ids) == set(best)
    assert len(best) > len(ids)  # the duplicates the front drops (seed 0 proposes again)
    points = [(TABLE[r]["miou"], TABLE[r]["gflops_total"]) for r in set(executor.launched)]
    for p in summary["pareto_front"]:  # nothing trained dominates a point of the front
        assert not any(m >= p["miou"] and g <= p["gflops_total"] and (m, g) !=
                       (p["miou"], p["gflops_total"]) for m, g in points)


def test_progress_lines_on_stdout(spec, capsys):
    """One line per proposed setting (trial, setting, GFLOPs, train / reused / refused) and
    one per finished training (mIoU, elapsed, trainings left, time left), printed at once."""
    executor = ReplayExecutor(table=TABLE, pretrained=(rid(schedule="1-1-1"),))
    spec = dataclasses.replace(spec, seed=0, max_trials=60, max_trainings=4, batch=2)
    study = open_study(spec, optuna.storages.InMemoryStorage())
    search = Search(spec=spec, study=study, executor=executor, make_run=MAKE_RUN,
                    cost=lambda run: TABLE[run.run_id]["gflops_total"])  # default log: stdout
    search.run()
    lines = capsys.readouterr().out.splitlines()
    proposed = [line for line in lines if re_match(r"trial \d+: (baseline|pro_scale)", line)]
    assert len(proposed) == len(study.trials)
    for line in proposed:
        assert " GFLOPs | " in line
        assert line.rsplit(" | ", 1)[1].split(":")[0].split()[0] in ("train", "reused",
                                                                     "refused")
    assert any(" | refused: over the budget of 0.65 GFLOPs" in line for line in proposed)
    finished = [line for line in lines if re_match(r"trial \d+ trained ", line)]
    assert len(finished) == 4
    assert all("mIoU" in line and " left of 4 | about " in line for line in finished)
    assert finished[-1].split(" | ")[1].endswith("0 left of 4")
    assert lines[-1].startswith("search ") and "training budget spent" in lines[-1]


def re_match(pattern: str, line: str) -> bool:
    import re

    return re.match(pattern, line) is not None


def test_generation_targets_flops_json(spec):
    """A generation builds each run's flops.json beside its metrics.json (its MLflow run then
    has gflops_total, like a grid run's), and its run.json (the search's ingest reads it; the
    grid's per-run jobs do not ask for it)."""
    from pipelines.search.runs import result_paths

    run = make_run(spec, "pro_scale", {"schedule": "1-1-1", "trc": False, "lpe": False})
    ablation = point_ablation(spec.ablation, [("pro_scale", dict(run.settings))])
    targets = SnakemakeExecutor(spec=spec).targets(ablation, run)
    paths = result_paths(ablation, run)
    assert targets[:3] == [str(paths.run_json), str(paths.metrics), str(paths.flops)]


# ----------------------------------------------------------------------------- heartbeats
def test_stale_heartbeat_fails_and_asks_again(spec, tmp_path, monkeypatch):
    """RDB storages: a RUNNING trial whose head (on another host: no process to check) stopped
    beating is failed by Optuna's ``fail_stale_trials`` and asked again; one whose head beats is
    left to it."""
    from pipelines.search import study as search_study

    monkeypatch.setattr(search_study, "GRACE_S", 1)
    executor = ReplayExecutor(table=TABLE)
    spec = dataclasses.replace(spec, retries=1)  # the storage's retry of a stale trial
    search = _search(spec, executor, max_trials=3, max_trainings=None, batch=3,
                     storage=search_study.open_storage(f"sqlite:///{tmp_path / 's.db'}", spec))
    study = search.study
    numbers = {}
    for worker in ("elsewhere:1", "elsewhere:2"):
        trial = search_study.ask(study)
        trial.suggest_categorical("variant", ["baseline", "pro_scale"])
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("deadline", time.time() + 3600)
        search_study.Heartbeat(study, worker).beat()
        numbers[worker] = trial.number
    time.sleep(2.5)
    search_study.Heartbeat(study, "elsewhere:2").beat()  # this head is alive
    assert search.settle_running() == []
    trials = study.get_trials()
    assert trials[numbers["elsewhere:1"]].state.name == "FAIL"
    assert trials[numbers["elsewhere:2"]].state.name == "RUNNING"
    retry = [t for t in trials if t.user_attrs.get("retry_of") == numbers["elsewhere:1"]]
    assert [t.state.name for t in retry] == ["WAITING"]


def test_private_optuna_api_in_one_place():
    """``study._storage`` and ``_trial_id`` appear only in search_study's last section, which
    says why each has no public replacement."""
    import re

    from tests.conftest import REPO

    for path in sorted((REPO / "pipelines").glob("search*.py")):
        code = path.read_text()
        if path.name == "search_study.py":
            code = code.split("# --------------------------------------------------------------"
                              "--------------- the storage's own calls")[0]
            code = code.split('"""', 2)[2]  # past the docstring that names them
        assert not re.search(r"\._storage\b|\._trial_id\b|\._study_id\b", code), path.name


def test_the_search_names_its_dashboard_command():
    from pipelines.search.cli import dashboard_command

    assert dashboard_command("sqlite:///results/search/x/study.db") == \
        "optuna-dashboard sqlite:///results/search/x/study.db"
    assert dashboard_command("journal:/shared/my study.log") == \
        "optuna-dashboard '/shared/my study.log'"
