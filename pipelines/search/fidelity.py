"""Multi-fidelity search: stop the poor settings early, continue the good ones from their checkpoints.

Fidelity is iterations of one schedule. A setting's training follows the schedule of its full
budget R (``train_cfg.max_iters``); a rung r < R is that same training stopped and validated at
its checkpoint r (``python -m pipelines train --stop-at r``). A promoted setting continues from
that checkpoint to the next rung and never repeats an iteration; at R it is the uninterrupted
training, bit for bit (pipelines/stages/resume.py).

The loop follows asynchronous successive halving (ASHA, Li et al. 2020) with MOASHA's
multi-objective promotion (Schmucker et al. 2021): whenever a job can start, the highest rung
holding a setting that is among the first ``1/eta`` of its rung's results, in Pareto order, and
not promoted yet, promotes it to the next rung; if there is none, a new setting is proposed and
trained to the first rung. Pareto order at a rung: non-dominated sorting on (val mIoU at the rung,
up; GFLOPs, down), ties within a front broken by each point's exclusive hypervolume contribution
(reference: mIoU 0, GFLOPs = the budget), larger first.

Where this departs from the published designs, and why:

* Cost first. GFLOPs are known before training: a proposed setting over the GFLOPs budget is
  refused and never trained (MOASHA would train it to the first rung).
* Proposals come from the study's sampler, fitted as BOHB does (Falkner et al. 2018) on the
  highest rung that holds at least ``min_points`` results (else the first rung): a fresh study of
  that rung's results (values: mIoU at the rung, GFLOPs; the GFLOPs constraint of every refused
  setting) is asked for one setting. Cheap first-rung results end the sampler's random start-up
  after ``n_startup`` first-rung trainings, i.e. after ``n_startup * r_0 / R`` trainings' worth of
  iterations. ``proposals: random`` gives MOASHA's own random proposals (the benchmark's
  baseline).
* A proposed setting already known (trained to some rung, or refused) is asked again, up to
  ``MAX_REASKS`` times, then the first unknown setting of a finite space is taken at random.
* The budget is in iterations (``trainings`` x R): no job starts once the budget is spent (the
  last one may end past it). Only settings trained to R enter the search's Pareto front.
* A finite space with no setting left to propose spends the rest of the budget on promotions
  beyond the first ``1/eta`` (best first, highest rung first), as synchronous successive
  halving would finish its brackets; ASHA has no end of proposals.

The Optuna study holds one trial per setting: COMPLETE with (mIoU, GFLOPs) at R, or, when the
search ends with the setting below R, PRUNED (Optuna refuses ``trial.report`` in a study with
several objectives, so the rung results are kept as user attributes ``rung_<r>`` and
``rungs`` = ``{r: mIoU}``); a refused setting is PRUNED with its constraint (``status``
``infeasible``).
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pipelines.errors import UserError
from pipelines.search.promotion import hypervolume, promotable
from pipelines.search.rungs import Fidelity, report_markdown

#: proposals of an already known setting asked again before one is drawn at random
MAX_REASKS = 20




# ----------------------------------------------------------------------------- the search
@dataclass
class Setting:
    """What the search knows of one setting."""

    run: Any
    trial: Any  # the study's trial: a live Trial, or a FrozenTrial adopted from a dead head
    params: dict
    distributions: dict
    gflops: float
    rungs: dict[int, float] = field(default_factory=dict)  # iteration -> val mIoU
    promoted: set[int] = field(default_factory=set)  # rung levels promoted from
    closed: bool = False  # its trial is finished (a search that ended before): never promoted

    @property
    def level(self) -> int:
        return len(self.rungs) - 1


class FidelitySearch:
    """Propose, train to the first rung, promote in Pareto order (module doc).

    Args:
        spec: the validated search space.
        study: the Optuna study (one trial per setting).
        fidelity: :class:`Fidelity`.
        executor: ``train_rung(run, stop_at) -> {"miou": ...} | None`` continues ``run``'s
            training to iteration ``stop_at`` (from its last rung) and returns the val mIoU
            there (None: the job left no result).
        cost: run -> GFLOPs.
        make_run: ``(variant, settings) -> Run``.
        budget_iters: iterations the search may spend (``trainings x R``).
        seed: the proposals' seed.
        log: progress lines.
        on_job: called with ``(iterations spent, the search)`` after every job (the replay's
            curve of hypervolume against iterations).
    """

    def __init__(self, *, spec, study, fidelity: Fidelity, executor, cost: Callable,
                 make_run: Callable, budget_iters: int, seed: int = 0,
                 log: Callable[[str], None] = lambda m: None,
                 on_job: Callable | None = None, space_ids: list | None = None) -> None:
        self.spec, self.study, self.fid = spec, study, fidelity
        self.executor, self.cost, self.make_run = executor, cost, make_run
        self.budget_iters, self.seed, self.log, self.on_job = budget_iters, seed, log, on_job
        self.settings: dict[str, Setting] = {}
        self.failed: set[str] = set()
        self.refused: dict[str, tuple[dict, dict, float]] = {}  # run id -> params, dists, gflops
        self.spent = 0
        self.exhausted = False  # a finite space had no setting left to propose
        self._asks = 0
        self._rng = random.Random(seed)
        self._space = space_ids  # [(variant, settings)] of a finite space, for the fallback

    # -- what is known
    def rung_results(self, level: int) -> dict[str, float]:
        r = self.fid.rungs[level]
        return {k: s.rungs[r] for k, s in self.settings.items() if r in s.rungs}

    def full_results(self) -> dict[str, tuple[float, float]]:
        """Run id -> (mIoU, GFLOPs) of the settings trained to the full budget."""
        return {k: (s.rungs[self.fid.full], s.gflops) for k, s in self.settings.items()
                if self.fid.full in s.rungs}

    # -- the next job
    def next_promotion(self, eta: float | None = None) -> tuple[str, int] | None:
        """ASHA: the best promotable setting of the highest rung that has one (``eta`` 1: any
        setting not promoted yet, for a space with nothing left to propose)."""
        gflops = {k: s.gflops for k, s in self.settings.items()}
        for level in range(len(self.fid.rungs) - 2, -1, -1):
            results = self.rung_results(level)
            done = {k for k, s in self.settings.items() if level in s.promoted or s.closed}
            ids = promotable(results, gflops, done, eta or self.fid.eta, self.spec.gflops_budget)
            if ids:
                return ids[0], level + 1
        return None

    def restore(self) -> None:
        """Pick the study up where a dead head left it: every setting's rung results (user
        attributes), refused settings, and the iterations spent; a rung job the head did not
        see finish is asked again, and its training resumes from its last checkpoint (a rung
        already on disk is not trained again)."""
        for t in self.study.get_trials(deepcopy=False):
            run_id, status = t.user_attrs.get("run_id"), t.user_attrs.get("status")
            if run_id is None:
                continue
            if status == "infeasible":
                self.refused[run_id] = (dict(t.params), dict(t.distributions),
                                        float(t.user_attrs["gflops_total"]))
            elif status == "failed":
                self.failed.add(run_id)
            elif status in ("training", "trained", "stopped"):
                variant = t.user_attrs["variant"]
                run = self.make_run(variant, json.loads(t.user_attrs["settings"]))
                setting = Setting(run, t, dict(t.params), dict(t.distributions),
                                  float(t.user_attrs["gflops_total"]))
                setting.rungs = {int(k): float(v)
                                 for k, v in json.loads(t.user_attrs.get("rungs", "{}")).items()}
                setting.promoted = {k - 1 for k, r in enumerate(self.fid.rungs)
                                    if k and r in setting.rungs}
                setting.closed = t.state.name != "RUNNING"
                self.settings[run_id] = setting
                self.spent += sum(self.fid.cost(k) for k, r in enumerate(self.fid.rungs)
                                  if r in setting.rungs)

    def run(self) -> dict:
        """Jobs until the iteration budget is spent (or a finite space is used up)."""
        while self.spent < self.budget_iters:
            # a setting whose first rung a dead head did not see finish comes first
            job = next(((k, 0) for k, s in self.settings.items()
                        if not s.rungs and not s.closed), None) or self.next_promotion()
            if job is None:
                key = self.propose()
                # a finite space used up: the budget left goes to promotions beyond 1/eta
                self.exhausted = key is None
                job = (key, 0) if key is not None else self.next_promotion(eta=1.0)
                if job is None:
                    break
            key, level = job
            self._train(self.settings[key], level)
            if self.on_job is not None:
                self.on_job(self.spent, self)
        self.finish()
        return {"iterations": self.spent, "settings": len(self.settings),
                "full": len(self.full_results()), "refused": len(self.refused)}

    def _set(self, setting: Setting, key: str, value) -> None:
        from pipelines.search.study import set_trial_attr

        set_trial_attr(self.study, setting.trial, key, value)

    def _train(self, setting: Setting, level: int) -> None:
        import optuna

        stop_at = self.fid.rungs[level]
        if level:
            setting.promoted.add(level - 1)
        self.log(f"{setting.run.run_id}: {'promoted, ' if level else ''}training to "
                 f"iteration {stop_at}")
        result = self.executor.train_rung(setting.run, stop_at)
        self.spent += self.fid.cost(level)
        if result is None:
            self.log(f"{setting.run.run_id}: the job to iteration {stop_at} left no result; "
                     "failed")
            self._set(setting, "status", "failed")
            self._set(setting, "fail_reason", f"no result at iteration {stop_at}")
            self.study.tell(setting.trial.number, state=optuna.trial.TrialState.FAIL)
            self.failed.add(setting.run.run_id)
            del self.settings[setting.run.run_id]
            return
        miou = float(result["miou"])
        setting.rungs[stop_at] = miou
        self._set(setting, f"rung_{stop_at}", miou)
        self._set(setting, "rungs", json.dumps(setting.rungs))
        self.log(f"{setting.run.run_id}: mIoU {miou:.2f} at iteration {stop_at} "
                 f"({self.spent} of {self.budget_iters} iterations spent)")
        if stop_at == self.fid.full:
            self._set(setting, "status", "trained")
            self._set(setting, "trained_by_search", True)
            self.study.tell(setting.trial.number, [miou, setting.gflops])

    def finish(self) -> None:
        """Settings left below the full budget: PRUNED, their rung results kept."""
        import optuna

        for s in self.settings.values():
            if self.fid.full not in s.rungs and not s.closed:
                s.closed = True
                self._set(s, "status", "stopped")
                self.study.tell(s.trial.number, state=optuna.trial.TrialState.PRUNED)

    # -- proposals
    def known(self) -> set[str]:
        """Run ids of the settings proposed so far (trained to some rung, refused, failed)."""
        return set(self.settings) | set(self.refused) | self.failed

    def _model_study(self):
        """A fresh study of the highest rung with enough results (BOHB's choice of model)."""
        import optuna

        from pipelines.search.study import CONSTRAINT, create_sampler

        level = 0
        for k in range(len(self.fid.rungs) - 1, -1, -1):
            if len(self.rung_results(k)) >= self.fid.min_points:
                level = k
                break
        if self.fid.proposals == "random":
            sampler = optuna.samplers.RandomSampler(seed=self.seed * 100003 + self._asks)
        elif self.spec.sampler == "tpe":
            sampler = optuna.samplers.TPESampler(seed=self.seed * 100003 + self._asks,
                                                 n_startup_trials=self.fid.n_startup)
        else:
            sampler = create_sampler(self.spec.sampler, self.seed * 100003 + self._asks)
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per throw-away study
        try:
            model = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        finally:
            optuna.logging.set_verbosity(verbosity)
        results = self.rung_results(level)
        floor = min(results.values(), default=0.0)
        trials = []
        for key, miou in results.items():
            s = self.settings[key]
            t = optuna.trial.create_trial(params=s.params, distributions=s.distributions,
                                          values=[miou, s.gflops])
            t.set_constraint(CONSTRAINT, s.gflops - self.spec.gflops_budget)
            trials.append(t)
        for params, dists, gflops in self.refused.values():
            t = optuna.trial.create_trial(params=params, distributions=dists,
                                          values=[floor, gflops])
            t.set_constraint(CONSTRAINT, gflops - self.spec.gflops_budget)
            trials.append(t)
        model.add_trials(trials)
        return model

    def propose(self) -> str | None:
        """Ask the sampler for a setting nobody knows yet; a refused (over budget) one costs
        nothing and is asked past. Returns the run id of the setting to train, or None when a
        finite space has no unknown setting left."""
        from pipelines.search.study import STATUS, ask, set_gflops_constraint

        while True:
            params = None
            for _ in range(MAX_REASKS):
                self._asks += 1
                model = self._model_study()
                t = model.ask()
                variant, settings = self.spec.suggest(t)
                try:
                    run = self.make_run(variant, settings)
                except UserError:  # a setting the grid refuses (or a replay lacks)
                    continue
                if run.run_id not in self.known():
                    params = t.params
                    break
            if params is None:  # the sampler keeps proposing known settings
                unknown = [(v, s) for v, s in (self._space or [])
                           if self.make_run(v, s).run_id not in self.known()]
                if not unknown:
                    return None
                variant, settings = self._rng.choice(unknown)
                params = self.spec.params_of(variant, settings)["params"]
            self.study.enqueue_trial(params)
            trial = ask(self.study)
            variant, settings = self.spec.suggest(trial)
            run = self.make_run(variant, settings)
            gflops = float(self.cost(run))
            for key, value in {"variant": variant, "gflops_total": gflops,
                               "settings": json.dumps(dict(run.settings), sort_keys=True,
                                                      default=str),
                               "run_id": run.run_id}.items():
                trial.set_user_attr(key, value)
            set_gflops_constraint(self.study, trial, gflops, self.spec.gflops_budget)
            if gflops > self.spec.gflops_budget:
                import optuna

                trial.set_user_attr(STATUS, "infeasible")
                self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                self.refused[run.run_id] = (dict(trial.params), dict(trial.distributions),
                                            gflops)
                self.log(f"{run.run_id}: {gflops:.3f} GFLOPs over the budget, not trained")
                continue
            trial.set_user_attr(STATUS, "training")
            self.settings[run.run_id] = Setting(run, trial, dict(trial.params),
                                                dict(trial.distributions), gflops)
            return run.run_id


# ----------------------------------------------------------------------------- the command
def _say(message: str) -> None:
    print(message, flush=True)


def run_search(spec, study, executor, cost, folder, log=_say, tracker=None) -> dict:
    """``python -m pipelines search`` with a ``fidelity`` block: restore what a dead head left,
    run the rung jobs until ``budget.trainings x R`` iterations are spent, and write the
    search's own record (``<folder>/fidelity.json``) and report (``<folder>/fidelity.md``): the
    hypervolume of the settings trained to the full budget against iterations and training hours
    spent, and every setting's rung results (stopped ones drawn as stopped)."""
    from pipelines.config import write_json_atomic
    from pipelines.search.runs import make_run

    if spec.max_trainings is None:
        raise UserError("a search with a fidelity block needs budget.trainings (its budget is "
                        "budget.trainings x train.max_iters iterations)")
    folder = Path(folder)
    record_file = folder / "fidelity.json"
    try:
        record = json.loads(record_file.read_text())
    except (OSError, ValueError):
        record = {"jobs": []}
    full = spec.fidelity.full
    budget = spec.max_trainings * full

    def on_job(spent, search):
        front = list(search.full_results().values())
        record["jobs"].append({"iterations": spent, "seconds": time.time() - started + before,
                               "hv": hypervolume(front, spec.gflops_budget),
                               "settings_full": len(front)})
        write_json_atomic(record_file, record)
        if tracker is not None:
            tracker(study, [])

    search = FidelitySearch(spec=spec, study=study, fidelity=spec.fidelity, executor=executor,
                            cost=cost, make_run=lambda v, s: make_run(spec, v, s),
                            budget_iters=budget, seed=spec.seed, log=log, on_job=on_job)
    search.restore()
    before = record["jobs"][-1]["seconds"] if record["jobs"] else 0.0
    started = time.time()
    if search.spent:
        log(f"{spec.name}: resumed: {len(search.settings)} settings, {search.spent} of "
            f"{budget} iterations spent")
    out = search.run()
    record["settings"] = {k: {"gflops_total": s.gflops, "rungs": s.rungs,
                              "stopped": full not in s.rungs}
                          for k, s in sorted(search.settings.items())}
    write_json_atomic(record_file, record)
    (folder / "fidelity.md").write_text(report_markdown(spec, record))
    log(f"{spec.name}: {out['iterations']} of {budget} iterations spent; {out['full']} settings "
        f"trained to {full}, {out['settings'] - out['full']} stopped early, "
        f"{out['refused']} refused by cost; report {folder / 'fidelity.md'}")
    return out
