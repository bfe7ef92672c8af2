"""Trials no single head process watches: a dead head's, another worker's, a warm start's.

Resume and dead jobs. Trials are told by number, so a new head process picks up the study where
the old one died: at start-up and after every generation, each RUNNING trial is settled: its
result exists -> told; it was submitted by a process of this host that is gone -> trained again
(Snakemake resumes from its last checkpoint); its deadline (submission time + the train and
evaluate jobs' declared runtime x attempts + ``failed.grace_minutes``) has passed -> FAIL, and
asked again as a new trial up to ``failed.retries`` times. On an RDB storage (SQLite,
PostgreSQL) a head also beats for its RUNNING trials (Optuna's heartbeat,
:class:`pipelines.search.study.Heartbeat`), and a trial whose head stopped beating on any host
is failed by ``optuna.storages.fail_stale_trials`` and asked again. The journal file has no
heartbeat in Optuna, so there a head of another host is known dead only by the deadline.
Nothing is left RUNNING.

Concurrent workers on one study share the trial budget: a setting another worker is training is
waited for (:meth:`WorkerTrials._follow`), not trained twice.
"""
from __future__ import annotations

import json
import os
import socket
import time

from pipelines.search.study import (
    CONSTRAINT,
    RUN_ID,
    STATUS,
    Heartbeat,
    constraint_attrs,
    fail_stale_trials,
    trial_now,
)


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


class WorkerTrials:
    """The part of :class:`pipelines.search.loop.Search` that settles trials asked by other (or
    dead) processes, follows other workers' trainings and loads warm starts."""

    def settle_running(self) -> list:
        """Settle the RUNNING trials no live process watches: those of a head of this host that
        is gone, and any past its deadline (a head on another host: see below). A result
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
        # a head on another host cannot be checked by its process: on an RDB storage, Optuna's
        # heartbeat tells (this head beats first for its own trials, the adopted ones included);
        # the journal file has none, so there only the deadline above catches such a head
        Heartbeat(self.study, self.worker).beat()
        fail_stale_trials(self.study)
        return again

    def warm_start(self) -> int:
        """Load finished grid runs of the ``warm_start`` ablations as completed trials."""
        import optuna

        from pipelines.grid import expand_grid, load_ablation, validate_ablation
        from pipelines.search.runs import REPO, read_result

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
            if leader is not None and trial_now(self.study,
                                                int(leader)).state.name == "FAIL":
                self._fail(trial, f"{run.run_id}: the training of trial {leader} (another "
                                  "worker) failed")
                return
            if time.time() > deadline or self._attr(trial, STATUS) == "failed":
                self._fail(trial, f"{run.run_id}: trained by another worker, no result by the "
                                  "deadline")
                return
            if trial_now(self.study, trial.number).state.is_finished():
                return  # settled by another worker
            time.sleep(poll_s)
