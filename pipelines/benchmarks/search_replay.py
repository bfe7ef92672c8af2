"""Search efficiency: Pareto hypervolume vs. trainings launched, replayed against a recorded grid.

``tests/data/grid_tiny.csv`` holds a real grid trained once by the pipeline (25 settings of the
tiny model at 64x64: baseline + 6 PRO-SCALE schedules x TRC x LPE; ``tests/data/
record_grid_tiny.py``). The search (:class:`pipelines.search.Search`, the same code as
``python -m pipelines search``) runs on ``configs/search/grid_tiny.yaml`` with a
:class:`pipelines.search.ReplayExecutor`: a training returns the recorded result, and every
training the search asks for is counted. An infeasible trial (over the GFLOPs budget) costs
nothing, nor does a setting trained before (a search never trains a setting twice, and stops
when its training budget is spent; ``trained twice`` counts any training of a setting already
trained, over all seeds).

Hypervolume (pymoo) of the feasible front in (mIoU up, GFLOPs down), against a reference point
fixed by the problem, not by the data: mIoU 0 % and GFLOPs = the budget. The grid trains every
setting; the search is held to 40 % of the grid's trainings. Each sampler runs with >= 10 seeds;
the median and spread (min, quartiles, max) of its hypervolume ratio are printed, beside a
random sampler with the same budget.

    python -m pipelines.benchmarks.search_replay [--seeds 10] [--samplers tpe nsga2 gp random]
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "tests" / "data" / "grid_tiny.csv"
SPACE = REPO / "configs" / "search" / "grid_tiny.yaml"


def load_table(path: Path = TABLE, spec=None) -> dict[str, dict]:
    """run id -> {miou, gflops_total} of the recorded grid.

    The run id is the current grid's id of each row's setting (variant and axis columns), so
    the table outlives changes in how ids are spelled; ``recorded_run_id`` keeps the old one.
    """
    from pipelines.search_runs import make_runs
    from pipelines.search_space import load_search_space

    spec = spec or load_search_space(SPACE)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    points = []
    for row in rows:
        settings = {"seed": int(row["seed"])}
        if row["variant"] == "pro_scale":
            settings.update(schedule=row["schedule"], trc=row["trc"] == "true",
                            lpe=row["lpe"] == "true")
        points.append((row["variant"], settings))
    return {run.run_id: {"miou": float(row["miou"]), "gflops_total": float(row["gflops_total"]),
                         "recorded_run_id": row["run_id"]}
            for run, row in zip(make_runs(spec, points), rows)}


def run_cache(spec):
    """``make_run`` over a whole categorical space, expanded once (for replays)."""
    from pipelines.search_runs import make_runs, setting_key, space_points

    points = space_points(spec)
    runs = {setting_key(v, s): r for (v, s), r in zip(points, make_runs(spec, points))}
    return lambda variant, settings: runs[setting_key(variant, settings)]


def hypervolume(points, budget: float) -> float:
    """Hypervolume of the feasible (gflops <= budget) points ``[(miou, gflops)]``; reference
    point (mIoU 0, GFLOPs = budget), both objectives turned into minimisation."""
    import numpy as np
    from pymoo.indicators.hv import HV

    feasible = [(-m, g) for m, g in points if g <= budget and m > 0]
    if not feasible:
        return 0.0
    return float(HV(ref_point=np.array([0.0, budget]))(np.array(feasible)))


def replay(spec, table: dict, sampler: str, seed: int, make_run, cost) -> dict:
    """One search against the recorded grid; returns its trainings and hypervolume."""
    import dataclasses

    import optuna

    from pipelines.search import ReplayExecutor, Search, open_study

    spec = dataclasses.replace(spec, name=f"replay-{sampler}-{seed}",
                               sampler="tpe" if sampler == "random" else sampler, seed=seed)
    storage = optuna.storages.InMemoryStorage()
    study = open_study(spec, storage)
    if sampler == "random":
        study.sampler = optuna.samplers.RandomSampler(seed=seed)
    executor = ReplayExecutor(table=table)
    Search(spec=spec, study=study, executor=executor, cost=cost, make_run=make_run,
           log=lambda msg: None).run()
    points = [(table[r]["miou"], table[r]["gflops_total"]) for r in set(executor.launched)]
    over = [r for r in executor.launched if table[r]["gflops_total"] > spec.gflops_budget]
    return {"trainings": len(executor.launched), "distinct": len(set(executor.launched)),
            "hv": hypervolume(points, spec.gflops_budget), "over_budget_trained": len(over),
            "trials": len(study.trials)}


def quartiles(values):
    qs = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return min(values), qs[0], statistics.median(values), qs[2], max(values)


def main(argv=None) -> int:
    import logging

    import optuna

    from pipelines.search_space import load_search_space

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "gp", "random"])
    parser.add_argument("--space", default=str(SPACE))
    parser.add_argument("--table", default=str(TABLE))
    parser.add_argument("--json", help="write every replay's numbers here")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

    spec = load_search_space(args.space)
    table = load_table(Path(args.table), spec)
    make_run = run_cache(spec)

    def cost(run):  # the GFLOPs the real flops rule traced for this run when the grid ran
        return table[run.run_id]["gflops_total"]

    from pipelines.errors import UserError
    from pipelines.search_runs import space_points

    missing = [v for v, s in space_points(spec) if make_run(v, s).run_id not in table]
    if missing:
        raise UserError(f"{args.table}: {len(missing)} of {len(space_points(spec))} settings of "
                        "the space are not recorded yet; finish the recording (the command in "
                        "tests/data/record_grid_tiny.py resumes where it stopped)")
    grid_points = [(r["miou"], r["gflops_total"]) for r in table.values()]
    grid_hv = hypervolume(grid_points, spec.gflops_budget)
    n_grid = len(table)
    infeasible = sum(1 for _, g in grid_points if g > spec.gflops_budget)
    print(f"grid: {n_grid} settings, {n_grid} trainings ({infeasible} over the budget of "
          f"{spec.gflops_budget} GFLOPs), hypervolume {grid_hv:.4f} (reference: mIoU 0, "
          f"GFLOPs {spec.gflops_budget})")
    print(f"search: at most {spec.max_trainings} trainings "
          f"({100 * spec.max_trainings / n_grid:.0f} % of the grid), {spec.max_trials} trials, "
          f"batch {spec.batch}, {args.seeds} seeds per sampler")
    out = {"grid": {"trainings": n_grid, "hv": grid_hv, "budget": spec.gflops_budget},
           "samplers": {}}
    header = (f"{'sampler':<8}{'HV ratio median':>16}{'min':>7}{'q1':>7}{'q3':>7}{'max':>7}"
              f"{'trainings median':>18}{'% of grid':>10}{'trained twice':>15}"
              f"{'over budget trained':>21}{'trials median':>15}{'s/seed':>8}")
    print(header)
    for sampler in args.samplers:
        rows = []
        t0 = time.perf_counter()
        for seed in range(args.seeds):
            rows.append(replay(spec, table, sampler, seed, make_run, cost))
        elapsed = (time.perf_counter() - t0) / args.seeds
        ratios = [r["hv"] / grid_hv for r in rows]
        trainings = [r["trainings"] for r in rows]
        lo, q1, med, q3, hi = quartiles(ratios)
        med_t = statistics.median(trainings)
        twice = sum(r["trainings"] - r["distinct"] for r in rows)
        print(f"{sampler:<8}{med:16.3f}{lo:7.3f}{q1:7.3f}{q3:7.3f}{hi:7.3f}{med_t:18.1f}"
              f"{100 * med_t / n_grid:10.0f}{twice:15d}"
              f"{sum(r['over_budget_trained'] for r in rows):21d}"
              f"{statistics.median(r['trials'] for r in rows):15.1f}{elapsed:8.1f}", flush=True)
        out["samplers"][sampler] = {"runs": rows, "hv_ratio_median": med,
                                    "trainings_median": med_t}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
