"""Search spaces (``configs/search/*.yaml``): which settings a search may propose, checked up front.

A search space names a base ablation (dataset, training recipe, resources, MLflow store, model
configs come from there) and, per variant, the axes the sampler chooses over::

    name: search_demo
    ablation: configs/ablations/demo.yaml
    budget: {gflops_total: 1.6, trainings: 6, trials: 100}   # trials: a safety net
    batch: 4
    space:
      seed: [0]                          # top-level axes apply to every variant
      variants:
        baseline: {}
        pro_scale:
          schedule: ["1-1-1", "2-2-2", "3-3-3"]           # a list: categorical choice
          trc: [false, true]
          model.decode_head.num_queries: {low: 10, high: 30, step: 10}   # int range
          optim_wrapper.optimizer.lr: {low: 1.0e-5, high: 1.0e-3, log: true}  # float range

The variant itself is a categorical parameter (``variant``); a variant's axes are conditional
parameters named ``<variant>.<axis>`` (axis = an alias its method declares, or any config key).
Every choice and both ends of every range are resolved into a real run by the grid code
(:func:`pipelines.search.runs.make_run`) before the first trial, so an unknown variant or key, or a
value the grid refuses, is one line naming the key of the search space.

Pure Python apart from Optuna's distributions (no torch).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pipelines.errors import UserError

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "search.schema.yaml"
SAMPLERS = ("tpe", "nsga2", "gp")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class AxisSpace:
    """The values one axis may take.

    Args:
        name: the Optuna parameter name (``seed`` or ``<variant>.<axis>``).
        axis: the axis as the grid knows it (alias or config key).
        choices: categorical values, or ``None`` for a range.
        low: lower end of a range (inclusive).
        high: upper end of a range (inclusive).
        step: grid step of a range (``None``: continuous float).
        log: sample the range on a log scale.
        integer: the range is over integers.
    """

    name: str
    axis: str
    choices: tuple | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    integer: bool = False

    def distribution(self):
        """The Optuna distribution of this axis."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices is not None:
            return CategoricalDistribution(list(self.choices))
        if self.integer:
            return IntDistribution(int(self.low), int(self.high), log=self.log,
                                   step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def suggest(self, trial):
        """Ask ``trial`` for a value of this axis."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step,
                                   log=self.log)

    def edge_values(self) -> list:
        """Values that are checked against the grid before any trial (choices, range ends)."""
        if self.choices is not None:
            return list(self.choices)
        return [self.low, self.high] if self.low != self.high else [self.low]

    def contains(self, value) -> bool:
        """Whether a value (e.g. of a grid run being warm-started) lies in this space."""
        if self.choices is not None:
            return any(value == c and type(value) is type(c) for c in self.choices)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.integer and int(value) != value:
            return False
        if self.step:
            k = (value - self.low) / self.step
            return math.isclose(k, round(k), abs_tol=1e-9)
        return True


@dataclass(frozen=True)
class SearchSpec:
    """A validated search space file.

    Args:
        name: study name (also the name of the generated ablations and of the MLflow parent).
        path: the YAML file it was read from.
        ablation: the base ablation config (parsed and schema-validated).
        ablation_path: where the base ablation was read from.
        variants: variant -> its axes (:class:`AxisSpace`, in file order), top-level axes included.
        gflops_budget: a setting over this many GFLOPs (``gflops_total``) is infeasible.
        max_trials: the trial cap (every trial, refused and reused included): a safety net
            set well above the training budget, which is the stopping rule.
        max_trainings: the training budget: at most this many distinct trainings launched
            (``None``: no limit; the trial cap then stops the search).
        batch: trials asked per generation.
        sampler: ``tpe``, ``nsga2`` or ``gp``.
        seed: the sampler's seed.
        retries: times a trial whose job died is asked again before it is left failed.
        grace_minutes: extra minutes over the jobs' declared runtime before a RUNNING trial
            whose result never came is declared dead.
        warm_start: ablation configs whose finished runs are loaded as completed trials.
        infeasible_miou: no longer told (an infeasible trial is PRUNED with its constraint,
            with no mIoU); read for old search spaces that set it.
    """

    name: str
    path: str
    ablation: Mapping[str, Any]
    ablation_path: str
    variants: Mapping[str, tuple[AxisSpace, ...]]
    gflops_budget: float
    max_trials: int
    max_trainings: int | None = None
    batch: int = 4
    sampler: str = "tpe"
    seed: int = 0
    retries: int = 0
    grace_minutes: float = 10.0
    warm_start: tuple[str, ...] = ()
    infeasible_miou: float = 0.0
    fidelity: Any = None  # pipelines.search.rungs.Fidelity, or None: every training is full
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def variant_axis(self) -> AxisSpace:
        """The categorical ``variant`` parameter."""
        return AxisSpace(name="variant", axis="variant", choices=tuple(self.variants))

    @property
    def flat(self) -> bool:
        """NSGA-II and the GP sampler model a fixed search space only (a parameter that some
        trials lack is sampled at random), so for them every variant's axes are suggested on
        every trial and the chosen variant uses its own; TPE handles conditional parameters."""
        return self.sampler != "tpe"

    def suggest(self, trial) -> tuple[str, dict[str, Any]]:
        """Ask ``trial`` for one setting: ``(variant, {axis: value})``."""
        variant = self.variant_axis().suggest(trial)
        values = {}
        for name in (self.variants if self.flat else [variant]):
            for a in self.variants[name]:
                if a.name not in values:
                    values[a.name] = (a, a.suggest(trial))
        return variant, {a.axis: values[a.name][1] for a in self.variants[variant]}

    def params_of(self, variant: str, settings: Mapping[str, Any]) -> dict | None:
        """Optuna params + distributions of a known setting, or ``None`` when it is outside the
        space (used to warm-start from grid runs). In the flat space the other variants' axes
        take their first value."""
        if variant not in self.variants:
            return None
        params, dists = {"variant": variant}, {"variant": self.variant_axis().distribution()}
        for a in self.variants[variant]:
            if a.axis not in settings or not a.contains(settings[a.axis]):
                return None
            params[a.name] = settings[a.axis]
            dists[a.name] = a.distribution()
        if self.flat:
            for axes in self.variants.values():
                for a in axes:
                    if a.name not in params:
                        params[a.name] = a.edge_values()[0]
                        dists[a.name] = a.distribution()
        return {"params": params, "distributions": dists}


# ----------------------------------------------------------------------------- reading + checks
def _axis_space(name: str, axis: str, value: Any, where: str) -> AxisSpace:
    if isinstance(value, list):
        if not value:
            raise UserError(f"search space key {where!r}: empty choice list (give at least one "
                            "value)")
        for v in value:
            if v is not None and not isinstance(v, (bool, int, float, str)):
                raise UserError(f"search space key {where!r}: choice {v!r} is not a number, "
                                "string or boolean")
        if len(set(map(repr, value))) != len(value):
            raise UserError(f"search space key {where!r}: a choice is listed twice")
        return AxisSpace(name=name, axis=axis, choices=tuple(value))
    if isinstance(value, dict):
        unknown = set(value) - {"low", "high", "step", "log"}
        if unknown:
            raise UserError(f"search space key '{where}.{sorted(unknown)[0]}': unknown key "
                            "(a range has low, high, step, log)")
        for end in ("low", "high"):
            v = value.get(end)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserError(f"search space key '{where}.{end}': expected a number, got {v!r}")
        low, high, step = value["low"], value["high"], value.get("step")
        log = bool(value.get("log", False))
        if low > high:
            raise UserError(f"search space key {where!r}: low {low!r} > high {high!r}")
        if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float))
                                 or step <= 0):
            raise UserError(f"search space key '{where}.step': expected a positive number, got "
                            f"{step!r}")
        if log and (low <= 0 or step is not None):
            raise UserError(f"search space key {where!r}: a log range needs low > 0 and no step")
        integer = all(isinstance(v, int) for v in (low, high)) and (step is None or
                                                                      isinstance(step, int))
        return AxisSpace(name=name, axis=axis, low=low, high=high, step=step, log=log,
                         integer=integer)
    raise UserError(f"search space key {where!r}: expected a list of choices or "
                    f"{{low, high[, step, log]}}, got {value!r}")


def _schema_check(doc: dict) -> None:
    import jsonschema
    import yaml

    schema = yaml.safe_load(SCHEMA.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        path = ".".join(str(p) for p in err.absolute_path)
        message = err.message
        if err.validator == "additionalProperties":
            extra = re.findall(r"'([^']+)' was unexpected", message)
            if extra:
                path, message = ".".join(p for p in (path, extra[0]) if p), "unknown key"
        raise UserError(f"search space key {path or '(top level)'!r}: {message}")


def load_search_space(path: str | Path, *, check_runs: bool = True, **overrides) -> SearchSpec:
    """Read and check a search space file; nothing is asked or trained.

    Args:
        path: ``configs/search/*.yaml``.
        check_runs: resolve every choice and range end into a run through the grid code (an
            unknown variant or key, or a value the grid refuses, is refused here).
        overrides: CLI values that replace the file's (``sampler``, ``seed``, ``batch``, ...).

    Raises:
        UserError: one line naming the offending key.
    """
    from pipelines.grid import load_ablation, validate_ablation

    path = Path(path)
    if not path.is_file():
        raise UserError(f"search space not found: {path}")
    doc = load_ablation(path)  # the same YAML reading (one-line parse errors)
    _schema_check(doc)
    budget = doc.get("budget") or {}
    gflops = budget.get("gflops_total")
    if isinstance(gflops, bool) or not isinstance(gflops, (int, float)) or gflops <= 0:
        raise UserError(f"search space key 'budget.gflops_total': expected a positive number of "
                        f"GFLOPs, got {gflops!r}")
    for key in ("trials", "trainings"):
        v = overrides.get(f"max_{key}") or budget.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise UserError(f"search space key 'budget.{key}': expected a positive integer, "
                            f"got {v!r}")
    ablation_path = Path(doc["ablation"])
    if not ablation_path.is_absolute() and not ablation_path.is_file():
        ablation_path = path.parent / ablation_path
    if not ablation_path.is_file():
        raise UserError(f"search space key 'ablation': file not found: {doc['ablation']}")
    ablation = validate_ablation(load_ablation(ablation_path))

    space = doc.get("space") or {}
    variants_doc = space.get("variants") or {}
    if not variants_doc:
        raise UserError("search space key 'space.variants': no variant given")
    known = ((ablation.get("grid") or {}).get("variants") or {})
    for variant in variants_doc:
        if variant not in known:
            raise UserError(f"search space key 'space.variants.{variant}': unknown variant (the "
                            f"base ablation {ablation_path} has: {', '.join(known)})")
    top = {k: v for k, v in space.items() if k != "variants"}
    variants: dict[str, tuple[AxisSpace, ...]] = {}
    for variant, block in variants_doc.items():
        if not NAME_RE.match(str(variant)):
            raise UserError(f"search space key 'space.variants.{variant}': not a valid name")
        block = dict(block or {})
        axes = [_axis_space(f"{variant}.{axis}", axis, value, f"space.variants.{variant}.{axis}")
                for axis, value in block.items()]
        axes += [_axis_space(axis, axis, value, f"space.{axis}") for axis, value in top.items()
                 if axis not in block]
        variants[variant] = tuple(axes)
    fields = dict(
        name=doc.get("name") or path.stem, path=str(path), ablation=ablation,
        ablation_path=str(ablation_path), variants=variants, gflops_budget=float(gflops),
        max_trials=int(budget.get("trials") or 0) or 0,
        max_trainings=budget.get("trainings"), batch=int(doc.get("batch", 4)),
        sampler=(doc.get("sampler") or {}).get("name", "tpe"),
        seed=int((doc.get("sampler") or {}).get("seed", 0)),
        retries=int((doc.get("failed") or {}).get("retries", 0)),
        grace_minutes=float((doc.get("failed") or {}).get("grace_minutes", 10.0)),
        warm_start=tuple(str(p) for p in doc.get("warm_start") or ()),
        infeasible_miou=float(doc.get("infeasible_miou", 0.0)), raw=doc,
        fidelity=_fidelity(doc, ablation))
    fields.update({k: v for k, v in overrides.items() if v is not None})
    if fields["sampler"] not in SAMPLERS:
        raise UserError(f"search space key 'sampler.name': {fields['sampler']!r} is not one of "
                        f"{', '.join(SAMPLERS)}")
    if not fields["max_trials"]:
        raise UserError("search space key 'budget.trials': give the search's trial budget")
    if fields["batch"] <= 0:
        raise UserError(f"search space key 'batch': expected a positive integer, got "
                        f"{fields['batch']!r}")
    spec = SearchSpec(**fields)
    if check_runs:
        check_space_runs(spec)
    return spec


def _fidelity(doc: Mapping[str, Any], ablation: Mapping[str, Any]):
    """The ``fidelity`` block against the base ablation's full budget (``train.max_iters``)."""
    if doc.get("fidelity") is None:
        return None
    from pipelines.search.rungs import parse_fidelity

    max_iters = int((ablation.get("train") or {}).get("max_iters", 300))
    return parse_fidelity(doc["fidelity"], max_iters)


def check_space_runs(spec: SearchSpec) -> None:
    """Resolve each variant's first setting, then every choice / range end of each axis in turn,
    into a grid run: the grid refuses unknown variants, keys and values before any trial. (All
    at once first; one by one only to name the key of a refusal.)"""
    from pipelines.search.runs import make_run, make_runs

    checks = []
    for variant, axes in spec.variants.items():
        first = {a.axis: a.edge_values()[0] for a in axes}
        checks.append((variant, first, f"space.variants.{variant}"))
        for a in axes:
            for value in a.edge_values()[1:]:
                where = (f"space.variants.{variant}.{a.axis}" if a.name != a.axis
                         else f"space.{a.axis}")
                checks.append((variant, {**first, a.axis: value}, where))
    try:
        make_runs(spec, [(v, s) for v, s, _ in checks])
        return
    except UserError:
        pass
    for variant, settings, where in checks:
        _checked(spec, variant, settings, where, make_run)


def _checked(spec, variant, settings, where, make_run) -> None:
    try:
        make_run(spec, variant, settings)
    except UserError as err:
        raise UserError(f"search space key {where!r}: {err}") from None
