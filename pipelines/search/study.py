"""The search's Optuna study: samplers, storages, the study, the GFLOPs constraint, trial records.

Optuna's public API is used wherever it has one: ``study.ask``/``tell(number, state=...)``/
``enqueue_trial``/``get_trials``/``set_user_attr``/``add_trial``, ``Trial.set_user_attr``/
``set_constraint``, ``optuna.trial.create_trial``, ``RDBStorage(heartbeat_interval=...,
grace_period=..., heartbeat_stale_trial_callback=...)`` and ``optuna.storages.fail_stale_trials``.

Three things have no public API, and go through the study's storage in **this module only**
(section "the storage's own calls" below; ``study._storage`` and a trial's ``_trial_id``):

* writing a user attribute of a RUNNING trial this process did not ask (a FrozenTrial read back
  from the storage: settling a dead head's trial, following another worker's training).
  ``optuna.trial.Trial(study, trial_id)`` is no way round it: it needs the same private id, and
  its constructor calls the sampler's ``before_trial``, which may write to that trial;
* the pre-5.0 ``constraints`` system attribute that optuna-dashboard 0.21 reads (Optuna 5 has no
  public writer of a trial's system attribute);
* the heartbeat of an ask-and-tell trial: Optuna beats only inside ``study.optimize``; the
  storage's ``record_heartbeat(trial_id)`` is public, the trial's id is not.
"""
from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

from pipelines.errors import UserError

OBJECTIVES = ("miou", "gflops_total")
CONSTRAINT = "gflops_over_budget"
DASHBOARD_CONSTRAINTS_ATTR = "constraints"  # what optuna-dashboard 0.21 reads
# trial user attributes
STATUS = "status"  # infeasible | reused | submitted | trained | failed | warm_start
RUN_ID = "run_id"
#: RDB storages: a head beats for its RUNNING trials every HEARTBEAT_S seconds; a RUNNING trial
#: whose last beat is older than GRACE_S lost its head (on any host) and is failed by
#: ``optuna.storages.fail_stale_trials`` (then asked again, :func:`retry_stale_trial`)
HEARTBEAT_S = 60
GRACE_S = 600


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


def retry_stale_trial(study, trial, retries: int = 0) -> None:
    """``heartbeat_stale_trial_callback`` of the RDB storages: a trial failed by
    ``fail_stale_trials`` (its head stopped beating, on whatever host) is asked again with the
    same parameters, up to ``retries`` times, like a trial past its deadline
    (:meth:`pipelines.search.loop.Search._fail`); the new trial finds the result on disk, or
    trains the run again (Snakemake resumes from its checkpoint)."""
    attempt = int(trial.user_attrs.get("attempt") or 0)
    if attempt < retries and trial.params:
        study.enqueue_trial(trial.params, user_attrs={"attempt": attempt + 1,
                                                      "retry_of": trial.number},
                            skip_if_exists=False)
        print(f"trial {trial.number}: its head stopped beating (no heartbeat for {GRACE_S} s); "
              f"asked again (attempt {attempt + 1})", flush=True)
    else:
        print(f"trial {trial.number}: its head stopped beating (no heartbeat for {GRACE_S} s); "
              "failed", flush=True)


