"""Multi-fidelity search: Pareto order, ASHA-style promotion, the fidelity block, and a replay
against the recorded learning curves (tests/data/grid_curves*.csv)."""
from __future__ import annotations

import itertools
import json
import random

import pytest

from pipelines.benchmarks.search_replay import hypervolume
from pipelines.errors import UserError
from pipelines.search.promotion import hv_contributions, pareto_order, pareto_ranks, promotable
from pipelines.search.rungs import parse_fidelity


def _random_points(seed, n=12):
    rng = random.Random(seed)
    return [(round(rng.uniform(0, 60), 1), round(rng.uniform(0.1, 0.6), 2)) for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_pareto_ranks_are_non_dominated_sorting(seed):
    points = _random_points(seed)
    ranks = pareto_ranks(points)

    def dominates(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and a != b

    for i, j in itertools.permutations(range(len(points)), 2):
        if dominates(points[i], points[j]):
            assert ranks[i] < ranks[j]
    for i in range(len(points)):  # every point below the front is dominated by the one above
        if ranks[i]:
            assert any(dominates(points[j], points[i]) for j in range(len(points))
                       if ranks[j] == ranks[i] - 1)


@pytest.mark.parametrize("seed", range(5))
def test_hv_contribution_is_what_the_front_loses_without_the_point(seed):
    points = _random_points(seed)
    ranks, contrib = pareto_ranks(points), hv_contributions(points, 0.65)
    front = [p for p, r in zip(points, ranks) if r == 0]
    whole = hypervolume(front, 0.65)
    for p, r, c in zip(points, ranks, contrib):
        if r == 0:
            rest = [q for q in front if q != p]
            assert c == pytest.approx(whole - hypervolume(rest, 0.65), abs=1e-9)


def test_promotion_takes_the_first_1_over_eta_in_pareto_order_once():
    results = {"a": 50.0, "b": 40.0, "c": 30.0, "d": 10.0, "e": 45.0}
    gflops = {"a": 0.5, "b": 0.3, "c": 0.2, "d": 0.6, "e": 0.5}
    order = pareto_order([(results[k], gflops[k]) for k in results], 0.65)
    assert [list(results)[i] for i in order][-1] == "d"  # dominated by every other
    assert promotable(results, gflops, set(), 2, 0.65) == [list(results)[i] for i in order[:2]]
    first = promotable(results, gflops, set(), 2, 0.65)[0]
    assert first not in promotable(results, gflops, {first}, 2, 0.65)
    assert promotable({"a": 1.0}, {"a": 0.1}, set(), 2, 0.65) == []  # floor(1 / 2) = 0


def test_the_fidelity_block_adds_the_full_budget_and_refuses_bad_rungs():
    f = parse_fidelity({"rungs": [12, 24, 48], "eta": 3}, 100)
    assert f.rungs == (12, 24, 48, 100) and f.eta == 3 and f.full == 100
    assert [f.cost(k) for k in range(4)] == [12, 12, 24, 52]
    assert parse_fidelity(None, 100) is None
    for bad, words in (({"rungs": [24, 12]}, "increasing"), ({"rungs": [12, 200]}, "increasing"),
                       ({"rungs": "12"}, "list of iterations"), ({"rungs": [12], "eta": 1},
                                                                  "eta"),
                       ({"rungs": [12], "proposals": "grid"}, "proposals"),
                       ({"rungs": [12], "speed": 1}, "unknown key")):
        with pytest.raises(UserError, match=words):
            parse_fidelity(bad, 100)


# ----------------------------------------------------------------------------- the replay
@pytest.fixture(scope="module")
def curves_grid():
    """The recorded learning-curve grid: its space, table, curves and recorded settings."""
    from pipelines.benchmarks.fidelity_replay import load_curves
    from pipelines.benchmarks.search_replay import (
        CURVES_SPACE,
        CURVES_TABLE,
        load_table,
        run_cache,
    )
    from pipelines.search.runs import space_points
    from pipelines.search.space import load_search_space

    spec = load_search_space(CURVES_SPACE)
    table, curves = load_table(CURVES_TABLE, spec), load_curves(CURVES_TABLE, spec)
    make_run = run_cache(spec)
    points = [(v, s) for v, s in space_points(spec) if make_run(v, s).run_id in table]
    return spec, table, curves, make_run, points


def _recorded_only(make_run, recorded):
    """``make_run`` refusing a setting the grid has not recorded (the search asks again)."""
    def recorded_run(variant, settings):
        run = make_run(variant, settings)
        if run.run_id not in recorded:
            raise UserError("not recorded")
        return run
    return recorded_run


def test_the_curves_are_one_training_each(curves_grid):
    """Every recorded run validated at every rung of its one schedule, and its last
    validation is the run's own evaluation (the same weights, the same val set)."""
    spec, table, curves, _, points = curves_grid
    assert len(points) >= 16
    for run_id, row in table.items():
        assert sorted(curves[run_id]) == [12, 24, 36, 48, 60, 72, 84, 96, 100]
        assert curves[run_id][100] == pytest.approx(row["miou"], abs=0.011)


@pytest.mark.parametrize("proposals", ["sampler", "random"])
def test_a_replayed_search_never_trains_an_iteration_twice(curves_grid, proposals):
    import dataclasses

    import optuna

    from pipelines.benchmarks.fidelity_replay import CurveReplayExecutor
    from pipelines.search.fidelity import FidelitySearch
    from pipelines.search.study import open_study

    spec, table, curves, make_run, points = curves_grid
    recorded = {make_run(v, s).run_id for v, s in points}
    recorded_run = _recorded_only(make_run, recorded)

    spec = dataclasses.replace(spec, name=f"t-{proposals}")
    study = open_study(spec, optuna.storages.InMemoryStorage())
    executor = CurveReplayExecutor(curves)
    spent = []
    budget = 3 * spec.fidelity.full
    search = FidelitySearch(
        spec=spec, study=study, fidelity=dataclasses.replace(spec.fidelity, proposals=proposals),
        executor=executor, cost=lambda run: table[run.run_id]["gflops_total"],
        make_run=recorded_run, budget_iters=budget, seed=3, space_ids=points,
        on_job=lambda it, s: spent.append(it))
    out = search.run()
    # the budget: stops at the first job that reaches it (or when every feasible setting is
    # trained to the end); every job's iterations counted
    assert spent == sorted(spent) and spent[-1] == out["iterations"] and spent[-2] < budget
    feasible = {r for r in recorded if table[r]["gflops_total"] <= spec.gflops_budget}
    assert out["iterations"] >= budget or set(executor.at) == feasible and set(
        executor.at.values()) == {spec.fidelity.full}
    assert sum(stop - start for _, start, stop in executor.jobs) == out["iterations"]
    by_run: dict = {}
    for run_id, start, stop in executor.jobs:  # each job continues where the last one stopped
        assert start == by_run.get(run_id, 0) and stop in spec.fidelity.rungs
        by_run[run_id] = stop
    trials = study.get_trials()
    assert not [t for t in trials if t.state.name == "RUNNING"]
    for t in trials:
        gflops = t.user_attrs["gflops_total"]
        if gflops > spec.gflops_budget:  # cost first: refused, never trained
            assert t.state.name == "PRUNED" and t.user_attrs["status"] == "infeasible"
            assert t.user_attrs["run_id"] not in by_run
        elif t.state.name == "COMPLETE":
            assert by_run[t.user_attrs["run_id"]] == spec.fidelity.full
            assert t.values == [curves[t.user_attrs["run_id"]][100], gflops]
        else:  # stopped below the full budget, its rung results kept
            assert t.state.name == "PRUNED" and t.user_attrs["status"] == "stopped"
            rungs = json.loads(t.user_attrs["rungs"])
            assert max(map(int, rungs)) == by_run[t.user_attrs["run_id"]] < 100
            assert all(t.user_attrs[f"rung_{r}"] == v for r, v in rungs.items())
    # promotion (ASHA): a setting continues from rung r only once r holds at least eta results
    # (floor(n / eta) >= 1), or when a used-up space spends the rest of the budget
    reached: dict = {}
    for run_id, start, stop in executor.jobs:
        if start and not search.exhausted:
            assert sum(1 for r in reached.values() if r >= start) >= spec.fidelity.eta
        reached[run_id] = stop
    if search.exhausted:
        assert {r for r in recorded if table[r]["gflops_total"] <= spec.gflops_budget} <= set(
            by_run)


def test_a_rung_that_is_not_a_checkpoint_iteration_is_refused_before_any_trial(tmp_path):
    """``search --check`` (and the search) run this before any trial: one line (exit 2)."""
    import dataclasses

    from pipelines.benchmarks.search_replay import CURVES_SPACE
    from pipelines.search.rungs import check_rungs
    from pipelines.search.space import load_search_space

    spec = load_search_space(CURVES_SPACE, check_runs=False)
    check_rungs(spec)  # 12, 24, 48: multiples of the grid's interval 12
    bad = dataclasses.replace(spec, fidelity=parse_fidelity({"rungs": [10, 24]}, 100))
    with pytest.raises(UserError) as err:
        check_rungs(bad)
    assert str(err.value) == (
        "search space key 'fidelity.rungs' (variant pro_scale): rung 10: not a checkpoint "
        "and validation iteration (default_hooks.checkpoint.interval=12, "
        "train_cfg.val_interval=12); use a multiple of both")

def test_a_new_head_picks_up_where_a_dead_one_stopped(curves_grid):
    """The first head dies after a few jobs (its trials left RUNNING); a second one restores
    the study's rung results and spends the rest of the budget; the shared replay executor
    refuses any iteration trained twice."""
    import dataclasses

    import optuna

    from pipelines.benchmarks.fidelity_replay import CurveReplayExecutor
    from pipelines.search.fidelity import FidelitySearch
    from pipelines.search.study import open_study

    spec, table, curves, make_run, points = curves_grid
    recorded = {make_run(v, s).run_id for v, s in points}
    recorded_run = _recorded_only(make_run, recorded)

    class Died(Exception):
        pass

    def die_after_five(spent, search):
        if len(executor.jobs) == 5:
            raise Died

    spec = dataclasses.replace(spec, name="t-restore")
    study = open_study(spec, optuna.storages.InMemoryStorage())
    executor = CurveReplayExecutor(curves)
    budget = 3 * spec.fidelity.full
    kwargs = dict(spec=spec, study=study, fidelity=spec.fidelity, executor=executor,
                  cost=lambda run: table[run.run_id]["gflops_total"], make_run=recorded_run,
                  budget_iters=budget, seed=5, space_ids=points)
    first = FidelitySearch(**kwargs, on_job=die_after_five)
    with pytest.raises(Died):
        first.run()
    assert [t.state.name for t in study.trials].count("RUNNING") >= 1
    second = FidelitySearch(**kwargs)
    second.restore()
    assert second.spent == first.spent and set(second.settings) == set(first.settings)
    assert {k: s.rungs for k, s in second.settings.items()} == {
        k: s.rungs for k, s in first.settings.items()}
    out = second.run()
    assert out["iterations"] == sum(stop - start for _, start, stop in executor.jobs)
    assert not [t for t in study.trials if t.state.name == "RUNNING"]


def test_the_replay_runs_at_other_gflops_budgets_and_in_worker_processes(tmp_path):
    """``fidelity_replay --gflops A B --workers 2``: one comparison per GFLOPs budget, and the
    seeds replayed in forked processes give what one process gives."""
    import json

    from pipelines.benchmarks.fidelity_replay import main

    args = ["--partial", "--seeds", "2", "--budgets", "2", "--gflops", "0.55", "0.65"]
    assert main(args + ["--workers", "2", "--json", str(tmp_path / "two.json")]) == 0
    assert main(args + ["--workers", "1", "--json", str(tmp_path / "one.json")]) == 0
    two = json.loads((tmp_path / "two.json").read_text())["gflops"]
    one = json.loads((tmp_path / "one.json").read_text())["gflops"]
    assert set(two) == {"0.55", "0.65"}
    assert two["0.55"]["feasible"] < two["0.65"]["feasible"]
    assert two["0.55"]["gflops_budget"] == 0.55
    for budget in two:
        for name in ("full-tpe", "promo-random", "promo-sampler"):
            assert [r["curve"] for r in two[budget]["runs"][name]] == \
                [r["curve"] for r in one[budget]["runs"][name]]


@pytest.mark.parametrize("args, says", [
    (["--gflops", "0.1"], "no recorded setting is within it"),
    (["--gflops", "-1"], "no recorded setting is within it"),
    (["--workers", "0"], "give 1 or more processes"),
])
def test_a_replay_with_nothing_to_replay_is_one_line(args, says, capsys):
    from pipelines.benchmarks.fidelity_replay import main

    assert main(["--seeds", "1", "--budgets", "1", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0]
