"""``python -m pipelines search SPACE.yaml``: multi-objective Optuna search, cost first, trials as DAG jobs.

The study has two objectives, validation ``miou`` (maximise) and ``gflops_total`` (minimise),
named with ``study.set_metric_names`` so that optuna-dashboard labels them. The search runs in
**generations**: ask trials, price each proposed setting with the real FLOPs counter
(:class:`pipelines.search_runs.FlopsCache`, no training), train and evaluate the new feasible
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
asked again as a new trial up to ``failed.retries`` times. Nothing is left RUNNING.

Optuna's public API is used where it has one (``study.ask``/``tell``/``enqueue_trial``,
``Trial.set_user_attr``/``set_constraint``, ``create_trial``). Two things have none and go
through the study's storage (``study._storage``, ``trial._trial_id``): writing an attribute of a
RUNNING trial that another process asked (settling, following another worker's training), and
the pre-5.0 ``constraints`` list that optuna-dashboard 0.21 reads.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from pipelines.errors import UserError
from pipelines.search_runs import point_ablation, read_result, result_paths

OBJECTIVES = ("miou", "gflops_total")
CONSTRAINT = "gflops_over_budget"
DASHBOARD_CONSTRAINTS_ATTR = "constraints"  # what optuna-dashboard 0.21 reads
# trial user attributes
STATUS = "status"  # infeasible | reused | submitted | trained | failed | warm_start
RUN_ID = "run_id"


# ----------------------------------------------------------------------------- study
def create_sampler(name: str, seed: int, batch: int = 4):
    """The sampler ``tpe`` (Optuna 5's default for several objectives), ``nsga2`` or ``gp``."""
    import optuna

    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, batch))
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    raise UserError(f"--sampler {name!r}: expected tpe, nsga2 or gp")


def default_storage(spec) -> str:
    """A SQLite file in the results folder: ``<results>/search/<name>/study.db``."""
    folder = Path(spec.ablation.get("results", "results")) / "search" / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder.resolve() / 'study.db'}"


def open_storage(url: str | None, spec=None):
    """A storage URL -> an Optuna storage.

    ``sqlite:///FILE`` and ``postgresql://...`` are RDB storages; a path ending in ``.log`` or
    ``.journal`` (or ``journal:PATH``) is Optuna's journal file, safe for many workers on a shared
    file system.
    """
    import optuna
    from optuna.storages.journal import JournalFileBackend

    url = url or default_storage(spec)
    if url.startswith("journal:") or url.endswith((".log", ".journal")):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise UserError(f"--storage {url!r}: expected sqlite:///FILE, postgresql://..., or a "
                        "journal file (*.log)")
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}
                                              if url.startswith("postgresql") else {})
        except Exception as err:  # noqa: BLE001 - sqlalchemy/driver errors: one line
            # workers started together on an empty database race to create its tables: the
            # losers see a duplicate key or table (IntegrityError; ProgrammingError "relation
            # ... already exists" on PostgreSQL) and find the tables there on the next try
            racing = ("IntegrityError" in type(err).__name__
                      or "already exists" in str(err))
            if racing and attempt < 4:
                time.sleep(0.5 * (attempt + 1))
                continue
            raise UserError(f"--storage {url!r}: cannot open: {type(err).__name__}: "
                            f"{' '.join(str(err).split())[:200]}") from None


def open_study(spec, storage):
    """Create or load the study named after the search."""
    import optuna

    study = optuna.create_study(
        study_name=spec.name, storage=storage, load_if_exists=True,
        directions=["maximize", "minimize"],
        sampler=create_sampler(spec.sampler, spec.seed, spec.batch))
    if list(study.metric_names or []) != list(OBJECTIVES):
        import warnings

        with warnings.catch_warnings():  # experimental in Optuna 5, and what the dashboard reads
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(OBJECTIVES))
    if "gflops_budget" not in study.user_attrs:
        study.set_user_attr("gflops_budget", spec.gflops_budget)
        study.set_user_attr("base_ablation", str(spec.ablation["name"]))
    return study


