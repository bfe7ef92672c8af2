"""``python -m pipelines search SPACE.yaml``: multi-objective Optuna search, cost first, trials as DAG jobs.

The study has two objectives, validation ``miou`` (maximise) and ``gflops_total`` (minimise),
named with ``study.set_metric_names`` so that optuna-dashboard labels them. The search runs in
**generations**: ask trials, price each proposed setting with the real FLOPs counter
(:class:`pipelines.search.runs.FlopsCache`, no training), train and evaluate the new feasible
ones as the grid's own Snakemake jobs (an ablation YAML listing exactly those settings as
``points``, so run ids, folders and recipes are the grid's; the targets are each run's
``metrics.json`` and ``flops.json``, so its MLflow run has every metric a grid run has), tell.

The budget is in **trainings** (``budget.trainings``): one trial per proposed setting, but a
setting already known costs no training. A setting over ``budget.gflops_total`` is refused: its
trial gets the constraint ``gflops_total - budget`` (Optuna 5's ``Trial.set_constraint``, which
every sampler reads; the samplers' ``constraints_func`` is deprecated since 5.0) and is told
COMPLETE with its real GFLOPs and the study's mIoU floor (the lowest mIoU measured so far,
marked ``miou_told=floor``; PRUNED while nothing is measured): the samplers rank it by its
constraint (TPE and NSGA-II below every feasible trial; the GP sampler weights its acquisition
by the probability of feasibility), and optuna-dashboard draws it as infeasible at the bottom
edge of the measured points, not at mIoU 0 squeezing the feasible front. A setting
with a result (the grid or a warm start trained it: its ``metrics.json`` under the base
ablation's name; or an earlier trial of the study) is told that result. Two trials of one
generation that propose the same new setting share one training. The search stops when the
training budget is spent, when every setting of a finite space is known, or at the trial cap
``budget.trials`` (a safety net: set it well above the training budget). One progress line per
proposed setting (trial, setting, priced GFLOPs, train / reused / refused) and per finished
training (mIoU, elapsed, trainings left, estimated time left), on stdout. The summary's Pareto
front (printed, and saved as ``<results>/search/<name>/summary.json``) lists each setting once.

Resume and dead jobs. Trials are told by number, so a new head process picks up the study where
the old one died: at start-up and after every generation, each RUNNING trial is settled: its
result exists -> told; it was submitted by a process of this host that is gone -> trained again
(Snakemake resumes from its last checkpoint); its deadline (submission time + the train and
evaluate jobs' declared runtime x attempts + ``failed.grace_minutes``) has passed -> FAIL, and
asked again as a new trial up to ``failed.retries`` times. On SQLite and PostgreSQL a head
beats for its trials (Optuna's heartbeat), so a head that died on another host is found by its
stale heartbeat (``fail_stale_trials``) before the deadline. Nothing is left RUNNING.

Modules: :mod:`pipelines.search.study` (samplers, storages, the study, the constraint; the only
place that calls Optuna's private API, and why), :mod:`pipelines.search.loop` (the generation
loop), :mod:`pipelines.search.workers` (dead heads, other workers, warm start),
:mod:`pipelines.search.executors` (Snakemake jobs or a replayed table),
:mod:`pipelines.search.tracking` (MLflow, and the ablation's report brought up to date).
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from pipelines.errors import UserError

# the names other modules import from here (the replay benchmark, the tests)
from pipelines.search.executors import ReplayExecutor, SnakemakeExecutor
from pipelines.search.loop import Search, describe
from pipelines.search.study import (
    CONSTRAINT,
    OBJECTIVES,
    RUN_ID,
    STATUS,
    constraint_attrs,
    create_sampler,
    default_storage,
    open_storage,
    open_study,
    set_gflops_constraint,
)

__all__ = ["CONSTRAINT", "OBJECTIVES", "RUN_ID", "STATUS", "ReplayExecutor", "Search",
           "SnakemakeExecutor", "add_parser", "constraint_attrs", "create_sampler", "describe",
           "open_storage", "open_study", "run_cli", "set_gflops_constraint"]


# ----------------------------------------------------------------------------- CLI
def check_warm_start(spec) -> None:
    """Every ``warm_start`` ablation exists and is a valid ablation config (read before any
    trial, so ``--check`` says so)."""
    from pipelines.grid import load_ablation, validate_ablation

    for path in spec.warm_start:
        try:
            validate_ablation(load_ablation(path), check_data=False)
        except UserError as err:
            raise UserError(f"search space key 'warm_start': {err}") from None


def add_parser(sub) -> None:
    p = sub.add_parser("search", help="multi-objective Optuna search (mIoU vs GFLOPs), trials "
                       "trained as the grid's Snakemake jobs", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("space", help="search space (configs/search/*.yaml)")
    p.add_argument("--storage", help="sqlite:///FILE, postgresql://USER@HOST:PORT/DB, or a "
                   "journal file PATH.log (default: <results>/search/<name>/study.db)")
    p.add_argument("--sampler", choices=("tpe", "nsga2", "gp"), help="default: the space's "
                   "sampler.name (tpe)")
    p.add_argument("--seed", type=int, help="sampler seed (default: the space's sampler.seed)")
    p.add_argument("--trials", type=int, dest="max_trials", help="trial cap, a safety net "
                   "well above the training budget (known settings cost a trial, no training)")
    p.add_argument("--trainings", type=int, dest="max_trainings", help="training budget: the "
                   "search stops once it launched this many distinct trainings")
    p.add_argument("--batch", type=int, help="trials per generation")
    p.add_argument("--profile", help="Snakemake profile for the jobs (e.g. slurm)")
    p.add_argument("--cores", type=int, default=2, help="local executor cores (default 2)")
    p.add_argument("--check", action="store_true", help="only check the space and exit")
    p.add_argument("--no-mlflow", action="store_true", help="do not log trials to MLflow (nor "
                   "update the base ablation's reports)")
    p.add_argument("--no-report", action="store_true", help="do not bring the base ablation's "
                   "analysis, figures and reports up to date at the end")
    p.set_defaults(func=run_cli)


def dashboard_command(storage: str) -> str:
    """The optuna-dashboard command for a study's storage (an RDB URL or a journal file)."""
    return f"optuna-dashboard {shlex.quote(storage.removeprefix('journal:'))}"


