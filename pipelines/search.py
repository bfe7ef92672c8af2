"""``python -m pipelines search SPACE.yaml``: multi-objective Optuna search, cost first, trials as DAG jobs.

The study has two objectives, validation ``miou`` (maximise) and ``gflops_total`` (minimise),
named with ``study.set_metric_names`` so that optuna-dashboard labels its axes. The search runs in
**generations**: ask a batch of trials, cost each proposed setting with the real FLOPs counter
(:class:`pipelines.search_runs.FlopsCache`, no training), train and evaluate the feasible ones
as the grid's own Snakemake jobs (an ablation YAML listing exactly those settings as ``points``,
so run ids, folders and recipes are the grid's), read their ``metrics.json``, tell.

Cost first. A setting over ``budget.gflops_total`` is never trained: it is told COMPLETE with
the penalty values ``(infeasible_miou, its real GFLOPs)`` and a positive constraint
``gflops_total - budget`` through Optuna 5's :meth:`optuna.trial.Trial.set_constraint`. Every
sampler then learns the region is infeasible: TPE ranks trials with a positive constraint below
every feasible one (it would also read PRUNED infeasible trials, but NSGA-II and the GP sampler
read COMPLETE trials only, hence COMPLETE for all three); NSGA-II's constrained domination puts
any feasible trial above any infeasible one; the GP sampler fits a GP to the constraint value and
weights its acquisition by the probability of feasibility. optuna-dashboard 0.21 reads only
the pre-5.0 ``constraints`` list attribute, so the same value is also written there (Optuna then
lists the constraint twice, as ``gflops_over_budget`` and ``0``; both are the same number).

Reuse. A setting whose run already has a ``metrics.json`` under the base ablation's name (the
grid trained it, or an earlier trial did) is told from it without training (same run id).
``warm_start`` ablations load their finished runs into the study as completed trials.

Resume and dead jobs. Trials are told by number, so a new head process picks up the study where
the old one died: at start-up and after every generation, each RUNNING trial is settled: its
result exists -> told; it was submitted by a process of this host that is gone -> trained again
(Snakemake resumes from its last checkpoint); its deadline (submission time + the train and
evaluate jobs' declared runtime x attempts + ``failed.grace_minutes``) has passed -> FAIL, and
asked again as a new trial up to ``failed.retries`` times. Nothing is left RUNNING. The search
counts its own budget (``budget.trials`` asked trials, ``budget.trainings`` distinct trainings).
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
    """System attributes of the GFLOPs constraint: Optuna 5's per-key format and the list
    optuna-dashboard reads."""
    from optuna.study._constrained_optimization import _CONSTRAINTS_KEY

    value = float(gflops) - float(budget)
    return {f"{_CONSTRAINTS_KEY}:{CONSTRAINT}": value, DASHBOARD_CONSTRAINTS_ATTR: [value]}


def set_gflops_constraint(study, trial, gflops: float, budget: float) -> None:
    """``trial.set_constraint`` plus the dashboard's copy."""
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
        from pipelines.search_runs import read_result

        return read_result(self.spec.ablation, run)

    def job_minutes(self) -> float:
        """Declared runtime of one run's train + evaluate jobs, over every attempt."""
        res = self.spec.ablation.get("resources") or {}
        attempts = int(self.spec.ablation.get("retries", 0)) + 1
        per_attempt = sum(float((res.get(s) or {}).get("runtime", 60)) for s in ("train",
                                                                                   "evaluate"))
        return per_attempt * attempts * (attempts + 1) / 2  # runtime grows with the attempt

    def train(self, runs, generation: int) -> dict[str, dict | None]:
        import yaml

        from pipelines.search_runs import point_ablation, result_paths

        if not runs:
            return {}
        ablation = point_ablation(self.spec.ablation,
                                  [(r.variant, dict(r.settings)) for r in runs])
        folder = Path(self.spec.ablation.get("results", "results")) / "search" / self.spec.name
        folder = folder if folder.is_absolute() else self.workdir / folder
        folder.mkdir(parents=True, exist_ok=True)
        configfile = folder / f"generation-{generation:03d}.yaml"
        configfile.write_text(yaml.safe_dump(ablation, sort_keys=False))
        targets = [str(result_paths(ablation, r).metrics) for r in runs]
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
        with open(log, "a") as fh:
            subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                           cwd=self.workdir, pass_fds=fds, preexec_fn=die_with_parent)
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

    def train(self, runs, generation: int) -> dict[str, dict | None]:
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


