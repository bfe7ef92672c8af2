"""The search benchmark's recorded tables: any axes, seeds pooled (issue 21 item 5)."""
from __future__ import annotations

import csv

import pytest

from pipelines.benchmarks.search_replay import (BENCH_SPACE, BENCH_TABLE, load_table,
                                                row_setting)
from pipelines.search_space import load_search_space


@pytest.fixture(scope="module")
def spec():
    return load_search_space(BENCH_SPACE)


def test_a_row_reads_back_its_axes_as_yaml_scalars():
    row = {"run_id": "x", "variant": "pro_scale", "seed": "1", "max_iters": "100",
           "miou": "40.5", "gflops_total": "0.3", "schedule": "1-1-1", "trc": "false",
           "lpe": "true", "model.decode_head.num_queries": "10",
           "optim_wrapper.optimizer.lr": "0.0003", "other": ""}
    assert row_setting(row) == ("pro_scale", {
        "schedule": "1-1-1", "trc": False, "lpe": True, "model.decode_head.num_queries": 10,
        "optim_wrapper.optimizer.lr": 0.0003})


def test_seeds_of_a_setting_are_pooled_under_its_seed0_run_id(spec, tmp_path):
    axes = {"schedule": "2-3-4", "trc": "true", "lpe": "false",
            "model.decode_head.num_queries": "20", "optim_wrapper.optimizer.lr": "0.0001"}
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["run_id", "variant", "seed", "max_iters", "miou",
                                           "gflops_total", *axes])
        w.writeheader()
        for seed, miou in ((0, 40.0), (1, 44.0)):
            w.writerow({"run_id": f"r{seed}", "variant": "pro_scale", "seed": seed,
                        "max_iters": 100, "miou": miou, "gflops_total": 0.5, **axes})
    table = load_table(path, spec)
    (run_id, entry), = table.items()
    assert run_id.endswith("-seed0") and "s2-3-4" in run_id and "lr0.0001" in run_id
    assert entry["miou"] == pytest.approx(42.0) and entry["seeds"] == 2
    assert entry["gflops_total"] == 0.5


def test_the_recorded_benchmark_grid_is_complete(spec):
    """Every setting of the benchmark's space is recorded with 2 seeds, and the GFLOPs budget
    leaves at least 3x the training budget feasible (the issue's conditions)."""
    from pipelines.benchmarks.search_replay import run_cache
    from pipelines.search_runs import space_points

    table = load_table(BENCH_TABLE, spec)
    make_run = run_cache(spec)
    points = space_points(spec)
    assert len(points) >= 64
    assert {make_run(v, s).run_id for v, s in points} == set(table)
    assert {e["seeds"] for e in table.values()} == {2}
    feasible = [e for e in table.values() if e["gflops_total"] <= spec.gflops_budget]
    assert len(feasible) >= 3 * spec.max_trainings
    assert spec.max_trainings <= 0.25 * len(table)


def test_the_search_beats_random_sampling_on_the_recorded_grid(spec):
    """What the README claims of the benchmark (20 replay seeds, 16 trainings = 25 % of the
    grid): TPE's median hypervolume ratio >= 0.95, and TPE reaches >= 0.95 of the grid's
    hypervolume in more replays than random sampling does (the median lead over random is
    reported, not asserted: it moves with the seeds drawn, see the README)."""
    import logging

    import optuna

    from pipelines.benchmarks.search_replay import hypervolume, replay, run_cache

    optuna.logging.set_verbosity(logging.WARNING)
    table = load_table(BENCH_TABLE, spec)
    make_run = run_cache(spec)
    grid_hv = hypervolume([(r["miou"], r["gflops_total"]) for r in table.values()],
                          spec.gflops_budget)

    def ratios(sampler):
        out = []
        for seed in range(20):
            r = replay(spec, table, sampler, seed, make_run,
                       lambda run: table[run.run_id]["gflops_total"])
            assert r["distinct"] == r["trainings"] <= spec.max_trainings
            assert r["over_budget_trained"] == 0
            out.append(r["hv"] / grid_hv)
        return out

    import statistics

    tpe, rnd = ratios("tpe"), ratios("random")
    assert statistics.median(tpe) >= 0.95
    assert sum(x >= 0.95 for x in tpe) > sum(x >= 0.95 for x in rnd)