def open_storage(url: str | None, spec=None):
    """A storage URL -> an Optuna storage.

    ``sqlite:///FILE`` and ``postgresql://...`` are RDB storages, with Optuna's heartbeat
    (``heartbeat_interval``, ``grace_period``): a head that died on any host is found by its
    stale heartbeat. A path ending in ``.log`` or ``.journal`` (or ``journal:PATH``) is Optuna's
    journal file, safe for many workers on a shared file system; it has no heartbeat (Optuna's
    ``JournalStorage`` does not implement one), so there a dead head is found by the project's
    own means only (:mod:`pipelines.search.workers`: a process of this host that is gone, or a
    trial past its deadline).
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
    retries = int(getattr(spec, "retries", 0) or 0)
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeat_interval: experimental in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs={"pool_pre_ping": True}
                    if url.startswith("postgresql") else {},
                    heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=lambda study, trial: retry_stale_trial(
                        study, trial, retries))
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
    _name_metrics(study, OBJECTIVES)
    if "gflops_budget" not in study.user_attrs:
        study.set_user_attr("gflops_budget", spec.gflops_budget)
        study.set_user_attr("base_ablation", str(spec.ablation["name"]))
    return study


def _name_metrics(study, names) -> None:
    """``study.set_metric_names`` (what optuna-dashboard labels the axes with) unless set."""
    import optuna

    if list(study.metric_names or []) != list(names):
        with warnings.catch_warnings():  # experimental in Optuna 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(names))


#: the study beside a search's that holds each setting once (what optuna-dashboard should show)
SETTINGS_SUFFIX = " (settings)"


def settings_study_name(name: str) -> str:
    return name + SETTINGS_SUFFIX


def sync_settings_study(study, target=None):
    """The study ``<search> (settings)`` beside ``study``, in its storage: one COMPLETE trial per
    setting (its first told trial: values, params, constraint, user attributes), added as the
    search tells new settings. The search's own study keeps a trial for every ask, and a reused
    setting is told again with the values it already had, so optuna-dashboard's best trials and
    Pareto plot of the search's study show a front setting many times; this one shows it once.
    The samplers never read it. ``target``: the settings study a former call returned (opened
    once per search). Returns the settings study."""
    import optuna

    if target is None:
        target = optuna.create_study(study_name=settings_study_name(study.study_name),
                                     storage=study._storage, load_if_exists=True,
                                     directions=study.directions)
        _name_metrics(target, study.metric_names or OBJECTIVES)
        if not target.user_attrs:
            for key, value in study.user_attrs.items():
                target.set_user_attr(key, value)
            target.set_user_attr("settings_of", study.study_name)
    have = {t.user_attrs.get(RUN_ID) for t in target.get_trials(deepcopy=False)}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        run_id = t.user_attrs.get(RUN_ID)
        if run_id is None or run_id in have:
            continue
        have.add(run_id)
        system = ({DASHBOARD_CONSTRAINTS_ATTR: t.system_attrs[DASHBOARD_CONSTRAINTS_ATTR]}
                  if DASHBOARD_CONSTRAINTS_ATTR in t.system_attrs else None)
        # Optuna reads the dashboard's list back as constraints "0", "1", ...: copied above
        named = {k: v for k, v in (t.constraints or {}).items() if not k.isdigit()}
        target.add_trial(optuna.trial.create_trial(
            values=t.values, params=t.params, distributions=t.distributions,
            user_attrs=dict(t.user_attrs, trial_number=t.number), system_attrs=system,
            constraints=named or None))
    return target


def ask(study):
    """``study.ask()``, without the warning Optuna gives when the storage has a heartbeat
    (meant for ``study.optimize``; the search beats for its asked trials itself,
    :class:`Heartbeat`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed")
        return study.ask()


def fail_stale_trials(study) -> None:
    """``optuna.storages.fail_stale_trials``: a RUNNING trial whose head stopped beating is
    failed, and :func:`retry_stale_trial` asks it again (RDB storages; a no-op on others)."""
    import optuna

    with warnings.catch_warnings():  # experimental in Optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def trial_now(study, number: int):
    """Trial ``number`` as stored now (a live Trial caches its attributes, and another worker
    may have changed them). ``get_trials`` is the public read; trial numbers are the study's
    positions, in the order the storages return them."""
    trials = study.get_trials(deepcopy=False)
    if number < len(trials) and trials[number].number == number:
        return trials[number]
    return next(t for t in trials if t.number == number)


def constraint_attrs(gflops: float, budget: float) -> dict:
    """System attributes of the GFLOPs constraint for a trial built with ``create_trial`` (warm
    start): the list optuna-dashboard 0.21 reads (``constraints``, the format Optuna wrote before
    5.0 and still reads). Optuna 5's own per-key value is added with the public
    ``FrozenTrial.set_constraint``."""
    return {DASHBOARD_CONSTRAINTS_ATTR: [float(gflops) - float(budget)]}


def set_gflops_constraint(study, trial, gflops: float, budget: float) -> None:
    """``trial.set_constraint`` (Optuna 5's API, which every sampler reads; the samplers'
    ``constraints_func`` is deprecated since 5.0) plus the list optuna-dashboard 0.21 reads."""
    value = float(gflops) - float(budget)
    trial.set_constraint(CONSTRAINT, value)
    _set_system_attr(study, trial, DASHBOARD_CONSTRAINTS_ATTR, [value])


def set_trial_attr(study, trial, key: str, value) -> bool:
    """Set a user attribute of a RUNNING trial; False when it was finished meanwhile (by a
    worker that settled it). A trial this process asked (a live ``Trial``) is written through
    its public ``set_user_attr``; a trial read back from the storage, through the storage."""
    import optuna

    try:
        if isinstance(trial, optuna.trial.Trial):
            trial.set_user_attr(key, value)
        else:
            _set_user_attr(study, trial, key, value)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True


class Heartbeat:
    """Beats for this head's RUNNING trials while a search runs (RDB storages; nothing on a
    journal file): every :data:`HEARTBEAT_S` seconds, each RUNNING trial whose ``worker`` is
    ``worker``. Used as a context manager around the search loop."""

    def __init__(self, study, worker: str, interval: float = HEARTBEAT_S) -> None:
        self.study, self.worker, self.interval = study, worker, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        import optuna

        if not _heartbeat_enabled(self.study):
            return
        for t in self.study.get_trials(deepcopy=False,
                                       states=(optuna.trial.TrialState.RUNNING,)):
            if t.user_attrs.get("worker") == self.worker:
                _record_heartbeat(self.study, t)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a missed beat is retried at the next interval
                pass

    def __enter__(self) -> Heartbeat:
        if _heartbeat_enabled(self.study):
            self._thread = threading.Thread(target=self._loop, name="search-heartbeat",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# ----------------------------------------------------------------------------- the storage's own calls
# The only uses of Optuna's private API in the project (see the module docstring for why each
# has no public replacement).
def _set_user_attr(study, trial, key: str, value) -> None:
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def _set_system_attr(study, trial, key: str, value) -> None:
    study._storage.set_trial_system_attr(trial._trial_id, key, value)


def _heartbeat_enabled(study) -> bool:
    return bool(getattr(study._storage, "get_heartbeat_interval", lambda: None)())


def _record_heartbeat(study, trial) -> None:
    study._storage.record_heartbeat(trial._trial_id)