def constraint_attrs(gflops: float, budget: float) -> dict:
    """System attributes of the GFLOPs constraint for a trial built with ``create_trial`` (warm
    start): the list optuna-dashboard 0.21 reads (``constraints``, the format Optuna wrote before
    5.0 and still reads). Optuna 5's own per-key value is added with the public
    ``FrozenTrial.set_constraint``."""
    return {DASHBOARD_CONSTRAINTS_ATTR: [float(gflops) - float(budget)]}


def set_gflops_constraint(study, trial, gflops: float, budget: float) -> None:
    """``trial.set_constraint`` (Optuna 5's API, which every sampler reads; the samplers'
    ``constraints_func`` is deprecated since 5.0) plus the list optuna-dashboard 0.21 reads.

    Optuna 5 has no public writer of a trial's system attribute, so the dashboard's copy goes
    through the study's storage (``study._storage``, ``trial._trial_id``)."""
    value = float(gflops) - float(budget)
    trial.set_constraint(CONSTRAINT, value)
    study._storage.set_trial_system_attr(trial._trial_id, DASHBOARD_CONSTRAINTS_ATTR, [value])


# ----------------------------------------------------------------------------- executors
class SnakemakeExecutor:
    """Trains and evaluates runs as the grid's own jobs: writes an ablation listing exactly the
    batch's settings as ``points`` and runs ``snakemake`` on their ``metrics.json``.

    Args:
        spec: the search.
        workdir: where Snakemake runs (relative paths of the base ablation are relative to it).
        cores: ``--cores`` for the local executor.
        profile: ``--profile`` (e.g. ``slurm``); jobs then go through that executor.
        snakemake_args: further arguments passed through.
    """

    def __init__(self, *, spec, workdir: str | Path = ".", cores: int = 2,
                 profile: str | None = None, snakemake_args: tuple[str, ...] = ()) -> None:
        self.spec = spec
        self.workdir = Path(workdir)
        self.cores = cores
        self.profile = profile
        self.snakemake_args = tuple(snakemake_args)
        self.launched: list[str] = []
        self.lock_fd: int | None = None  # the head's shared lock on the results folder

    def hold_results(self) -> None:
        """Share the results folder with the study's other workers only (pipelines/lock.py)."""
        from pipelines.lock import hold

        results = Path(self.spec.ablation.get("results", "results"))
        self.lock_fd = hold(results if results.is_absolute() else self.workdir / results,
                            shared=True, what=f"search {self.spec.name!r}")

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
        ``benchmark.json`` when the base ablation benchmarks its runs)."""
        paths = result_paths(ablation, run)
        out = [paths.metrics, paths.flops]
        if (ablation.get("stages") or {}).get("benchmark"):
            out.append(paths.benchmark)
        return [str(p) for p in out]

    def train(self, runs, generation: int, on_result: Callable | None = None,
              poll_s: float = 5.0) -> dict[str, dict | None]:
        """Train and evaluate ``runs`` in one Snakemake call; ``on_result(run, metrics)`` as
        soon as a run's ``metrics.json`` appears (progress), then ``{run id: metrics or None}``."""
        import yaml

        if not runs:
            return {}
        ablation = point_ablation(self.spec.ablation,
                                  [(r.variant, dict(r.settings)) for r in runs])
        folder = Path(self.spec.ablation.get("results", "results")) / "search" / self.spec.name
        folder = folder if folder.is_absolute() else self.workdir / folder
        folder.mkdir(parents=True, exist_ok=True)
        configfile = folder / f"generation-{generation:03d}.yaml"
        configfile.write_text(yaml.safe_dump(ablation, sort_keys=False))
        targets = [t for r in runs for t in self.targets(ablation, r)]
        bin_dir = Path(sys.executable).parent
        snakemake = bin_dir / "snakemake"
        cmd = [str(snakemake if snakemake.exists() else "snakemake"),
               "--snakefile", str(Path(__file__).resolve().parents[1] / "Snakefile"),
               "--configfile", str(configfile.resolve()), "--directory", str(self.workdir),
               "--rerun-incomplete", "--keep-going", "--nolock"]
        cmd += ["--profile", self.profile] if self.profile else ["--cores", str(self.cores)]
        cmd += [*self.snakemake_args, *targets]
        self.launched += [r.run_id for r in runs]
        env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        # the generation's Snakemake works under the head's lock and dies with the head
        from pipelines.lock import child_env, die_with_parent

        fds = () if self.lock_fd is None else (self.lock_fd,)
        if fds:
            env = child_env(self.lock_fd, env)
        log = folder / f"generation-{generation:03d}.log"
        reported: set[str] = set()

        def report() -> None:
            for r in runs:
                if r.run_id not in reported and on_result is not None:
                    result = self.existing(r)
                    if result is not None:
                        reported.add(r.run_id)
                        on_result(r, result)

        with open(log, "a") as fh:
            proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                    cwd=self.workdir, pass_fds=fds, preexec_fn=die_with_parent)
            try:
                while True:
                    try:
                        proc.wait(timeout=poll_s)
                        break
                    except subprocess.TimeoutExpired:
                        report()
            except BaseException:  # interrupted: the generation's jobs stop with it
                proc.kill()
                proc.wait()
                raise
        report()
        return {r.run_id: self.existing(r) for r in runs}


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


