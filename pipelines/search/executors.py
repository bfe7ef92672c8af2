"""How a search's trials are trained: as the grid's own Snakemake jobs, or replayed from a table.

An executor has ``existing(run)`` (the run's result when it is known: ``metrics.json`` on disk,
or the replayed record), ``job_minutes()`` (the declared runtime of one run's jobs, for the
trials' deadlines) and ``train(runs, generation, on_result)``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Mapping

from pipelines.errors import UserError
from pipelines.search.runs import REPO, point_ablation, read_result, result_paths


class SnakemakeExecutor:
    """Trains and evaluates runs as the grid's own jobs: writes an ablation listing exactly the
    batch's settings as ``points`` and runs ``snakemake`` on their ``metrics.json``.

    Args:
        spec: the search.
        workdir: where Snakemake runs (relative paths of the base ablation are relative to it).
        cores: ``--cores`` for the local executor.
        profile: ``--profile`` (e.g. ``slurm``); jobs then go through that executor.
        snakemake_args: further arguments passed through.
        snakefile: the workflow (default: this project's ``Snakefile``).
    """

    def __init__(self, *, spec, workdir: str | Path = ".", cores: int = 2,
                 profile: str | None = None, snakemake_args: tuple[str, ...] = (),
                 snakefile: str | Path = REPO / "Snakefile") -> None:
        self.spec = spec
        self.workdir = Path(workdir)
        self.cores = cores
        self.profile = profile
        self.snakemake_args = tuple(snakemake_args)
        self.snakefile = Path(snakefile).resolve()
        self.launched: list[str] = []
        self.lock_fd: int | None = None  # the head's shared lock on the results folder

    def hold_results(self, log: Callable[[str], None] = print) -> None:
        """Share the results folder with the study's other workers only (pipelines/lock.py),
        then stop the jobs a dead head of this search on this host left running."""
        from pipelines.lock import hold

        results = Path(self.spec.ablation.get("results", "results"))
        self.lock_fd = hold(results if results.is_absolute() else self.workdir / results,
                            shared=True, what=f"search {self.spec.name!r}")
        self.stop_dead_heads_jobs(log)

    def _jobs_records(self) -> Path:
        """Where each head records the process group of its running generation."""
        return self.folder() / "running"

    def stop_dead_heads_jobs(self, log: Callable[[str], None] = print) -> None:
        """A head of this host that died while its generation ran (its guard killed with it,
        so the generation's group outlived it) left that group training: stop it and wait until
        it is gone, before this head trains the same runs again; refuse in one line if it
        cannot be stopped. A head of another host is left alone (its records are its own)."""
        from pipelines.lock import group_alive, stop_group
        from pipelines.search.workers import _worker_gone

        for record in sorted(self._jobs_records().glob("*.json")):
            try:
                data = json.loads(record.read_text())
                worker, group = str(data["worker"]), int(data["group"])
            except (OSError, ValueError, KeyError, TypeError):
                continue  # written half by a head killed at that instant: nothing started
            if not _worker_gone(worker):
                continue  # alive, or of another host
            if group_alive(group):
                if not stop_group(group):
                    raise UserError(f"the jobs of dead search head {worker} (process group "
                                    f"{group}) cannot be stopped: stop them (kill -9 -{group}) "
                                    "and start the search again")
                log(f"stopped the jobs (process group {group}) that dead search head {worker} "
                    "left running")
            record.unlink(missing_ok=True)

    def existing(self, run) -> dict | None:
        return read_result(self.spec.ablation, run)

    def job_minutes(self) -> float:
        """Declared runtime of one run's train + evaluate jobs, over every attempt."""
        res = self.spec.ablation.get("resources") or {}
        attempts = int(self.spec.ablation.get("retries", 0)) + 1
        per_attempt = sum(float((res.get(s) or {}).get("runtime", 60)) for s in ("train",
                                                                                   "evaluate"))
        return per_attempt * attempts * (attempts + 1) / 2  # runtime grows with the attempt

    def targets(self, ablation, run) -> list[str]:
        """What a generation builds for one run: what the grid builds for it (``metrics.json``;
        ``flops.json`` always, so that its MLflow run has ``gflops_total`` like a grid run's;
        ``benchmark.json`` when the base ablation benchmarks its runs; its ``run.json``, which
        the search's MLflow ingest reads and the grid's per-run jobs do not ask for)."""
        paths = result_paths(ablation, run)
        out = [paths.run_json, paths.metrics, paths.flops]
        if (ablation.get("stages") or {}).get("benchmark"):
            out.append(paths.benchmark)
        return [str(p) for p in out]

    def folder(self) -> Path:
        """The search's folder: ``<results>/search/<name>`` (its generations, logs, records)."""
        folder = Path(self.spec.ablation.get("results", "results")) / "search" / self.spec.name
        folder = folder if folder.is_absolute() else self.workdir / folder
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def snakemake(self, configfile: Path, targets: list[str], log: Path,
                  args: tuple[str, ...] = (), poll: Callable[[], None] | None = None,
                  poll_s: float = 5.0) -> int:
        """Run the pipeline's Snakefile on ``configfile`` for ``targets`` (output to ``log``),
        under the head's lock, dying with the head; ``poll()`` every ``poll_s`` seconds while it
        runs. Returns Snakemake's exit status."""
        bin_dir = Path(sys.executable).parent
        snakemake = bin_dir / "snakemake"
        cmd = [str(snakemake if snakemake.exists() else "snakemake"),
               "--snakefile", str(self.snakefile),
               "--configfile", str(Path(configfile).resolve()), "--directory", str(self.workdir),
               "--rerun-incomplete", "--keep-going", "--nolock"]
        cmd += ["--profile", self.profile] if self.profile else ["--cores", str(self.cores)]
        cmd += [*self.snakemake_args, *args, *targets]
        env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        # the Snakemake call works under the head's lock; it and its jobs die with the head
        from pipelines.lock import child_env, start_in_group, stop_group
        from pipelines.search.workers import _worker

        fds = () if self.lock_fd is None else (self.lock_fd,)
        if fds:
            env = child_env(self.lock_fd, env)
        records = self._jobs_records()
        records.mkdir(parents=True, exist_ok=True)
        record = records / f"{os.getpid()}.json"
        with open(log, "a") as fh:
            proc = start_in_group(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                  cwd=self.workdir, pass_fds=fds)
            try:
                from pipelines.config import write_json_atomic

                write_json_atomic(record, {"worker": _worker(), "group": proc.pid})
                while True:
                    try:
                        return proc.wait(timeout=poll_s)
                    except subprocess.TimeoutExpired:
                        if poll is not None:
                            poll()
            finally:  # interrupted, or its guard killed alone: no job outlives the call
                stop_group(proc.pid, proc=proc)
                record.unlink(missing_ok=True)

    def train(self, runs, generation: int, on_result: Callable | None = None,
              poll_s: float = 5.0) -> dict[str, dict | None]:
        """Train and evaluate ``runs`` in one Snakemake call; ``on_result(run, metrics)`` as
        soon as a run's ``metrics.json`` appears (progress), then ``{run id: metrics or None}``."""
        import yaml

        if not runs:
            return {}
        ablation = point_ablation(self.spec.ablation,
                                  [(r.variant, dict(r.settings)) for r in runs])
        folder = self.folder()
        configfile = folder / f"generation-{generation:03d}.yaml"
        configfile.write_text(yaml.safe_dump(ablation, sort_keys=False))
        targets = [t for r in runs for t in self.targets(ablation, r)]
        self.launched += [r.run_id for r in runs]
        reported: set[str] = set()

        def report() -> None:
            for r in runs:
                if r.run_id not in reported and on_result is not None:
                    result = self.existing(r)
                    if result is not None:
                        reported.add(r.run_id)
                        on_result(r, result)

        self.snakemake(configfile, targets, folder / f"generation-{generation:03d}.log",
                       poll=report, poll_s=poll_s)
        report()
        return {r.run_id: self.existing(r) for r in runs}

    def train_rung(self, run, stop_at: int) -> dict | None:
        """Continue ``run``'s training to iteration ``stop_at`` of its schedule (a rung of a
        multi-fidelity search, ``spec.fidelity``): the ``train_rung`` job below the full budget,
        the run's own train, evaluate and flops jobs at it. Returns ``{"miou": ...}`` (the val
        mIoU the training logged at ``stop_at``; at the full budget the run's metrics), or
        ``None`` when the job left no result. A rung already on disk is not trained again."""
        import yaml

        from pipelines.search.rungs import rung_result

        full = self.spec.fidelity.full
        ablation = point_ablation(self.spec.ablation, [(run.variant, dict(run.settings))])
        paths = result_paths(ablation, run)
        rung = paths.train_done.parent / f"rung-{stop_at}.json"
        if stop_at < full:
            targets = [str(paths.run_json), str(rung), str(paths.flops)]
        else:
            targets = self.targets(ablation, run)
        self.launched.append(run.run_id)
        name = f"{run.run_id}-{stop_at}"
        folder = self.folder() / "rungs"
        folder.mkdir(parents=True, exist_ok=True)
        configfile = folder / f"{name}.yaml"
        configfile.write_text(yaml.safe_dump(ablation, sort_keys=False))
        self.snakemake(configfile, targets, folder / f"{name}.log")
        if stop_at == full:
            return self.existing(run)
        return rung_result(rung, stop_at)

    def update_reports(self, force: bool) -> str:
        """Bring the base ablation's analysis, figures, tables and reports up to date with the
        searched runs in MLflow: the ablation's own Snakemake targets (``figures`` and
        ``write_report``, the rules that make them and nothing else: no training, no ingest),
        ``analyse_runs`` forced when ``force`` (the study's record of its searched runs changed,
        :func:`pipelines.search.tracking.write_trials_record`). Returns a line saying what was
        done; a base ablation whose grid was never run and ingested is left as it is."""
        log = self.folder() / "reports.log"
        rules = ("analyse_runs", "plot_pareto", "write_html_report", "write_report", "figures")
        args = ("--allowed-rules", *rules) + (("--forcerun", "analyse_runs") if force else ())
        code = self.snakemake(Path(self.spec.ablation_path), ["figures", "write_report"], log,
                              args=args)
        name = self.spec.ablation["name"]
        if code == 0:
            return (f"ablation {name}: analysis, figures and reports brought up to date "
                    f"({'with' if force else 'no change in'} the searched runs; log {log})")
        tail = log.read_text(errors="replace")[-20000:]
        if "MissingInputException" in tail or "Missing input files" in tail:
            return (f"ablation {name}: no report brought up to date: its grid has not been run "
                    f"and ingested yet (`snakemake --configfile {self.spec.ablation_path}` "
                    f"reports the grid and the searched runs together; log {log})")
        raise UserError(f"ablation {name}: bringing its analysis and reports up to date "
                        f"failed (Snakemake exit {code}); see {log}")


class ReplayExecutor:
    """Replays a recorded grid: a run's result is the recorded one (``tests/data/grid_tiny.csv``).

    Used by the efficiency benchmark, which compares samplers on the same recorded trainings.
    ``launched`` lists every training the search asked for.

    Args:
        table: run id -> ``{"miou": ..., "gflops_total": ...}``.
        pretrained: run ids counted as already trained (the grid's, for reuse).
    """

    def __init__(self, *, table: Mapping[str, Mapping[str, float]],
                 pretrained: tuple[str, ...] = (), results: str | Path | None = None) -> None:
        self.table = dict(table)
        self.trained = set(pretrained)
        self.results = Path(results) if results else None
        self.launched: list[str] = []

    def existing(self, run) -> dict | None:
        if self.results is not None and (self.results / f"{run.run_id}.json").is_file():
            return json.loads((self.results / f"{run.run_id}.json").read_text())
        return dict(self.table[run.run_id]) if run.run_id in self.trained else None

    def job_minutes(self) -> float:
        return 1.0

    def train(self, runs, generation: int, on_result: Callable | None = None
              ) -> dict[str, dict | None]:
        out = {}
        for run in runs:
            if run.run_id not in self.table:
                raise UserError(f"{run.run_id}: not in the recorded table")
            self.launched.append(run.run_id)
            self.trained.add(run.run_id)
            out[run.run_id] = dict(self.table[run.run_id])
            if self.results is not None:  # a results folder shared by several workers
                from pipelines.config import write_json_atomic

                write_json_atomic(self.results / f"{run.run_id}.json", out[run.run_id])
            if on_result is not None:
                on_result(run, out[run.run_id])
        return out
