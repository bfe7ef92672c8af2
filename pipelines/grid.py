"""Ablation grids: an ablation config (``configs/ablations/*.yaml``) -> one :class:`Run` per setting.

A grid is the product of its axes. Global axes (``seed``) apply to every variant; each variant
has its own sub-grid over the axes it knows (:data:`VARIANT_AXES`)::

    grid:
      seed: [0]
      variants:
        baseline: {}
        pro_scale: {schedule: ["3-3-3", "2-2-5"], trc: [true], lpe: [false, true]}

Every run gets a readable id derived only from its resolved axis values
(``pro_scale-s3-3-3-trc-lpe-seed0``), so the same settings always map to the same folder and
identical settings listed twice (say, by two overlapping sub-grids) train once. Everything else
that changes the result (model config, iterations, extra ``--cfg-options``, dataset) is hashed
into :attr:`Run.recipe_hash`: checkpoints live in a work folder named after that hash, so changing
the recipe starts a fresh training instead of resuming from a checkpoint of another recipe.

Pure Python (no torch, no snakemake): the Snakefile and the tests import it directly.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipelines.errors import UserError

VARIANTS = ("baseline", "pro_scale", "eco_m2f", "ailurus", "ats")
# axes each variant sweeps, in id order (global axis `seed` comes last in every id)
VARIANT_AXES: dict[str, tuple[str, ...]] = {
    "baseline": (),
    "pro_scale": ("schedule", "trc", "lpe"),
    "eco_m2f": ("beta",),
    "ailurus": ("cluster_fraction",),
    "ats": ("cluster_fraction",),
}
AXES = ("schedule", "trc", "lpe", "cluster_fraction", "beta", "seed")
# variants whose model code exists; the others are named by the schema but refused here
IMPLEMENTED = ("baseline", "pro_scale")
# where an axis lands in the model config (`--cfg-options KEY=VALUE`)
PRO_SCALE_KEY = "model.decode_head.pixel_decoder"
SCHEDULE_RE = re.compile(r"^\d+(-\d+)*$")
ID_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Run:
    """One training run of an ablation, fully resolved.

    Args:
        run_id: readable, stable id (also the name of its folders and of its MLflow run).
        variant: one of :data:`VARIANTS`.
        settings: the axis values (``schedule``, ``trc``, ``lpe``, ``cluster_fraction``,
            ``beta``, ``seed``), ``None`` where the variant has no such axis.
        config: model config path (``configs/models/*.py``).
        max_iters: training iterations.
        cfg_options: every ``KEY=VALUE`` passed to train / evaluate / flops / benchmark.
        data_root: dataset folder (part of the recipe hash).
    """

    run_id: str
    variant: str
    settings: Mapping[str, Any]
    config: str
    max_iters: int
    cfg_options: tuple[str, ...] = ()
    data_root: str = ""

    @property
    def recipe_hash(self) -> str:
        """8 hex digits over everything that changes the trained weights."""
        blob = json.dumps(dict(config=self.config, max_iters=self.max_iters,
                               cfg_options=list(self.cfg_options), data_root=self.data_root,
                               settings=dict(self.settings)), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:8]

    def params(self) -> dict[str, str]:
        """MLflow params (strings) under the names of the naming contract."""
        s = self.settings
        return {
            "variant": self.variant,
            "schedule": s.get("schedule") or "",
            "trc": _bool_str(s.get("trc")),
            "lpe": _bool_str(s.get("lpe")),
            "cluster_fraction": "" if s.get("cluster_fraction") is None
            else str(s["cluster_fraction"]),
            "beta": "" if s.get("beta") is None else str(s["beta"]),
            "seed": str(s.get("seed", 0)),
            "config": self.config,
            "max_iters": str(self.max_iters),
        }

    def to_dict(self) -> dict[str, Any]:
        return dict(run_id=self.run_id, variant=self.variant, settings=dict(self.settings),
                    config=self.config, max_iters=self.max_iters,
                    cfg_options=list(self.cfg_options), data_root=self.data_root,
                    recipe_hash=self.recipe_hash, params=self.params())


def _bool_str(value) -> str:
    return "" if value is None else ("true" if value else "false")


def _fmt_number(value: float) -> str:
    """0.5 -> '0.5', 0.0005 -> '0.0005', 1.0 -> '1' (no exponent, no trailing zeros)."""
    text = f"{float(value):.10f}".rstrip("0").rstrip(".")
    return text or "0"


def parse_schedule(text: Any) -> tuple[int, ...]:
    """``"3-3-3"`` (or ``[3, 3, 3]``) -> ``(3, 3, 3)``; refuses anything else in one line."""
    if isinstance(text, (list, tuple)):
        text = "-".join(str(p) for p in text)
    if not isinstance(text, str) or not SCHEDULE_RE.match(text):
        raise UserError(f"schedule {text!r}: expected layers per stage like '3-3-3'")
    parts = tuple(int(p) for p in text.split("-"))
    if len(parts) != 3:
        raise UserError(f"schedule {text!r}: expected 3 stages (res5, res4, res3), got "
                        f"{len(parts)}")
    if parts[-1] < 1:
        raise UserError(f"schedule {text!r}: the last stage needs at least one layer")
    return parts


def run_id(variant: str, settings: Mapping[str, Any]) -> str:
    """The readable id of one resolved setting, e.g. ``pro_scale-s3-3-3-trc-lpe-seed0``.

    Boolean axes appear by name when true and are left out when false; numbers are written
    without exponent (``beta0.0005``, ``cf0.25``).
    """
    parts = [variant]
    for axis in VARIANT_AXES[variant]:
        value = settings.get(axis)
        if value is None:
            continue
        if axis == "schedule":
            parts.append("s" + "-".join(str(p) for p in parse_schedule(value)))
        elif axis in ("trc", "lpe"):
            if value:
                parts.append(axis)
        elif axis == "cluster_fraction":
            parts.append("cf" + _fmt_number(value))
        elif axis == "beta":
            parts.append("beta" + _fmt_number(value))
    parts.append(f"seed{int(settings.get('seed', 0))}")
    return "-".join(parts)


def variant_cfg_options(variant: str, settings: Mapping[str, Any]) -> list[str]:
    """The ``--cfg-options`` that put one setting's axis values into its model config."""
    if variant == "baseline":
        return []
    if variant == "pro_scale":
        sched = ",".join(str(p) for p in parse_schedule(settings["schedule"]))
        return [f"{PRO_SCALE_KEY}.schedule=[{sched}]",
                f"{PRO_SCALE_KEY}.trc={bool(settings['trc'])}",
                f"{PRO_SCALE_KEY}.lpe={bool(settings['lpe'])}"]
    raise UserError(f"grid.variants.{variant}: a known variant that has no model yet "
                    f"(implemented: {', '.join(IMPLEMENTED)})")


def _as_list(value, key: str) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise UserError(f"{key}: empty list (give at least one value)")
    return values


def _check_axis_value(variant: str, axis: str, value) -> Any:
    where = f"grid.variants.{variant}.{axis}"
    if axis == "schedule":
        try:
            return "-".join(str(p) for p in parse_schedule(value))
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
    if axis in ("trc", "lpe"):
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if axis in ("cluster_fraction", "beta"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        lo, hi = (0.0, 1.0)
        if not lo <= float(value) <= hi or (axis == "cluster_fraction" and value == 0):
            raise UserError(f"{where}: {value!r} out of range "
                            f"({'(0, 1]' if axis == 'cluster_fraction' else '[0, 1]'})")
        return float(value)
    raise AssertionError(axis)


def expand_grid(ablation: Mapping[str, Any], repo: str | Path = ".") -> list[Run]:
    """Expand a (schema-validated) ablation config into its runs, in a stable order.

    Args:
        ablation: the parsed YAML (see ``workflow/schemas/ablation.schema.yaml``).
        repo: folder that relative model config paths are checked against.

    Raises:
        UserError: unknown variant or axis, bad value, missing model config, clashing ids.
    """
    grid = ablation.get("grid") or {}
    variants = grid.get("variants") or {}
    if not variants:
        raise UserError("grid.variants: no variant given")
    seeds = _as_list(grid.get("seed", [0]), "grid.seed")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise UserError(f"grid.seed: expected non-negative integers, got {seed!r}")
    train = ablation.get("train") or {}
    default_iters = int(train.get("max_iters", 300))
    common_options = list(train.get("cfg_options") or [])
    data_root = str((ablation.get("data") or {}).get("root", ""))

    runs: dict[str, Run] = {}
    for variant, spec in variants.items():
        if variant not in VARIANT_AXES:
            raise UserError(f"grid.variants.{variant}: unknown variant (known: "
                            f"{', '.join(VARIANTS)})")
        spec = dict(spec or {})
        config = spec.pop("config", None) or ablation.get("models", {}).get(variant)
        if not config:
            raise UserError(f"grid.variants.{variant}.config: no model config for this variant")
        if not (Path(repo) / config).is_file() and not Path(config).is_file():
            raise UserError(f"grid.variants.{variant}.config: file not found: {config}")
        max_iters = int(spec.pop("max_iters", default_iters))
        extra_options = list(spec.pop("cfg_options", None) or [])
        unknown = set(spec) - set(VARIANT_AXES[variant])
        if unknown:
            raise UserError(f"grid.variants.{variant}.{sorted(unknown)[0]}: not an axis of "
                            f"{variant} (its axes: {', '.join(VARIANT_AXES[variant]) or 'none'})")
        missing = [a for a in VARIANT_AXES[variant] if a not in spec]
        if missing:
            raise UserError(f"grid.variants.{variant}.{missing[0]}: required axis missing")
        axes = list(VARIANT_AXES[variant])
        values = [[_check_axis_value(variant, a, v)
                   for v in _as_list(spec[a], f"grid.variants.{variant}.{a}")] for a in axes]
        for combo in itertools.product(*values, seeds):
            settings = {a: None for a in AXES}
            settings.update(zip(axes, combo[:-1]))
            settings["seed"] = combo[-1]
            rid = run_id(variant, settings)
            options = (common_options + variant_cfg_options(variant, settings)
                       + [f"train_cfg.max_iters={max_iters}",
                          f"train_cfg.val_interval={max_iters}",
                          f"randomness.seed={settings['seed']}"] + extra_options)
            run = Run(run_id=rid, variant=variant, settings=settings, config=str(config),
                      max_iters=max_iters, cfg_options=tuple(options), data_root=data_root)
            if rid in runs and runs[rid] != run:
                raise UserError(f"grid: two different settings share the id {rid!r}")
            runs[rid] = run
    return list(runs.values())


def runs_by_id(runs: Iterable[Run]) -> dict[str, Run]:
    return {r.run_id: r for r in runs}


def load_ablation(path: str | Path) -> dict[str, Any]:
    """Read an ablation YAML (no schema defaults; the Snakefile validates with snakemake)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ablation config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"cannot parse {path}: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def validate_ablation(config: dict, schema: str | Path | None = None) -> dict:
    """Validate against the JSON schema (filling defaults) -> config; one-line UserError."""
    import jsonschema
    import yaml

    schema_path = Path(schema) if schema else (Path(__file__).resolve().parents[1] / "workflow"
                                               / "schemas" / "ablation.schema.yaml")
    schema_doc = yaml.safe_load(schema_path.read_text())
    validator_cls = jsonschema.validators.validator_for(schema_doc)
    validator = _with_defaults(validator_cls)(schema_doc)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise UserError(describe_schema_error(errors[0]))
    return config


def describe_schema_error(error) -> str:
    """A jsonschema ValidationError -> ``ablation config key 'a.b': <what is wrong>``."""
    path = ".".join(str(p) for p in error.absolute_path)
    message = error.message
    if error.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)' was unexpected", message)
        if extra:
            path = ".".join(p for p in (path, extra[0]) if p)
            message = "unknown key"
    elif error.validator == "pattern" and ".schedule." in f".{path}.":
        message = (f"{error.instance!r} is not a schedule: 3 stages of encoder layers like "
                   f"'3-3-3' (res5, res4, res3; the last stage needs at least one layer)")
    elif error.validator == "enum":
        message = f"{error.instance!r} is not one of {error.validator_value}"
    return f"ablation config key {path or '(top level)'!r}: {message}"


def _with_defaults(validator_cls):
    """A jsonschema validator class that also fills ``default`` values in (as snakemake does)."""
    import jsonschema

    base = validator_cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = json.loads(json.dumps(sub["default"]))
        yield from base(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": set_defaults})


# ----------------------------------------------------------------------------- result layout
@dataclass(frozen=True)
class RunPaths:
    """Where each stage of one run writes (small JSON outputs; checkpoints beside, undeclared)."""

    results: str
    ablation: str
    run_id: str

    def _stage(self, stage: str) -> Path:
        return Path(self.results) / stage / self.ablation / self.run_id

    @property
    def run_json(self) -> Path:
        return self._stage("runs") / "run.json"

    @property
    def train_done(self) -> Path:
        return self._stage("train") / "train_done.json"

    def work_dir(self, recipe_hash: str) -> Path:
        return self._stage("train") / f"work-{recipe_hash}"

    @property
    def metrics(self) -> Path:
        return self._stage("evaluate") / "metrics.json"

    @property
    def flops(self) -> Path:
        return self._stage("flops") / "flops.json"

    @property
    def benchmark(self) -> Path:
        return self._stage("benchmark") / "benchmark.json"

    @property
    def logs(self) -> Path:
        return Path(self.results) / "logs" / self.ablation / self.run_id


# ----------------------------------------------------------------------------- CLI
def add_parser(sub) -> None:
    p = sub.add_parser("grid", help="expand an ablation config into its runs (ids, settings)",
                       description="Validate an ablation config against the schema and list "
                       "its runs, or write one run's resolved settings as JSON.")
    p.add_argument("ablation", nargs="?", help="configs/ablations/*.yaml")
    p.add_argument("--json", action="store_true", help="print every run as JSON")
    p.add_argument("--run", metavar="JSON", help="(used by the workflow) one run's resolved "
                   "settings as JSON, written to --out as is after a check")
    p.add_argument("--out", help="with --run: run.json to write")
    p.add_argument("--checkpoint-of", metavar="DONE_JSON", help="(used by the workflow) print "
                   "the checkpoint recorded in a train_done.json written by `train --done-file`")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    from pipelines.config import write_json_atomic

    if args.checkpoint_of:
        try:
            checkpoint = json.loads(Path(args.checkpoint_of).read_text())["checkpoint"]
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"{args.checkpoint_of}: no checkpoint recorded ({err})") from None
        if not checkpoint or not Path(checkpoint).is_file():
            raise UserError(f"{args.checkpoint_of}: checkpoint {checkpoint!r} is missing")
        print(checkpoint)
        return 0
    if args.run:
        if not args.out:
            raise UserError("--run needs --out")
        try:
            data = json.loads(args.run)
        except json.JSONDecodeError as err:
            raise UserError(f"--run: not JSON: {err}") from None
        if not isinstance(data, dict) or "run_id" not in data or not ID_RE.match(data["run_id"]):
            raise UserError("--run: expected an object with a valid run_id")
        write_json_atomic(args.out, data)
        return 0
    if not args.ablation:
        raise UserError("give an ablation config (configs/ablations/*.yaml)")
    config = validate_ablation(load_ablation(args.ablation))
    runs = expand_grid(config)
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=2))
    else:
        print(f"{config['name']}: {len(runs)} runs")
        for r in runs:
            print(f"  {r.run_id}  ({r.config}, {r.max_iters} iters)")
    return 0
