"""Before an ablation starts: how many trainings and jobs will run, and about how long they take.

Counted over the whole ablation (every training without its ``train_done.json``, every missing
per-run output and report), whatever targets the command names.

The estimate multiplies the pending trainings' iterations by a measured time per iteration of
their model config, and divides by how many trainings run side by side (cores / training cpus).
Where the time per iteration comes from, first match wins:

1. this ablation's own earlier runs in its MLflow store: ``train_time_s / max_iters`` of the
   finished runs of the same config (median), i.e. the machine it runs on;
2. :data:`RECORDED_S_PER_ITER`: measured on the project's 2-core CPU machine for the tiny configs
   at 128x128 (the demo's input size), wall time of a whole training job (data loading,
   checkpoints and the final validation included) divided by its iterations;
3. otherwise no estimate is printed for that config (``unknown``).

The non-training jobs (evaluation, FLOPs, latency, ingest, reports) are added as
:data:`OTHER_JOB_S` seconds each, measured on the demo the same way.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

#: model config -> seconds per training iteration at its input size, one torch thread, batch 2,
#: measured on the 2-core machine (``make demo``, train_time_s / max_iters of its runs)
RECORDED_S_PER_ITER = {
    "configs/models/mask2former_r18_synthetic-128x128.py": 1.10,
    "configs/models/mask2former_r18_proscale-333_synthetic-128x128.py": 0.92,
}
#: seconds of one non-training job of the tiny demo models (evaluate, flops, describe...)
OTHER_JOB_S = 12.0


@dataclass
class Plan:
    """What an ablation will run (see :func:`make_plan`)."""

    ablation: str
    trainings: int
    trainings_pending: int
    iterations_pending: int
    jobs_pending: int
    parallel: int
    seconds: float | None
    sources: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        head = (f"{self.ablation}: {self.trainings_pending} of {self.trainings} trainings to run "
                f"({self.iterations_pending} iterations), about {self.jobs_pending} jobs, "
                f"{self.parallel} training(s) at a time")
        if self.seconds is None:
            eta = "no time estimate (no recorded time per iteration for: " + ", ".join(
                c for c, s in self.sources.items() if s == "unknown") + ")"
        else:
            eta = f"estimated {format_duration(self.seconds)}"
        lines = [f"{head}; {eta}."]
        for cfg, source in sorted(self.sources.items()):
            lines.append(f"  {cfg}: {source}")
        return "\n".join(lines)


def format_duration(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s"


def history_s_per_iter(tracking_uri: str | None, experiment: str) -> dict[str, float]:
    """Median ``train_time_s / max_iters`` per config of the experiment's finished runs."""
    if not tracking_uri:
        return {}
    from pipelines.tracking import store as tracking

    if tracking.missing_sqlite_file(tracking_uri) is not None:
        return {}
    from pipelines.analysis.data import load_runs
    from pipelines.errors import UserError

    try:  # a store that cannot be read has no history (ingest refuses it in one line)
        tracking.check_readable(tracking_uri)
        with tracking.store_errors(tracking_uri):
            runs = load_runs(tracking_uri, experiment)
    except UserError:
        return {}
    runs = runs.dropna(subset=["train_time_s", "max_iters"])
    out = {}
    for cfg, group in runs.groupby("config"):
        per = [float(t) / int(n) for t, n in zip(group["train_time_s"], group["max_iters"])
               if int(n) > 0]
        if per:
            out[str(cfg)] = statistics.median(per)
    return out


def make_plan(config: dict, trainings: dict, pending_outputs: int, cores: int | None,
              results: str | None = None, history: dict[str, float] | None = None) -> Plan:
    """The plan of one ablation.

    Args:
        config: the validated ablation config (its ``name``, ``results``, ``resources``).
        trainings: train id -> its (first) :class:`pipelines.grid.Run`.
        pending_outputs: how many non-training outputs (per-run files and final reports) are
            missing; each is one job.
        cores: cores the scheduler may use (``snakemake --cores``); None counts one.
        results: results folder (default: the config's).
        history: config -> seconds per iteration (default: read from the ablation's store).
    """
    from pipelines.grid import RunPaths

    results = results or config["results"]
    ablation = config["name"]
    if history is None:
        history = history_s_per_iter(config.get("mlflow", {}).get("tracking_uri"), ablation)
    pending = [run for run in trainings.values()
               if not RunPaths.of(results, ablation, run).train_done.exists()]
    train_cpus = max(1, int(config.get("resources", {}).get("train", {}).get("cpus", 1)))
    parallel = max(1, int(cores or 1) // train_cpus)
    sources, work, unknown = {}, 0.0, False
    for run in pending:
        cfg = str(run.config)
        if cfg in history:
            rate = history[cfg]
            sources[cfg] = f"{rate:.2f} s/iteration (this ablation's earlier runs)"
        elif cfg in RECORDED_S_PER_ITER:
            rate = RECORDED_S_PER_ITER[cfg]
            sources[cfg] = f"{rate:.2f} s/iteration (recorded on the 2-core CPU at 128x128)"
        else:
            sources[cfg] = "unknown"
            unknown = True
            continue
        work += rate * int(run.max_iters)
    jobs = len(pending) + int(pending_outputs)
    seconds = None
    if not unknown:
        seconds = work / parallel + OTHER_JOB_S * pending_outputs / max(1, int(cores or 1))
    return Plan(ablation=ablation, trainings=len(trainings), trainings_pending=len(pending),
                iterations_pending=sum(int(r.max_iters) for r in pending),
                jobs_pending=jobs, parallel=parallel,
                seconds=None if seconds is None or math.isnan(seconds) else seconds,
                sources=sources)


def print_plan(config: dict, trainings: dict, outputs: list[str], cores: int | None,
               log=print, other_jobs: int | None = None) -> Plan:
    """Print :func:`make_plan` for the Snakefile's ``onstart``. ``other_jobs``: the DAG's own
    count of the non-training jobs that will run (what Snakemake's job table lists); without it,
    each missing non-training file of ``outputs`` counts as one job (an overcount when a job
    writes several)."""
    missing = other_jobs if other_jobs is not None else sum(
        1 for o in outputs if not Path(o).exists() and not str(o).endswith("train_done.json"))
    plan = make_plan(config, trainings, missing, cores)
    log(plan.text())
    return plan