class Search:
    """One search: the study, the setting -> run mapping, the cost and the executor.

    Args:
        spec: the validated search space (:class:`pipelines.search_space.SearchSpec`).
        study: the Optuna study (:func:`open_study`).
        executor: :class:`SnakemakeExecutor` or :class:`ReplayExecutor`.
        cost: run -> GFLOPs (``total``), e.g. ``FlopsCache.gflops``.
        make_run: ``(variant, settings) -> Run`` (cached per setting).
        log: one-line progress messages.
        tracker: called with ``(study, told trial numbers)`` after each generation (MLflow).
    """

    def __init__(self, *, spec, study, executor, cost: Callable, make_run: Callable | None = None,
                 log: Callable[[str], None] = print, tracker: Callable | None = None) -> None:
        from pipelines.search_runs import make_run as grid_run

        self.spec, self.study, self.executor, self.cost = spec, study, executor, cost
        self._make_run = make_run or (lambda v, s: grid_run(spec, v, s))
        self._runs: dict[str, Any] = {}
        self.log, self.tracker = log, tracker
        self.worker = _worker()
        self.told: list[int] = []

    # -- helpers
    def run_of(self, variant: str, settings: Mapping[str, Any]):
        key = json.dumps([variant, settings], sort_keys=True, default=str)
        if key not in self._runs:
            self._runs[key] = self._make_run(variant, dict(settings))
        return self._runs[key]

    def _attr(self, trial, key: str):
        """A user attribute as stored now (a live Trial caches its attributes)."""
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
                self.study.add_trial(trial)
                known.add(run.run_id)
                added += 1
        self.study.set_user_attr("warm_started", True)
        if added:
            self.log(f"warm start: {added} grid runs loaded as completed trials")
        return added

    # -- the generation loop
    def run(self) -> dict:
        """Ask, cost, train, tell until the trial (or training) budget is spent."""
        self.study.set_user_attr("search_spec", self.spec.path)
        again = self.settle_running()
        if self.spec.warm_start:
            self.warm_start()
        generation = 0
        while True:
            generation += 1
            batch = list(again)  # (trial, run): trials adopted from a dead head first
            again = []
            n_asked = self.counted_trials()
            launched = self.trainings()
            pending = {run.run_id for _, run in batch}
            while (len(batch) < self.spec.batch and n_asked < self.spec.max_trials
                   and not self._trainings_spent(launched | pending)):
                item = self._ask_one(launched | pending)
                n_asked = self.counted_trials()  # other workers ask too: count the study
                if item is not None:
                    batch.append(item)
                    pending.add(item[1].run_id)
            if not batch:
                break
            followers = [(t, r) for t, r in batch if self._attr(t, STATUS) == "follows"
                         or self._leader_of(t, r) is not None]
            batch = [item for item in batch if item not in followers]
            runs = list({run.run_id: run for _, run in batch}.values())
            self.log(f"generation {generation}: training {len(runs)} run(s): "
                     f"{', '.join(r.run_id for r in runs)}")
            results = self.executor.train(runs, generation)
            for trial, run in batch:
                result = results.get(run.run_id)
                if result is None:
                    self._fail(trial, f"{run.run_id}: the job ended without a result")
                elif self._set(trial, STATUS, "trained"):
                    self._tell(trial.number, result, self._attr(trial, "gflops_total"))
            for trial, run in followers:
                self._follow(trial, run)
            again = self.settle_running()
            if self.tracker is not None:
                self.tracker(self.study, list(self.told))
        return self.summary()

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

    def _trainings_spent(self, launched: set[str]) -> bool:
        return self.spec.max_trainings is not None and len(launched) >= self.spec.max_trainings

    def _ask_one(self, launched: set[str]):
        """Ask one trial and cost it; infeasible and already-trained settings are told at once.
        Returns ``(trial, run)`` when it must be trained, else ``None``."""
        study, storage = self.study, self.study._storage
        trial = study.ask()
        storage.set_trial_user_attr(trial._trial_id, "worker", self.worker)
        deadline = time.time() + 60 * (self.executor.job_minutes() + self.spec.grace_minutes)
        storage.set_trial_user_attr(trial._trial_id, "deadline", deadline)
        variant, settings = self.spec.suggest(trial)
        try:
            run = self.run_of(variant, settings)
        except UserError as err:
            self._fail(trial, f"setting refused by the grid: {err}")
            return None
        gflops = float(self.cost(run))
        for key, value in {"variant": variant, "gflops_total": gflops,  # run id last: a
                           "settings": json.dumps(dict(run.settings), sort_keys=True,
                                                  default=str),  # trial with it is complete
                           RUN_ID: run.run_id}.items():
            storage.set_trial_user_attr(trial._trial_id, key, value)
        set_gflops_constraint(study, trial, gflops, self.spec.gflops_budget)
        if gflops > self.spec.gflops_budget:
            storage.set_trial_user_attr(trial._trial_id, STATUS, "infeasible")
            self._tell(trial.number, {"miou": self.spec.infeasible_miou}, gflops)
            self.log(f"trial {trial.number}: {run.run_id} {gflops:.3f} GFLOPs > budget "
                     f"{self.spec.gflops_budget}: infeasible, not trained")
            return None
        result = self.executor.existing(run)
        if result is not None:
            storage.set_trial_user_attr(trial._trial_id, STATUS, "reused")
            self._tell(trial.number, result, gflops)
            self.log(f"trial {trial.number}: {run.run_id} already trained: result reused")
            return None
        if run.run_id not in launched and self._trainings_spent(launched):
            self._fail(trial, "training budget spent")
            return None
        deadline = time.time() + 60 * (self.executor.job_minutes() + self.spec.grace_minutes)
        for key, value in {"deadline": deadline, "submitted_at": time.time(),
                           "trained_by_search": True, STATUS: "submitted"}.items():
            storage.set_trial_user_attr(trial._trial_id, key, value)
        return trial, run

    def summary(self) -> dict:
        trials = self._trials()
        states: dict[str, int] = {}
        for t in trials:
            key = t.user_attrs.get(STATUS, t.state.name.lower())
            states[key] = states.get(key, 0) + 1
        front = [t for t in self.study.best_trials]
        return {"study": self.study.study_name, "trials": len(trials), "by_status": states,
                "trainings": len(self.trainings()),
                "pareto_front": [{"number": t.number, "run_id": t.user_attrs.get(RUN_ID),
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
    p.add_argument("--trials", type=int, dest="max_trials", help="trial budget")
    p.add_argument("--trainings", type=int, dest="max_trainings", help="training budget")
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
    print(f"{spec.name}: search space OK ({len(spec.variants)} variants, {n} axes, GFLOPs "
          f"budget {spec.gflops_budget}, {spec.max_trials} trials)")
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
    print(json.dumps(summary, indent=2))
    return 0
