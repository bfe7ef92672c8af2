"""Search efficiency: Pareto hypervolume vs. trainings launched, replayed against a recorded grid.

The benchmark is ``tests/data/grid_lr.csv``: a real grid trained once by the
pipeline's own Snakefile (``tests/data/record_grid.py``), 64 PRO-SCALE settings of the tiny
R-18 Mask2Former at 64x64 (4 schedules x LPE x ``num_queries`` x 4 learning rates 1e-5..3e-4),
2 seeds each, pooled (a replayed training returns the setting's mean mIoU). Its design and both
budgets were fixed before any of its trainings ran (``tests/data/grid_lr.yaml`` says why).
``tests/data/grid_medium.csv`` (TRC in place of the two low learning rates) is the first such
grid, on which random sampling comes within 0.04 of TPE's median (``--space
configs/search/grid_medium.yaml --table tests/data/grid_medium.csv``). The search
(:class:`pipelines.search.cli.Search`, the same code as ``python -m pipelines search``) runs on
the space's YAML with a :class:`pipelines.search.cli.ReplayExecutor`: a training returns the
recorded result, and every training the search asks for is counted. An infeasible trial (over
the GFLOPs budget) costs nothing, nor does a setting trained before (a search never trains a
setting twice, and stops when its training budget is spent; ``trained twice`` counts any
training of a setting already trained).

Hypervolume (pymoo) of the feasible front in (mIoU up, GFLOPs down), against a reference point
fixed by the problem, not by the data: mIoU 0 % and GFLOPs = the budget. The grid trains every
setting; the search is held to its space's training budget (25 % of the grid). Each sampler
runs with ``--seeds`` replay seeds (default 20); the median and spread (min, quartiles, max) of
its hypervolume ratio are printed, then the verdict: the space's own sampler must reach a
median ratio of 0.95 and lead random sampling's median by 0.05 at the same budget (printed with
a bootstrap 95 % interval of that lead: how far other replay seeds could move it).
``tests/data/grid_tiny.csv`` (25 settings, one seed) is the smaller grid the search tests use
(``--space configs/search/grid_tiny.yaml --table tests/data/grid_tiny.csv``).

    python -m pipelines.benchmarks.search_replay [--seeds 20] [--samplers tpe nsga2 gp random]

``--fidelity`` replays the multi-fidelity search instead (:mod:`pipelines.benchmarks.fidelity_replay`
says what it measures):

    python -m pipelines.benchmarks.search_replay --fidelity --seeds 50 [--budgets 8 10 16]
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import statistics
import time
import warnings
from pathlib import Path

from pipelines.search.promotion import hypervolume  # the replay's measure (re-exported)

REPO = Path(__file__).resolve().parents[2]
#: the small recorded grid (25 settings, one seed): the search tests' space
TABLE = REPO / "tests" / "data" / "grid_tiny.csv"
SPACE = REPO / "configs" / "search" / "grid_tiny.yaml"
#: the benchmark a search must beat chance on: 64 settings x 2 seeds, several kinds
#: of axes; the command's default
BENCH_TABLE = REPO / "tests" / "data" / "grid_lr.csv"
BENCH_SPACE = REPO / "configs" / "search" / "grid_lr.yaml"
#: the first recorded benchmark grid (TRC and two learning rates), kept and tested beside it
MEDIUM_TABLE = REPO / "tests" / "data" / "grid_medium.csv"
MEDIUM_SPACE = REPO / "configs" / "search" / "grid_medium.yaml"
#: the learning-curve grid (grid_lr's settings, val mIoU every 12 of 100 iterations) and its
#: multi-fidelity search (``--fidelity``)
CURVES_TABLE = REPO / "tests" / "data" / "grid_curves.csv"
CURVES_SPACE = REPO / "configs" / "search" / "grid_curves.yaml"
#: what the default sampler must reach: median hypervolume ratio, and its lead over random
#: sampling's median at the same training budget
TARGET_RATIO, TARGET_LEAD = 0.95, 0.05


#: the columns of a recorded table that are not axes (``tests/data/record_grid.py`` writes them)
RESULT_COLUMNS = ("run_id", "variant", "seed", "max_iters", "miou", "gflops_total",
                  "gflops_pixel_decoder", "gflops_encoder")


def row_setting(row: dict) -> tuple[str, dict]:
    """A table row's variant and axis settings (every column that is not a result, each value
    a YAML scalar: ``true``, ``0.0001``, ``1-1-1``; empty where the variant has no such axis)."""
    import yaml

    settings = {}
    for column, value in row.items():
        if column in RESULT_COLUMNS or value in ("", None):
            continue
        settings[column] = yaml.safe_load(value)
    return row["variant"], settings


def load_table(path: Path = TABLE, spec=None) -> dict[str, dict]:
    """run id -> {miou, gflops_total, seeds, recorded_run_id} of the recorded grid, seeds pooled.

    Rows of one setting (variant and axis columns, any seed) are pooled: mIoU is their mean, so
    a replayed training returns what the setting scores over every recorded seed. The run id is
    the current grid's id of the setting at seed 0 (the search's own), so the table outlives
    changes in how ids are spelled; ``recorded_run_id`` keeps the first recorded one.
    """
    from pipelines.search.runs import make_runs
    from pipelines.search.space import load_search_space

    spec = spec or load_search_space(SPACE)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    pooled: dict[str, dict] = {}
    for row in rows:
        variant, settings = row_setting(row)
        key = json.dumps([variant, settings], sort_keys=True, default=str)
        entry = pooled.setdefault(key, {"point": (variant, settings), "mious": [], "row": row})
        entry["mious"].append(float(row["miou"]))
    entries = list(pooled.values())
    runs = make_runs(spec, [e["point"] for e in entries])
    return {run.run_id: {"miou": statistics.fmean(e["mious"]), "seeds": len(e["mious"]),
                         "gflops_total": float(e["row"]["gflops_total"]),
                         "recorded_run_id": e["row"]["run_id"]}
            for run, e in zip(runs, entries)}


def run_cache(spec):
    """``make_run`` over a whole categorical space, expanded once (for replays)."""
    from pipelines.search.runs import make_runs, setting_key, space_points

    points = space_points(spec)
    runs = {setting_key(v, s): r for (v, s), r in zip(points, make_runs(spec, points))}
    return lambda variant, settings: runs[setting_key(variant, settings)]


def replay(spec, table: dict, sampler: str, seed: int, make_run, cost) -> dict:
    """One search against the recorded grid; returns its trainings and hypervolume."""
    import optuna

    from pipelines.search.cli import ReplayExecutor, Search, open_study

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


def lead_interval(ratios, random_ratios, resamples: int = 5000) -> tuple[float, float]:
    """95 % percentile-bootstrap interval (scipy, fixed seed) of median(ratios) minus
    median(random_ratios), the replays of each sampler resampled independently: how far the
    median lead could move with other replay seeds."""
    import numpy as np
    from scipy.stats import bootstrap

    def lead(a, b, axis=-1):
        return np.median(a, axis=axis) - np.median(b, axis=axis)

    if len(ratios) < 2 or len(random_ratios) < 2:
        value = float(np.median(ratios) - np.median(random_ratios))
        return value, value
    ci = bootstrap((np.asarray(ratios), np.asarray(random_ratios)), lead, vectorized=True,
                   paired=False, n_resamples=resamples, method="percentile",
                   random_state=0).confidence_interval
    return float(ci.low), float(ci.high)


def quartiles(values):
    qs = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return min(values), qs[0], statistics.median(values), qs[2], max(values)


def main(argv=None) -> int:
    import optuna

    from pipelines.search.space import load_search_space

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--samplers", nargs="+", default=["tpe", "nsga2", "gp", "random"])
    parser.add_argument("--space", default=str(BENCH_SPACE))
    parser.add_argument("--table", default=str(BENCH_TABLE))
    parser.add_argument("--json", help="write every replay's numbers here")
    parser.add_argument("--fidelity", action="store_true",
                        help="multi-fidelity benchmark on the learning-curve grid "
                             "(default space and table: grid_curves)")
    parser.add_argument("--budgets", nargs="+", type=int, default=[8, 10, 16],
                        help="--fidelity: training budgets (full-training equivalents)")
    parser.add_argument("--partial", action="store_true",
                        help="--fidelity: replay the settings recorded so far")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(logging.WARNING)

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if args.fidelity:
        if args.space == str(BENCH_SPACE):
            args.space = str(CURVES_SPACE)
        if args.table == str(BENCH_TABLE):
            args.table = str(CURVES_TABLE)
        from pipelines.benchmarks.fidelity_replay import fidelity_main

        return fidelity_main(args)

    spec = load_search_space(args.space)
    table = load_table(Path(args.table), spec)
    make_run = run_cache(spec)

    def cost(run):  # the GFLOPs the real flops rule traced for this run when the grid ran
        return table[run.run_id]["gflops_total"]

    from pipelines.errors import UserError
    from pipelines.search.runs import space_points

    missing = [v for v, s in space_points(spec) if make_run(v, s).run_id not in table]
    if missing:
        raise UserError(f"{args.table}: {len(missing)} of {len(space_points(spec))} settings of "
                        "the space are not recorded yet; finish the recording (the command in "
                        "tests/data/record_grid.py resumes where it stopped)")
    grid_points = [(r["miou"], r["gflops_total"]) for r in table.values()]
    grid_hv = hypervolume(grid_points, spec.gflops_budget)
    n_grid = len(table)
    seeds = sorted({r["seeds"] for r in table.values()})
    infeasible = sum(1 for _, g in grid_points if g > spec.gflops_budget)
    print(f"grid: {n_grid} settings x {'/'.join(map(str, seeds))} seed(s), pooled (a replayed "
          f"training returns the setting's mean mIoU over its seeds); {infeasible} over the "
          f"budget of {spec.gflops_budget} GFLOPs, {n_grid - infeasible} feasible; hypervolume "
          f"{grid_hv:.4f} (reference: mIoU 0, GFLOPs {spec.gflops_budget})")
    print(f"search: at most {spec.max_trainings} trainings of settings "
          f"({100 * spec.max_trainings / n_grid:.0f} % of the grid), {spec.max_trials} trials, "
          f"batch {spec.batch}, {args.seeds} replay seeds per sampler")
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
    default = spec.sampler
    if default in out["samplers"] and "random" in out["samplers"]:
        ratio = out["samplers"][default]["hv_ratio_median"]
        lead = ratio - out["samplers"]["random"]["hv_ratio_median"]
        share = out["samplers"][default]["trainings_median"] / n_grid
        met = ratio >= TARGET_RATIO and lead >= TARGET_LEAD and share <= 0.25
        low, high = lead_interval([r["hv"] / grid_hv for r in out["samplers"][default]["runs"]],
                                  [r["hv"] / grid_hv for r in out["samplers"]["random"]["runs"]])
        out["verdict"] = {"sampler": default, "hv_ratio_median": ratio, "lead_over_random": lead,
                          "lead_interval_95": [low, high], "share_of_grid": share, "met": met}
        print(f"verdict: {default} median HV ratio {ratio:.3f} (target >= {TARGET_RATIO}), "
              f"{lead:+.3f} over random (target >= +{TARGET_LEAD}; bootstrap 95 % interval "
              f"{low:+.3f} .. {high:+.3f}), at {100 * share:.0f} % of the grid's trainings "
              f"(target <= 25 %): {'met' if met else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
