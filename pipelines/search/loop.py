"""The search loop: ask a generation of trials, price each setting, train the new feasible ones
as one batch of jobs, tell (see :mod:`pipelines.search.cli` for the whole story).
"""
from __future__ import annotations

import json
import time
from typing import Any, Callable, Mapping

from pipelines.errors import UserError
from pipelines.search.study import (
    RUN_ID,
    STATUS,
    Heartbeat,
    ask,
    set_gflops_constraint,
    set_trial_attr,
    sync_settings_study,
    trial_now,
)
from pipelines.search.workers import WorkerTrials, _worker


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


class Search(WorkerTrials):
    """One search: the study, the setting -> run mapping, the cost and the executor.

    The budget is in trainings: a proposed setting that is already known (trained by the grid,
    a warm start or an earlier trial, or refused by its cost) is answered from what is known in
    the same trial, at no training; a setting is trained once at most; the search stops when
    ``spec.max_trainings`` trainings were launched, when every setting of a finite space is
    known, or at the trial cap ``spec.max_trials`` (a safety net well above the training budget).

    Args:
        spec: the validated search space (:class:`pipelines.search.space.SearchSpec`).
        study: the Optuna study (:func:`pipelines.search.study.open_study`).
        executor: :class:`pipelines.search.executors.SnakemakeExecutor` or
            :class:`pipelines.search.executors.ReplayExecutor`.
        cost: run -> GFLOPs (``total``), e.g. ``FlopsCache.gflops``.
        make_run: ``(variant, settings) -> Run`` (cached per setting).
        log: progress lines (one per proposed setting, one per finished training); stdout.
        tracker: called with ``(study, told trial numbers)`` after each generation (MLflow).
    """

    def __init__(self, *, spec, study, executor, cost: Callable, make_run: Callable | None = None,
                 log: Callable[[str], None] = _say, tracker: Callable | None = None) -> None:
        from pipelines.search.runs import make_run as grid_run

        self.spec, self.study, self.executor, self.cost = spec, study, executor, cost
        self._make_run = make_run or (lambda v, s: grid_run(spec, v, s))
        self._runs: dict[str, Any] = {}
        self.log, self.tracker = log, tracker
        self.worker = _worker()
        self.told: list[int] = []
        self.stopped = ""  # why the last run() stopped
        self._train_s = 0.0  # wall time of this process's generations, for the estimate
        self._trained_here = 0  # trainings this process saw finish
        self._settings = None  # the settings study (sync_settings_study), once opened
        self._deferred: list = []  # refused trials waiting for a first measured mIoU

    # -- helpers
    def run_of(self, variant: str, settings: Mapping[str, Any]):
        key = json.dumps([variant, settings], sort_keys=True, default=str)
        if key not in self._runs:
            self._runs[key] = self._make_run(variant, dict(settings))
        return self._runs[key]

    def _attr(self, trial, key: str):
        """A user attribute as stored now (a live Trial caches its attributes; another worker
        may have changed it)."""
        return trial_now(self.study, trial.number).user_attrs.get(key)

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
            from pipelines.search.runs import space_points

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
        if not (self._set(trial, "fail_reason", reason) and self._set(trial, STATUS, "failed")):
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

    def _set(self, trial, key: str, value) -> bool:
        """Set a user attribute; False when the trial was finished meanwhile (by a worker that
        settled it)."""
        return set_trial_attr(self.study, trial, key, value)

    # -- the generation loop

    def run(self) -> dict:
        """Ask, cost, train, tell until the training budget is spent (or every setting of a
        finite space is known, or the trial cap is reached); this head beats for its RUNNING
        trials meanwhile (RDB storages)."""
        with Heartbeat(self.study, self.worker):
            return self._run()

    def _run(self) -> dict:
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
            # what the dashboard shows: each setting once
            self._settings = sync_settings_study(self.study, self._settings)
            again = self.settle_running()
            if self.tracker is not None:
                self.tracker(self.study, list(self.told))
        self._tell_deferred()
        self._settings = sync_settings_study(self.study, self._settings)
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
        trial = ask(study)
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