def run_cli(args) -> int:
    from pipelines.search.runs import FlopsCache
    from pipelines.search.space import load_search_space

    for name in ("max_trials", "max_trainings", "batch"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.removeprefix('max_')}: expected a positive integer")
    spec = load_search_space(args.space, sampler=args.sampler, seed=args.seed,
                             max_trials=args.max_trials, max_trainings=args.max_trainings,
                             batch=args.batch)
    check_warm_start(spec)
    if spec.fidelity is not None:  # each rung a checkpoint and validation iteration
        from pipelines.search.rungs import check_rungs

        check_rungs(spec)
    n = sum(len(a) for a in spec.variants.values())
    trainings = ("no training budget" if spec.max_trainings is None
                 else f"{spec.max_trainings} trainings")
    print(f"{spec.name}: search space OK ({len(spec.variants)} variants, {n} axes, GFLOPs "
          f"budget {spec.gflops_budget}, {trainings}, trial cap {spec.max_trials})", flush=True)
    if args.check:
        return 0
    from pipelines.config import ensure_writable_dir

    folder = Path(spec.ablation.get("results", "results")) / "search" / spec.name
    ensure_writable_dir(folder, "search results folder")
    study = open_study(spec, open_storage(args.storage, spec))
    storage = args.storage or default_storage(spec)
    print(f"{spec.name}: watch it with: {dashboard_command(storage)}", flush=True)
    shape = (spec.ablation.get("flops") or {}).get("shape") or (512, 512)
    cache = FlopsCache(path=folder / "flops_cache.json", shape=shape)
    executor = SnakemakeExecutor(spec=spec, cores=args.cores, profile=args.profile)
    executor.hold_results()
    tracker = None
    if not args.no_mlflow:
        from pipelines.search.tracking import track_trials

        tracker = lambda study, told: track_trials(spec, study)  # noqa: E731
        if spec.fidelity is not None:  # and every setting's learning curve, stopped ones too
            from pipelines.search.rungs import track_curves

            def tracker(study, told):
                tracked = track_trials(spec, study)
                track_curves(spec, study, tracked)
                return tracked
    if spec.fidelity is not None:  # rungs of one schedule, Pareto promotion
        from pipelines.search.fidelity import run_search

        run_search(spec, study, executor, lambda run: cache.gflops(run)["total"], folder,
                   tracker=tracker)
        summary = Search(spec=spec, study=study, executor=executor, cost=None).summary()
    else:
        search = Search(spec=spec, study=study, executor=executor,
                        cost=lambda run: cache.gflops(run)["total"], tracker=tracker)
        summary = search.run()
    tracked = tracker(study, []) if tracker is not None else None
    from pipelines.config import write_json_atomic

    write_json_atomic(folder / "summary.json", summary)  # the front, each setting once
    print(json.dumps(summary, indent=2))
    print(f"saved: {folder / 'summary.json'}", flush=True)
    if tracked is not None and not args.no_report:
        # the last step: the ablation's analysis, figures and reports show the searched runs
        from pipelines.search.tracking import write_trials_record

        changed = write_trials_record(spec, study, tracked)
        print(executor.update_reports(force=changed), flush=True)
    return 0
