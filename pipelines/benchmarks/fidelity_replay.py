"""The multi-fidelity search replayed against a recorded learning-curve grid.

``python -m pipelines.benchmarks.fidelity_replay`` replays the multi-fidelity search
(:mod:`pipelines.search.fidelity`) against the learning-curve grid ``tests/data/grid_curves.csv`` + ``grid_curves.rungs.csv`` (grid_lr's
settings, val mIoU every 12 of 100 iterations, seeds pooled per iteration) and counts training
**iterations**: a rung job costs the iterations from the setting's last rung to the next one, a
full-fidelity training costs R. Three searches per replay seed (``--seeds``, default 20; the
issue's comparison uses 50): full-fidelity TPE (today's ``Search``), random proposals with
Pareto-aware promotion (MOASHA's design, cost first) and the study's sampler with Pareto-aware
promotion (the new search), each run to the largest of ``--budgets`` (full-training
equivalents, default 8 10 16). Printed: the HV ratio against iterations spent (a curve, median
and quartiles), for each budget B the iterations each promotion search needed to reach
full-fidelity TPE's median HV ratio at B trainings as a share of B x R (median, bootstrap 95 %
interval of the median; the target: <= 1/3, interval below 1/2, no worse than random
proposals), the rank correlation of each recorded iteration's mIoU with the full-budget mIoU,
and the settings on the grid's front that successive halving would stop at each rung (start
slow, finish best). ``--partial`` replays the settings recorded so far (the others left out of
the space).

    python -m pipelines.benchmarks.fidelity_replay --seeds 50 [--budgets 8 10 16] [--partial]
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

from pipelines.errors import UserError

from pipelines.benchmarks.search_replay import (CURVES_SPACE, CURVES_TABLE, hypervolume, load_table,
                                                quartiles, row_setting, run_cache)


def rungs_path(table: Path) -> Path:
    """``grid.csv`` -> ``grid.rungs.csv`` (``tests/data/record_grid.py`` writes both)."""
    return table.with_name(table.stem + ".rungs" + table.suffix)


def load_curves(path: Path, spec) -> dict[str, dict[int, float]]:
    """run id -> {iteration: val mIoU} of the recorded learning curves, seeds pooled (the mean
    over the seeds recorded at that iteration), under the same run ids as :func:`load_table`."""
    from pipelines.search.runs import make_runs

    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(rungs_path(path), newline="") as fh:
        rung_rows = list(csv.DictReader(fh))
    setting_of, points = {}, {}
    for row in rows:
        variant, settings = row_setting(row)
        key = json.dumps([variant, settings], sort_keys=True, default=str)
        setting_of[row["run_id"]] = key
        points.setdefault(key, (variant, settings))
    per: dict[str, dict[int, list[float]]] = {}
    for row in rung_rows:
        key = setting_of.get(row["run_id"])
        if key is not None:
            per.setdefault(key, {}).setdefault(int(row["iteration"]), []).append(
                float(row["miou"]))
    keys = list(points)
    runs = make_runs(spec, [points[k] for k in keys])
    return {run.run_id: {it: statistics.fmean(v) for it, v in sorted(per.get(k, {}).items())}
            for run, k in zip(runs, keys)}


class CurveReplayExecutor:
    """Replays rung jobs from recorded curves: ``train_rung(run, stop_at)`` continues ``run`` from its
    last rung to ``stop_at`` and returns the val mIoU recorded there; refuses to train any
    iteration twice."""

    def __init__(self, curves: dict[str, dict[int, float]]) -> None:
        self.curves, self.at, self.jobs = curves, {}, []

    def train_rung(self, run, stop_at: int) -> dict:
        start = self.at.get(run.run_id, 0)
        if stop_at <= start:
            raise AssertionError(f"{run.run_id}: iterations {stop_at} again (at {start})")
        self.at[run.run_id] = stop_at
        self.jobs.append((run.run_id, start, stop_at))
        return {"miou": self.curves[run.run_id][stop_at]}


def replay_fidelity(spec, table: dict, curves: dict, seed: int, proposals: str,
                    budget_iters: int, make_run, cost, points, single: bool = False) -> dict:
    """One multi-fidelity search against the recorded curves; its hypervolume (settings trained
    to the full budget, their recorded mIoU) after every job, against iterations spent.
    ``single``: one rung, the full budget (every training full: the full-fidelity search on
    the same code, for ``--partial``)."""
    import optuna

    from pipelines.search.fidelity import FidelitySearch
    from pipelines.search.study import open_study

    spec = dataclasses.replace(spec, name=f"replay-{proposals}-{seed}", seed=seed)
    fidelity = dataclasses.replace(spec.fidelity, proposals=proposals)
    if single:
        fidelity = dataclasses.replace(fidelity, rungs=(fidelity.full,))
    study = open_study(spec, optuna.storages.InMemoryStorage())
    executor = CurveReplayExecutor(curves)
    curve = [(0, 0.0)]

    def on_job(spent, search):
        front = [(table[r]["miou"], table[r]["gflops_total"]) for r in search.full_results()]
        curve.append((spent, hypervolume(front, spec.gflops_budget)))

    search = FidelitySearch(spec=spec, study=study, fidelity=fidelity, executor=executor,
                            cost=cost, make_run=make_run, budget_iters=budget_iters, seed=seed,
                            on_job=on_job, space_ids=points)
    out = search.run()
    states = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    return {**out, "curve": curve, "jobs": len(executor.jobs), "states": states}


def replay_full_curve(spec, table: dict, seed: int, sampler: str, trainings: int, make_run,
                      cost) -> dict:
    """Full-fidelity search (today's: every training is a full one) up to ``trainings``; its
    hypervolume after each training, against iterations spent (trainings x R)."""
    import optuna

    from pipelines.search.cli import ReplayExecutor, Search, open_study

    spec = dataclasses.replace(spec, name=f"replay-full-{sampler}-{seed}", seed=seed,
                               max_trainings=trainings, fidelity=None)
    study = open_study(spec, optuna.storages.InMemoryStorage())
    if sampler == "random":
        study.sampler = optuna.samplers.RandomSampler(seed=seed)
    executor = ReplayExecutor(table=table)
    Search(spec=spec, study=study, executor=executor, cost=cost, make_run=make_run,
           log=lambda msg: None).run()
    full = int(spec.ablation["train"]["max_iters"])
    curve, seen = [(0, 0.0)], []
    for run_id in executor.launched:
        if run_id not in seen:
            seen.append(run_id)
        front = [(table[r]["miou"], table[r]["gflops_total"]) for r in seen]
        curve.append((len(seen) * full, hypervolume(front, spec.gflops_budget)))
    return {"curve": curve, "trainings": len(seen)}


def hv_at(curve, iterations: float) -> float:
    """The hypervolume of a replay once ``iterations`` were spent (its last job within them)."""
    return max((hv for spent, hv in curve if spent <= iterations), default=0.0)


def iterations_to(curve, hv: float) -> float:
    """Iterations a replay spent when its hypervolume first reached ``hv`` (inf: never)."""
    return next((spent for spent, h in curve if h >= hv - 1e-12), float("inf"))


def median_interval(values, resamples: int = 5000) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the median (scipy, fixed seed); infinite values
    (never reached) count as larger than every finite one."""
    import numpy as np
    from scipy.stats import bootstrap

    data = np.asarray(values, dtype=float)
    if len(data) < 2 or np.all(data == data[0]):
        return float(np.median(data)), float(np.median(data))
    big = np.where(np.isinf(data), 1e9, data)
    ci = bootstrap((big,), np.median, n_resamples=resamples, method="percentile",
                   random_state=0).confidence_interval
    return tuple(float("inf") if v >= 1e8 else float(v) for v in (ci.low, ci.high))


def rank_correlations(curves: dict, table: dict, budget: float, full: int) -> dict:
    """Spearman's rank correlation of each recorded iteration's val mIoU with the full-budget
    mIoU, over every setting and over the feasible ones."""
    from scipy.stats import spearmanr

    iterations = sorted({it for c in curves.values() for it in c})
    out = {}
    for it in iterations:
        for name, ids in (("all", list(curves)),
                          ("feasible", [r for r in curves
                                        if table[r]["gflops_total"] <= budget])):
            ids = [r for r in ids if it in curves[r] and full in curves[r]]
            if len(ids) > 2:
                rho = spearmanr([curves[r][it] for r in ids], [table[r]["miou"] for r in ids])
                out.setdefault(it, {})[name] = float(rho.statistic)
    return out


def slow_starters(curves: dict, table: dict, budget: float, eta: float) -> dict:
    """Settings on the grid's feasible full-budget front that successive halving over the whole
    grid would stop at a rung: not among the first ``floor(n / eta)`` of the rung in Pareto
    order. ``{iteration: [run ids]}`` per recorded iteration."""
    from pipelines.search.promotion import pareto_ranks, promotable

    feasible = [r for r in curves if table[r]["gflops_total"] <= budget]
    finals = [(table[r]["miou"], table[r]["gflops_total"]) for r in feasible]
    front = {r for r, rank in zip(feasible, pareto_ranks(finals)) if rank == 0}
    gflops = {r: table[r]["gflops_total"] for r in feasible}
    out = {}
    for it in sorted({i for c in curves.values() for i in c}):
        results = {r: curves[r][it] for r in feasible if it in curves[r]}
        kept = set(promotable(results, gflops, set(), eta, budget))
        out[it] = sorted(front - kept)
    return {"front": sorted(front), "stopped": out}


def fidelity_main(args) -> int:
    """Full-fidelity search vs random proposals with Pareto-aware promotion vs the
    multi-fidelity search, against training iterations spent."""
    from pipelines.search.runs import space_points
    from pipelines.search.space import load_search_space

    spec = load_search_space(args.space)
    if spec.fidelity is None:
        raise UserError(f"{args.space}: no fidelity block (rungs, eta): nothing to replay")
    table_path = Path(args.table)
    if not rungs_path(table_path).is_file():
        raise UserError(f"{rungs_path(table_path)}: no learning curves recorded (record the "
                        "grid with tests/data/record_grid.py)")
    table = load_table(table_path, spec)
    curves = load_curves(table_path, spec)
    make_run = run_cache(spec)
    rungs = spec.fidelity.rungs
    all_points = space_points(spec)
    points = [(v, s) for v, s in all_points if make_run(v, s).run_id in table
              and all(r in curves.get(make_run(v, s).run_id, {}) for r in rungs)]
    recorded = {make_run(v, s).run_id for v, s in points}
    if len(points) < len(all_points):
        if not args.partial:
            raise UserError(f"{args.table}: {len(all_points) - len(points)} of {len(all_points)} "
                            "settings have no recorded curve yet; finish the recording (the "
                            "command in tests/data/record_grid.py resumes), or replay the "
                            "recorded ones with --partial")
        print(f"PARTIAL: {len(points)} of {len(all_points)} settings recorded; every search "
              "answers an unrecorded one as over the GFLOPs budget (refused, never trained, "
              "the samplers learn it as a constraint); the full-fidelity search is the "
              "multi-fidelity code with one rung (today's Search, which asks a refused "
              "setting again up to its trial cap, stalls on a mostly refused space)")

    gflops_budgets = sorted(set(args.gflops or [spec.gflops_budget]))
    cheapest = min(table[r]["gflops_total"] for r in recorded)
    if gflops_budgets[0] < cheapest:
        raise UserError(f"--gflops {gflops_budgets[0]:g}: no recorded setting is within it (the "
                        f"cheapest costs {cheapest:g} GFLOPs): nothing to replay")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: give 1 or more processes")
    outs = {}
    for gflops in gflops_budgets:
        if len(gflops_budgets) > 1:
            print(f"\n===== GFLOPs budget {gflops:g} =====")
        outs[gflops] = compare(dataclasses.replace(spec, gflops_budget=float(gflops)), args,
                               table, curves, points, recorded, make_run)
    if args.json:
        doc = outs[gflops_budgets[0]] if len(gflops_budgets) == 1 else {"gflops": outs}
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
    return 0


#: what the worker processes replay (set before they are forked)
_JOBS: dict = {}


def _replay_seed(seed: int) -> dict:
    """The three searches of one replay seed (in a worker process or this one)."""
    j = _JOBS
    spec, sub, curves, cost, make_run = j["spec"], j["sub"], j["curves"], j["cost"], j["make_run"]
    top, full, points = j["top"], j["full"], j["points"]
    out = {}
    if j["partial"]:  # today's Search re-asks refused settings up to its trial cap
        out["full-tpe"] = replay_fidelity(spec, sub, curves, seed, "sampler", top * full,
                                          make_run, cost, points, single=True)
    else:
        out["full-tpe"] = replay_full_curve(spec, sub, seed, spec.sampler, top, make_run, cost)
    for name, proposals in (("promo-random", "random"), ("promo-sampler", "sampler")):
        out[name] = replay_fidelity(spec, sub, curves, seed, proposals, top * full, make_run,
                                    cost, points)
    return out


def replay_seeds(seeds: int, workers: int) -> list[dict]:
    """:func:`_replay_seed` for seeds 0..seeds-1, in ``workers`` forked processes (1: here)."""
    if workers <= 1:
        return [_replay_seed(seed) for seed in range(seeds)]
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return pool.map(_replay_seed, range(seeds), chunksize=1)


def compare(spec, args, table: dict, curves: dict, points: list, recorded: set,
            make_run) -> dict:
    """The three searches against each other at ``spec``'s GFLOPs budget: printed, and
    returned as a document."""
    unrecorded_gflops = 10 * spec.gflops_budget

    def cost(run):  # the traced GFLOPs of a recorded setting
        return (table[run.run_id]["gflops_total"] if run.run_id in recorded
                else unrecorded_gflops)

    rungs, full = spec.fidelity.rungs, spec.fidelity.full
    sub = {r: table[r] for r in recorded}
    grid_hv = hypervolume([(r["miou"], r["gflops_total"]) for r in sub.values()],
                          spec.gflops_budget)
    feasible = sum(r["gflops_total"] <= spec.gflops_budget for r in sub.values())
    budgets = sorted(set(args.budgets))
    top = max(budgets)
    print(f"grid: {len(sub)} settings ({feasible} within the budget) x "
          f"{'/'.join(map(str, sorted({r['seeds'] for r in sub.values()})))} "
          f"seed(s), pooled; rungs {list(rungs)} of {full} iterations, eta {spec.fidelity.eta}; "
          f"GFLOPs budget {spec.gflops_budget}; hypervolume {grid_hv:.4f}")
    print(f"budgets (full-training equivalents, x {full} iterations): {budgets}; "
          f"{args.seeds} replay seeds per search")
    t0 = time.perf_counter()
    _JOBS.update(spec=spec, sub=sub, curves=curves, cost=cost, make_run=make_run, top=top,
                 full=full, points=points, partial=args.partial)
    per_seed = replay_seeds(args.seeds, args.workers)
    runs = {name: [r[name] for r in per_seed]
            for name in ("full-tpe", "promo-random", "promo-sampler")}
    print(f"({time.perf_counter() - t0:.0f} s, {args.workers} process(es))")

    names = {"full-tpe": f"full-fidelity {spec.sampler} (today)",
             "promo-random": "random proposals + Pareto promotion (MOASHA-like)",
             "promo-sampler": f"{spec.sampler} proposals + Pareto promotion (new)"}
    print("\n" + "; ".join(f"{k}: {v}" for k, v in names.items()))
    print("HV ratio (median [q1, q3]) against iterations spent")
    steps = sorted({full * k for k in range(1, top + 1)} | {full * b // 3 for b in budgets})
    print(f"{'iterations':>10}" + "".join(f"{n:>22}" for n in runs))
    for it in steps:
        cells = []
        for name in runs:
            ratios = [hv_at(r["curve"], it) / grid_hv for r in runs[name]]
            _, q1, med, q3, _ = quartiles(ratios)
            cells.append(f"{med:.3f} [{q1:.2f},{q3:.2f}]")
        print(f"{it:>10}" + "".join(f"{c:>22}" for c in cells))
    out = {"grid_hv": grid_hv, "settings": len(sub), "budgets": {}}
    print("\ntarget: reach full-fidelity TPE's median HV ratio at B trainings with <= 1/3 of its "
          "iterations (B x R); iterations needed / (B x R), median and bootstrap 95 % interval")
    for b in budgets:
        target = statistics.median(hv_at(r["curve"], b * full) for r in runs["full-tpe"])
        line = {"full_tpe_median_ratio": target / grid_hv}
        text = f"B = {b:>2}: full-fidelity median HV ratio {target / grid_hv:.3f};"
        for name in ("promo-random", "promo-sampler"):
            need = [iterations_to(r["curve"], target) / (b * full) for r in runs[name]]
            med = statistics.median(need)
            low, high = median_interval(need)
            at_third = statistics.median(hv_at(r["curve"], b * full / 3) / grid_hv
                                         for r in runs[name])
            line[name] = {"iterations_share_median": med, "interval_95": [low, high],
                          "hv_ratio_at_third": at_third,
                          "never_reached": sum(v == float("inf") for v in need)}
            text += (f"  {name}: {med:.2f} [{low:.2f}, {high:.2f}] (HV ratio at B/3 "
                     f"{at_third:.3f}; {line[name]['never_reached']} never)")
        print(text)
        share = line["promo-sampler"]
        line["met"] = bool(share["iterations_share_median"] <= 1 / 3
                           and share["interval_95"][1] < 0.5
                           and share["iterations_share_median"]
                           <= line["promo-random"]["iterations_share_median"])
        out["budgets"][b] = line
    print("verdict: " + ", ".join(f"B={b} {'met' if v['met'] else 'NOT met'}"
                                  for b, v in out["budgets"].items()))
    rho = rank_correlations({r: curves[r] for r in recorded}, sub, spec.gflops_budget, full)
    print("\nrank correlation (Spearman) of val mIoU at iteration r with the full-budget mIoU")
    print(f"{'r':>5}{'all':>8}{'feasible':>10}")
    for it, v in rho.items():
        print(f"{it:>5}{v.get('all', float('nan')):8.3f}{v.get('feasible', float('nan')):10.3f}")
    slow = slow_starters({r: curves[r] for r in recorded}, sub, spec.gflops_budget,
                         spec.fidelity.eta)
    print(f"\nstart slow, finish best: of the {len(slow['front'])} settings on the feasible "
          f"full-budget front, successive halving over the whole grid (eta "
          f"{spec.fidelity.eta}) would stop at each rung:")
    for it, ids in slow["stopped"].items():
        if it < full:
            print(f"  r = {it:>3}: {len(ids)}" + (f" ({', '.join(ids)})" if ids else ""))
    out.update(gflops_budget=spec.gflops_budget, feasible=feasible, rank_correlation=rho,
               slow_starters=slow, runs=runs)
    return out




def main(argv=None) -> int:
    import optuna

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--space", default=str(CURVES_SPACE))
    parser.add_argument("--table", default=str(CURVES_TABLE))
    parser.add_argument("--json", help="write every replay's numbers here")
    parser.add_argument("--budgets", nargs="+", type=int, default=[8, 10, 16],
                        help="training budgets (full-training equivalents)")
    parser.add_argument("--gflops", nargs="+", type=float,
                        help="GFLOPs budgets to replay at (default: the search space's)")
    parser.add_argument("--workers", type=int, default=1,
                        help="replay the seeds in this many processes")
    parser.add_argument("--partial", action="store_true",
                        help="replay the settings recorded so far")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        return fidelity_main(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