# ----------------------------------------------------------------------------- the loop
def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _worker_gone(worker: str | None) -> bool:
    """Whether ``worker`` (``host:pid``) is a process of this host that no longer exists."""
    if not worker or ":" not in worker:
        return False
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _say(message: str) -> None:
    """A progress line on stdout, at once (the search runs for hours)."""
    print(message, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(max(0.0, seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def describe(variant: str, settings: Mapping[str, Any]) -> str:
    """``pro_scale schedule=2-2-2 trc=true lpe=false``: a setting in one short line."""
    def text(v):
        return json.dumps(v) if isinstance(v, bool) else str(v)
    return " ".join([variant] + [f"{k}={text(v)}" for k, v in settings.items()])


class Search:
    """One search: the study, the setting -> run mapping, the cost and the executor.

    The budget is in trainings: a proposed setting that is already known (trained by the grid,
    a warm start or an earlier trial, or refused by its cost) is answered from what is known in
    the same trial, at no training; a setting is trained once at most; the search stops when
    ``spec.max_trainings`` trainings were launched, when every setting of a finite space is
    known, or at the trial cap ``spec.max_trials`` (a safety net well above the training budget).

    Args:
        spec: the validated search space (:class:`pipelines.search_space.SearchSpec`).
        study: the Optuna study (:func:`open_study`).
        executor: :class:`SnakemakeExecutor` or :class:`ReplayExecutor`.
        cost: run -> GFLOPs (``total``), e.g. ``FlopsCache.gflops``.
        make_run: ``(variant, settings) -> Run`` (cached per setting).
        log: progress lines (one per proposed setting, one per finished training); stdout.
        tracker: called with ``(study, told trial numbers)`` after each generation (MLflow).
    """

    def __init__(self, *, spec, study, executor, cost: Callable, make_run: Callable | None = None,
                 log: Callable[[str], None] = _say, tracker: Callable | None = None) -> None:
        from pipelines.search_runs import make_run as grid_run

        self.spec, self.study, self.executor, self.cost = spec, study, executor, cost
        self._make_run = make_run or (lambda v, s: grid_run(spec, v, s))
        self._runs: dict[str, Any] = {}
        self.log, self.tracker = log, tracker
        self.worker = _worker()
        self.told: list[int] = []
        self.stopped = ""  # why the last run() stopped
        self._train_s = 0.0  # wall time of this process's generations, for the estimate
        self._trained_here = 0  # trainings this process saw finish
        self._deferred: list = []  # refused trials waiting for a first measured mIoU

    # -- helpers
    def run_of(self, variant: str, settings: Mapping[str, Any]):
        key = json.dumps([variant, settings], sort_keys=True, default=str)
        if key not in self._runs:
            self._runs[key] = self._make_run(variant, dict(settings))
        return self._runs[key]

    def _attr(self, trial, key: str):
        """A user attribute as stored now (a live Trial caches its attributes; another worker
        may have changed it: read through the storage, Optuna has no public per-trial read)."""
        return self.study._storage.get_trial(trial._trial_id).user_attrs.get(key)

    def _trials(self, states=None):
        return self.study.get_trials(deepcopy=False, states=states)

    def counted_trials(self) -> int:
        """Trials asked by the search (warm-start trials are not counted)."""
        return sum(1 for t in self._trials() if t.user_attrs.get(STATUS) != "warm_start")

    def trainings(self) -> set[str]:
        """Run ids this search launched a training for."""
        return {t.user_attrs[RUN_ID] for t in self._trials()
                if t.user_attrs.get("trained_by_search") and RUN_ID in t.user_attrs}

    def known(self) -> tuple[dict[str, tuple[dict, int]], dict[str, tuple[float, int]]]:
        """What the study knows: ``{run id: (metrics, trial number)}`` of settings with a result
        (trained, reused, warm start) and ``{run id: (GFLOPs, trial number)}`` of settings
        refused by cost."""
        results: dict[str, tuple[dict, int]] = {}
        refused: dict[str, tuple[float, int]] = {}
        for t in self._trials():
            run_id, status = t.user_attrs.get(RUN_ID), t.user_attrs.get(STATUS)
            if run_id is None:
                continue
            if status == "infeasible" and t.state.name != "FAIL":
                refused.setdefault(run_id, (float(t.user_attrs["gflops_total"]), t.number))
            elif (t.state.name == "COMPLETE" and status in ("trained", "reused", "warm_start")
                  and t.values):
                results.setdefault(run_id, ({"miou": t.values[0]}, t.number))
        return results, refused

    def space_ids(self) -> set[str] | None:
        """Run ids of every setting of a space whose axes are all lists, up to 5000 settings
        (``None``: a range axis, or more settings)."""
        if not hasattr(self, "_space_ids"):
            from pipelines.search_runs import space_points

            size = 0
            for axes in self.spec.variants.values():
                if any(a.choices is None for a in axes):
                    size = None
                    break
                n = 1
                for a in axes:
                    n *= len(a.choices)
                size += n
            self._space_ids = (None if size is None or size > 5000 else
                               {self.run_of(v, s).run_id for v, s in space_points(self.spec)})
        return self._space_ids

    def _exhausted(self, busy: set[str]) -> bool:
        """Every setting of a finite space is known (told, refused) or being trained."""
        ids = self.space_ids()
        if ids is None:
            return False
        results, refused = self.known()
        return ids <= set(results) | set(refused) | busy

    def _finish(self, number: int, values=None, state: str = "COMPLETE") -> bool:
        """Tell a trial; False when another worker finished it first (the storage locks the
        trial's row and refuses a second update)."""
        import optuna

        try:
            self.study.tell(number, values, state=optuna.trial.TrialState[state])
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            return False
        self.told.append(number)
        return True

    def _tell(self, number: int, metrics: Mapping[str, Any], gflops: float) -> bool:
        return self._finish(number, [float(metrics["miou"]), float(gflops)])

    def _fail(self, trial, reason: str) -> None:
        import optuna

        try:
            self.study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            self.study._storage.set_trial_user_attr(trial._trial_id, STATUS, "failed")
        except optuna.exceptions.UpdateFinishedTrialError:
            return  # another worker finished it
        if not self._finish(trial.number, state="FAIL"):
            return
        attempt = int(self._attr(trial, "attempt") or 0)
        if reason != "not costed" and attempt < self.spec.retries and trial.params:
            self.study.enqueue_trial(trial.params, user_attrs={"attempt": attempt + 1,
                                                               "retry_of": trial.number},
                                     skip_if_exists=False)
            self.log(f"trial {trial.number}: {reason}; asked again (attempt {attempt + 1})")
        else:
            self.log(f"trial {trial.number}: {reason}; failed")

    # -- start-up and every generation
    def settle_running(self) -> list:
        """Settle the RUNNING trials no live process watches: those of a head of this host that
        is gone, and any past its deadline (a head on another host cannot be checked). A result
        on disk -> told; a gone head within the deadline -> returned, to be trained again (the
        job resumes from its checkpoint); past the deadline -> FAIL (asked again up to
        ``retries`` times). Trials of live workers are left to them."""
        again = []
        now = time.time()
        for t in self._trials(states=None):
            if t.state.name != "RUNNING" or t.user_attrs.get("worker") == self.worker:
                continue  # finished, or ours in flight in this process
            started = t.datetime_start.timestamp() if t.datetime_start else now
            deadline = float(t.user_attrs.get("deadline") or
                             started + 60 * (self.executor.job_minutes() + self.spec.grace_minutes))
            gone, late = _worker_gone(t.user_attrs.get("worker")), now > deadline
            if not (gone or late):
                continue
            if RUN_ID not in t.user_attrs:  # its head died while costing it
                self._fail(t, "not costed")
                continue
            if t.user_attrs.get(STATUS) == "infeasible":  # refused, waiting for a floor
                self._refuse(t, float(t.user_attrs["gflops_total"]), self.known()[0],
                             final=True)
                continue
            run = self.run_of(t.user_attrs["variant"], json.loads(t.user_attrs["settings"]))
            result = self.executor.existing(run)
            if result is not None:
                if self._set(t, STATUS, "trained") and self._tell(
                        t.number, result, t.user_attrs["gflops_total"]):
                    self.log(f"trial {t.number}: {run.run_id} finished while no head watched; "
                             "told")
            elif late:
                self._fail(t, f"{run.run_id}: no result by its deadline (job died)")
            elif self._set(t, "worker", self.worker):
                again.append((t, run))
        return again

    def _set(self, trial, key: str, value) -> bool:
        """Set a user attribute; False when the trial was finished meanwhile (by a worker that
        settled it)."""
        import optuna

        try:
            self.study._storage.set_trial_user_attr(trial._trial_id, key, value)
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        return True

    def warm_start(self) -> int:
        """Load finished grid runs of the ``warm_start`` ablations as completed trials."""
        import optuna

        from pipelines.grid import expand_grid, load_ablation, validate_ablation
        from pipelines.search_runs import REPO, read_result

        if self.study.user_attrs.get("warm_started"):
            return 0
        known = {t.user_attrs.get(RUN_ID) for t in self._trials()}
        added = 0
        for path in self.spec.warm_start:
            ablation = validate_ablation(load_ablation(path), check_data=False)
            for run in expand_grid(ablation, repo=REPO):
                point = self.spec.params_of(run.variant, run.settings)
                result = read_result(ablation, run)
                if point is None or result is None or run.run_id in known:
                    continue
                gflops = self.cost(run)
                trial = optuna.trial.create_trial(
                    params=point["params"], distributions=point["distributions"],
                    values=[float(result["miou"]), float(gflops)],
                    user_attrs={STATUS: "warm_start", RUN_ID: run.run_id,
                                "variant": run.variant, "gflops_total": gflops,
                                "settings": json.dumps(dict(run.settings), sort_keys=True,
                                                       default=str), "ablation": path},
                    system_attrs=constraint_attrs(gflops, self.spec.gflops_budget))
                trial.set_constraint(CONSTRAINT, float(gflops) - self.spec.gflops_budget)
                self.study.add_trial(trial)
                known.add(run.run_id)
                added += 1
        self.study.set_user_attr("warm_started", True)
        if added:
            self.log(f"warm start: {added} grid runs loaded as completed trials")
        return added

    # -- the generation loop
    def run(self) -> dict:
        """Ask, cost, train, tell until the training budget is spent (or every setting of a
        finite space is known, or the trial cap is reached)."""
        self.study.set_user_attr("search_spec", self.spec.path)
        again = self.settle_running()
        if self.spec.warm_start:
            self.warm_start()
        generation = 0
        self.stopped = ""
        while True:
            generation += 1
            launched = self.trainings()
            batch: list = []  # (trial, run, in-batch leader number or None)
            pending: dict[str, int] = {}  # run id -> the trial of this batch that trains it
            for trial, run in again:  # trials adopted from a dead head first
                leader = pending.get(run.run_id)
                batch.append((trial, run, leader))
                pending.setdefault(run.run_id, trial.number)
            again = []
            while len(pending) < self.spec.batch:
                busy = launched | set(pending)
                if self._trainings_spent(busy):
                    self.stopped = (f"training budget spent ({len(busy)} of "
                                    f"{self.spec.max_trainings} trainings)")
                    break
                if self.counted_trials() >= self.spec.max_trials:
                    self.stopped = f"trial cap reached ({self.spec.max_trials} trials)"
                    break
                if self._exhausted(busy):
                    self.stopped = "every setting of the space is known"
                    break
                item = self._ask_one(pending)
                if item is not None:
                    batch.append(item)
                    pending.setdefault(item[1].run_id, item[0].number)
            if not batch:
                break
            followers = [(t, r) for t, r, leader in batch if leader is None
                         and (self._attr(t, STATUS) == "follows"
                              or self._leader_of(t, r) is not None)]
            same = [(t, r) for t, r, leader in batch if leader is not None]
            batch = [(t, r) for t, r, leader in batch if leader is None
                     and (t, r) not in followers]
            runs = list({run.run_id: run for _, run in batch}.values())
            trial_of = {run.run_id: trial.number for trial, run in batch}
            started = time.time()
            if runs:
                self.log(f"generation {generation}: training {len(runs)} run(s): "
                         f"{', '.join(r.run_id for r in runs)}")

            done: list[str] = []

            def finished(run, result, started=started, n_runs=len(runs), done=done):
                done.append(run.run_id)
                self._trained_here += 1
                self.log(self._finished_line(run, result, trial_of.get(run.run_id),
                                             time.time() - started, n_runs - len(done)))

            results = self.executor.train(runs, generation, on_result=finished) if runs else {}
            self._train_s += time.time() - started
            for trial, run in batch:
                result = results.get(run.run_id)
                if result is None:
                    self._fail(trial, f"{run.run_id}: the job ended without a result")
                elif self._set(trial, STATUS, "trained"):
                    self._tell(trial.number, result, self._attr(trial, "gflops_total"))
            for trial, run in same:  # the same setting twice in one batch: trained once
                result = results.get(run.run_id)
                if result is None:
                    self._fail(trial, f"{run.run_id}: the job ended without a result")
                elif self._set(trial, STATUS, "reused"):
                    self._tell(trial.number, result, self._attr(trial, "gflops_total"))
            for trial, run in followers:
                self._follow(trial, run)
            self._tell_deferred(final=False)
            again = self.settle_running()
            if self.tracker is not None:
                self.tracker(self.study, list(self.told))
        self._tell_deferred()
        summary = self.summary()
        self.log(f"search {self.study.study_name}: stopped, {self.stopped or 'nothing to do'}; "
                 f"{summary['trials']} trials, {summary['trainings']} trainings, "
                 f"{len(summary['pareto_front'])} settings on the Pareto front")
        return summary

    def _finished_line(self, run, result, number, elapsed: float, in_flight: int) -> str:
        """``trial 7 trained pro_scale-...: mIoU 23.41 in 1m12s | 4 trainings, 2 left of 6 |
        about 2m24s left``; the estimate is this process's pace so far (wall time of its
        generations, parallel jobs included, per finished training)."""
        used = len(self.trainings())
        line = (f"trial {number} trained {run.run_id}: mIoU {float(result['miou']):.2f} in "
                f"{_duration(elapsed)}")
        if self.spec.max_trainings is None:
            return line + f" | {used} trainings (no training budget)"
        left = max(0, self.spec.max_trainings - used) + in_flight
        pace = (self._train_s + elapsed) / max(1, self._trained_here)
        return (line + f" | {used - in_flight} trainings done, {left} left of "
                f"{self.spec.max_trainings} | about {_duration(pace * left)} left")

    def _leader_of(self, trial, run):
        """Another worker's trial that trains (or trained) the same run, submitted first: this
        trial then waits for its result instead of training it a second time.

        Each worker writes its submission (``submitted_at``, then the status) before looking,
        so of two simultaneous submissions both see each other and agree on one order,
        ``(submitted_at, trial number)``; a leader that already finished (COMPLETE, its result
        written before its status changed) counts too, since its result is then on disk. The
        order is by submission, not by trial number: a trial asked early but costed slowly
        must not win over one already training."""
        mine = (float(self._attr(trial, "submitted_at") or time.time()), trial.number)
        for t in self._trials(states=None):
            if (t.number == trial.number or t.user_attrs.get(RUN_ID) != run.run_id
                    or t.state.name not in ("RUNNING", "COMPLETE")
                    or t.user_attrs.get(STATUS) not in ("submitted", "trained")
                    or t.user_attrs.get("worker") == self.worker):
                continue
            if (float(t.user_attrs.get("submitted_at") or 0.0), t.number) < mine:
                self._set(trial, STATUS, "follows")
                self._set(trial, "follows", t.number)
                return t
        return None

    def _follow(self, trial, run, poll_s: float = 2.0) -> None:
        """Wait for the leader's result (until this trial's deadline); tell or fail."""
        deadline = float(self._attr(trial, "deadline"))
        while True:
            result = self.executor.existing(run)
            if result is not None:
                if self._set(trial, STATUS, "reused"):
                    self._tell(trial.number, result, self._attr(trial, "gflops_total"))
                return
            leader = self._attr(trial, "follows")
            if leader is not None and self.study._storage.get_trial(
                    self.study._storage.get_trial_id_from_study_id_trial_number(
                        self.study._study_id, int(leader))).state.name == "FAIL":
                self._fail(trial, f"{run.run_id}: the training of trial {leader} (another "
                                  "worker) failed")
                return
            if time.time() > deadline or self._attr(trial, STATUS) == "failed":
                self._fail(trial, f"{run.run_id}: trained by another worker, no result by the "
                                  "deadline")
                return
            if self.study._storage.get_trial(trial._trial_id).state.is_finished():
                return  # settled by another worker
            time.sleep(poll_s)

    def _refuse(self, trial, gflops: float, results: Mapping[str, tuple[dict, int]],
                final: bool = False) -> None:
        """Tell a setting over the GFLOPs budget (its constraint is set): COMPLETE with its real
        GFLOPs and, for mIoU, the floor of the study (the lowest mIoU measured so far, marked
        ``miou_told=floor``), so that NSGA-II and the GP sampler, which read COMPLETE trials
        only, learn the constraint, and optuna-dashboard draws it as infeasible at the bottom
        edge of the measured points instead of squeezing them against mIoU 0. Samplers rank it
        by its constraint, not by this value. Before any mIoU is measured there is no floor:
        the trial stays RUNNING until the generation's trainings are in (``final``: PRUNED if
        there is still none; TPE reads the constraint of a PRUNED trial too)."""
        floor = min((float(r[0]["miou"]) for r in results.values()), default=None)
        if floor is None and not final:
            self._deferred.append((trial, float(gflops)))  # told after this generation
            return
        if floor is None:
            self._finish(trial.number, state="PRUNED")
            return
        self._set(trial, "miou_told", "floor")
        self._finish(trial.number, [floor, float(gflops)])

    def _tell_deferred(self, final: bool = True) -> None:
        """Tell the refused trials kept RUNNING while no mIoU was measured yet."""
        deferred, self._deferred = self._deferred, []
        if deferred:
            results, _ = self.known()
            for trial, gflops in deferred:
                self._refuse(trial, gflops, results, final=final)

    def _trainings_spent(self, launched: set[str]) -> bool:
        return self.spec.max_trainings is not None and len(launched) >= self.spec.max_trainings

    def _ask_one(self, pending: Mapping[str, int]):
        """Ask one trial and answer it from what is known when possible: a setting over the
        GFLOPs budget is refused (PRUNED with its constraint, never trained), one with a result
        (results folder, or an earlier trial of the study) is told that result. Returns
        ``(trial, run, None)`` when it must be trained, ``(trial, run, leader)`` when another
        trial of this batch trains the same setting, else ``None``. One progress line."""
        study = self.study
        trial = study.ask()
        trial.set_user_attr("worker", self.worker)
        deadline = time.time() + 60 * (self.executor.job_minutes() + self.spec.grace_minutes)
        trial.set_user_attr("deadline", deadline)
        variant, settings = self.spec.suggest(trial)
        try:
            run = self.run_of(variant, settings)
        except UserError as err:
            self._fail(trial, f"setting refused by the grid: {err}")
            return None
        results, refused = self.known()
        if run.run_id in refused:  # priced before: the same model, the same GFLOPs
            gflops = refused[run.run_id][0]
        else:
            gflops = float(self.cost(run))
        for key, value in {"variant": variant, "gflops_total": gflops,  # run id last: a
                           "settings": json.dumps(dict(run.settings), sort_keys=True,
                                                  default=str),  # trial with it is complete
                           RUN_ID: run.run_id}.items():
            trial.set_user_attr(key, value)
        set_gflops_constraint(study, trial, gflops, self.spec.gflops_budget)
        head = f"trial {trial.number}: {describe(variant, settings)} | {gflops:.3f} GFLOPs | "
        if gflops > self.spec.gflops_budget:
            trial.set_user_attr(STATUS, "infeasible")
            self._refuse(trial, gflops, results)
            again = (f" (as in trial {refused[run.run_id][1]})" if run.run_id in refused
                     else "")
            self.log(head + f"refused: over the budget of {self.spec.gflops_budget} "
                     f"GFLOPs{again}, not trained")
            return None
        result, source = self.executor.existing(run), "its results on disk"
        if result is None and run.run_id in results:
            result, source = results[run.run_id][0], f"trial {results[run.run_id][1]}"
        if result is not None:
            trial.set_user_attr(STATUS, "reused")
            trial.set_user_attr("reused_from", source)
            self._tell(trial.number, result, gflops)
            self.log(head + f"reused: mIoU {float(result['miou']):.2f} from {source}, "
                     "not trained")
            return None
        if run.run_id in pending:
            trial.set_user_attr(STATUS, "follows")
            trial.set_user_attr("follows", pending[run.run_id])
            self.log(head + f"reused: trial {pending[run.run_id]} of this generation trains it")
            return trial, run, pending[run.run_id]
        deadline = time.time() + 60 * (self.executor.job_minutes() + self.spec.grace_minutes)
        for key, value in {"deadline": deadline, "submitted_at": time.time(),
                           "trained_by_search": True, STATUS: "submitted"}.items():
            trial.set_user_attr(key, value)
        self.log(head + "train")
        return trial, run, None

    def summary(self) -> dict:
        """Trials by status, trainings, and the feasible Pareto front, each setting once (its
        first trial)."""
        trials = self._trials(states=None)
        states: dict[str, int] = {}
        for t in trials:
            key = t.user_attrs.get(STATUS, t.state.name.lower())
            states[key] = states.get(key, 0) + 1
        front, seen = [], set()
        for t in sorted(self.study.best_trials, key=lambda t: t.number):
            run_id = t.user_attrs.get(RUN_ID)
            if run_id in seen:
                continue
            seen.add(run_id)
            front.append(t)
        return {"study": self.study.study_name, "trials": len(trials), "by_status": states,
                "trainings": len(self.trainings()), "stopped": self.stopped,
                "pareto_front": [{"number": t.number, "run_id": t.user_attrs.get(RUN_ID),
                                  "status": t.user_attrs.get(STATUS),
                                  "miou": t.values[0], "gflops_total": t.values[1]}
                                 for t in sorted(front, key=lambda t: t.values[1])]}


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
    p.add_argument("--no-mlflow", action="store_true", help="do not log trials to MLflow")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    from pipelines.search_runs import FlopsCache
    from pipelines.search_space import load_search_space

    for name in ("max_trials", "max_trainings", "batch"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise UserError(f"--{name.removeprefix('max_')}: expected a positive integer")
    spec = load_search_space(args.space, sampler=args.sampler, seed=args.seed,
                             max_trials=args.max_trials, max_trainings=args.max_trainings,
                             batch=args.batch)
    check_warm_start(spec)
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
    shape = (spec.ablation.get("flops") or {}).get("shape") or (512, 512)
    cache = FlopsCache(path=folder / "flops_cache.json", shape=shape)
    executor = SnakemakeExecutor(spec=spec, cores=args.cores, profile=args.profile)
    executor.hold_results()
    tracker = None
    if not args.no_mlflow:
        from pipelines.search_tracking import track_trials

        tracker = lambda study, told: track_trials(spec, study)  # noqa: E731
    search = Search(spec=spec, study=study, executor=executor,
                    cost=lambda run: cache.gflops(run)["total"], tracker=tracker)
    summary = search.run()
    if tracker is not None:
        tracker(study, search.told)
    from pipelines.config import write_json_atomic

    write_json_atomic(folder / "summary.json", summary)  # the front, each setting once
    print(json.dumps(summary, indent=2))
    print(f"saved: {folder / 'summary.json'}", flush=True)
    return 0
