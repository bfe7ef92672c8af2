"""Ablation grids: an ablation config (``configs/ablations/*.yaml``) -> one :class:`Run` per setting.

A variant names its model config and its axes; an axis is an mmengine config key (dotted path)
with a list of values, or a short alias a method declares next to its model code
(``pipelines/models/<method>.py``: ``AXES``, see :mod:`pipelines.axes`). Axes at the grid's top
level apply to every variant; ``points`` lists exact settings beside (or instead of) the product::

    grid:
      seed: [0, 1]                                  # built-in alias of randomness.seed
      variants:
        baseline:
          config: configs/models/mask2former_r18_synthetic-128x128.py
        pro_scale:
          config: configs/models/mask2former_r18_proscale-333_synthetic-128x128.py
          axes: {schedule: ["3-3-3", "1-1-4"], trc: [true], model.decode_head.num_queries: [10]}
          points: [{schedule: "2-2-2", trc: false}]  # more settings, each once per seed

Every key is checked against the real (resolved) config and every value against its axis before
any job starts; a mistake is one line naming the key.

**Run ids** are readable and depend only on the resolved setting (variant + axis values),
never on YAML order: method aliases in their declared order, then config keys sorted, then the
seed (``pro_scale-s3-3-3-trc-num_queries10-seed0``). Values are written injectively
(:func:`pipelines.axes.format_value`); an id over 100 characters becomes a readable prefix plus
a hash.

**Recipes** are content: :attr:`Run.recipe` hashes the resolved config (after ``_base_`` and every
option, the data path masked), the dataset spec and the project code the config builds
(:func:`pipelines.axes.code_hash`). It names the checkpoint folder, so a changed config, base
file, synthetic-data spec or method file trains afresh, and only the runs that use it do.
:attr:`Run.train_id` / :attr:`Run.train_recipe` leave out axes of later stages (ECO-M2F's beta):
runs that differ only there share one training.

Pure Python plus mmengine's config reader (no torch): the Snakefile imports it.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import pickle
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipelines import axes as ax
from pipelines import contract
from pipelines.axes import Axis
from pipelines.errors import UserError

ID_RE = ax.ID_CHARS
#: aliases every variant has
BUILTIN_AXES = {contract.SEED: Axis("randomness.seed", type="int", minimum=0, id="seed{}",
                                    help="random seed; settings that differ only here are "
                                    "replicates")}
VARIANT_KEYS = ("config", "axes", "points", "cfg_options", "max_iters")
DATA_ROOT_MASK = "<data_root>"


@dataclass(frozen=True)
class Run:
    """One run of an ablation, fully resolved.

    Args:
        run_id: readable, stable id (its folders and its MLflow run are named after it).
        variant: the variant block it comes from (the first part of the id).
        settings: axis name -> value (aliases by alias, config keys by key, ``seed``).
        axis_keys: axis name -> the config key (or later-stage option) it sets.
        config: model config path, normalised (``configs/x.py``).
        max_iters: training iterations.
        cfg_options: every ``KEY=VALUE`` for train / evaluate / flops / benchmark, sorted.
        data_root: dataset folder.
        recipe: hash of what is trained and evaluated (resolved config, data, code).
        train_id, train_recipe: the same without the axes of later stages.
        methods: the methods (``pipelines/models/<method>.py``) the config builds.
        stages: axis name -> its stage, for axes that are not part of training.
        baseline: a run of the ablation's baseline variant (:func:`baseline_variant`).
    """

    run_id: str
    variant: str
    settings: Mapping[str, Any]
    axis_keys: Mapping[str, str]
    config: str
    max_iters: int
    cfg_options: tuple[str, ...]
    data_root: str
    recipe: str
    train_id: str
    train_recipe: str
    methods: tuple[str, ...] = ()
    stages: Mapping[str, str] = field(default_factory=dict)
    baseline: bool = False

    @property
    def recipe_hash(self) -> str:
        """The training's 12 hex digits (names the checkpoint folder)."""
        return self.train_recipe

    def params(self) -> dict[str, str]:
        """MLflow params: :data:`pipelines.contract.FIXED_PARAMS` plus every axis by its name."""
        out = {"variant": self.variant, "config": self.config, "max_iters": str(self.max_iters),
               "recipe": self.recipe}
        out.update({name: param_text(value) for name, value in self.settings.items()})
        return out

    def to_dict(self) -> dict[str, Any]:
        return dict(run_id=self.run_id, variant=self.variant, settings=dict(self.settings),
                    axis_keys=dict(self.axis_keys), config=self.config,
                    max_iters=self.max_iters, cfg_options=list(self.cfg_options),
                    data_root=self.data_root, recipe=self.recipe, train_id=self.train_id,
                    train_recipe=self.train_recipe, methods=list(self.methods),
                    stages=dict(self.stages), baseline=self.baseline, params=self.params())


def param_text(value: Any) -> str:
    """An axis value as an MLflow param (booleans lower-case, lists as JSON)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def option_text(value: Any) -> str:
    """A value as mmengine's ``--cfg-options`` parser reads it back."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(option_text(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + ",".join(option_text(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _option(key: str, value: Any) -> str:
    from mmengine.config import DictAction

    text = option_text(value)
    back = DictAction._parse_iterable(text)
    if back != value or type(back) is not type(value):
        raise UserError(f"{key}: the value {value!r} cannot be passed as --cfg-options "
                        f"(it would read back as {back!r})")
    return f"{key}={text}"


# ----------------------------------------------------------------------------- config access
def _load_plain(path: str) -> dict:
    from pipelines.config import add_runner_defaults, quiet_import_warnings

    quiet_import_warnings()
    from mmengine.config import Config

    try:
        cfg = Config.fromfile(path, import_custom_modules=False)
    except Exception as err:  # mmengine raises many kinds for a broken config file
        raise UserError(f"cannot read config {path}: {type(err).__name__}: "
                        f"{' '.join(str(err).split())}") from None
    plain = cfg.to_dict()
    add_runner_defaults(plain)
    return plain


def resolved_base(path: str | Path, cache: dict | None = None) -> dict:
    """The config as a plain dict after ``_base_`` (a fresh copy each call).

    Args:
        cache: a dict kept for one expansion, so a config shared by variants is read once
            (never across expansions: an edited ``_base_`` file must be read again).
    """
    path = str(path)
    if cache is None:
        return _load_plain(path)
    if path not in cache:
        cache[path] = _load_plain(path)
    return copy.deepcopy(cache[path])


def _walk(cfg: Any, key: str, where: str):
    """(parent, last part) of a dotted key in a plain config; one-line error when it is absent."""
    from pipelines.config import _check_key

    try:
        _check_key(cfg, key)
    except UserError as err:
        raise UserError(f"{where}: {str(err).replace('--cfg-options key', 'config key')}") from None
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, parts[-1]


def get_key(cfg: dict, key: str, where: str) -> Any:
    node, last = _walk(cfg, key, where)
    return node[int(last)] if isinstance(node, list) else node[last]


def set_key(cfg: dict, key: str, value: Any, where: str) -> None:
    node, last = _walk(cfg, key, where)
    if isinstance(node, list):
        node[int(last)] = value
    elif isinstance(node.get(last), dict) and isinstance(value, dict):
        node[last].update(value)  # mmengine merges a dict into a dict
    else:
        node[last] = copy.deepcopy(value)


#: config keys that count something (by their last part): an int axis over one of them takes
#: values >= 1 (``num_workers`` >= 0), so ``num_queries: [-3]`` is refused at expansion instead of
#: failing in the first job that builds the model
COUNT_KEY = re.compile(r"^(num_\w+|\w+_num|\w*batch_size|max_iters|max_epochs|\w*interval|"
                       r"embed_dims|\w+_channels|\w+_layers|depth)$")


def key_axis(key: str, current: Any) -> Axis:
    """A plain config key as an axis: its type is the type of the value it has now (an int key
    that counts something, :data:`COUNT_KEY`, with a positive value now: at least 1)."""
    if isinstance(current, bool):
        kind = "bool"
    elif isinstance(current, int):
        last = key.rsplit(".", 1)[-1]
        if COUNT_KEY.match(last) and current >= 1:
            return Axis(key, type="int", minimum=0 if last == "num_workers" else 1)
        kind = "int"
    elif isinstance(current, float):
        kind = "float"
    elif isinstance(current, str):
        kind = "str"
    else:
        kind = "any"
    return Axis(key, type=kind)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _digest(value: Any, n: int = 12) -> str:
    return hashlib.sha256(_canonical(value).encode()).hexdigest()[:n]


def _as_list(value, where: str) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise UserError(f"{where}: empty list (give at least one value)")
    return values


def normalise_path(path: str) -> str:
    """``./configs/x.py`` and ``configs//x.py`` -> ``configs/x.py`` (identity is not spelling)."""
    return Path(os.path.normpath(path)).as_posix()


# ----------------------------------------------------------------------------- expansion
@dataclass
class _Variant:
    name: str
    config: str
    plain: dict
    methods: tuple[str, ...]
    aliases: dict[str, Axis]       # every alias this variant may use
    options: dict[str, Any]        # fixed options (train + variant cfg_options, iterations)
    max_iters: int


def synthetic_generator_hash() -> str:
    """Content hash of the synthetic set's generator (part of the data's identity)."""
    return ax.code_hash([ax.PACKAGE / "data" / "synthetic.py"])


def _data_identity(ablation: Mapping) -> tuple[str, Any]:
    data = ablation.get("data") or {}
    root = normalise_path(str(data.get("root", "")))
    synthetic = data.get("synthetic")
    if synthetic:
        return root, {"synthetic": dict(synthetic), "generator": synthetic_generator_hash()}
    return root, {"root": root}


def _prepare_variant(name: str, spec: Mapping, ablation: Mapping, repo: Path,
                     cache: dict) -> _Variant:
    where = f"grid.variants.{name}"
    if not ID_RE.match(name) or "-" in name:
        raise UserError(f"{where}: a variant name may hold letters, digits, '_' and '.' only")
    spec = dict(spec or {})
    unknown = sorted(set(spec) - set(VARIANT_KEYS))
    if unknown:
        raise UserError(f"{where}.{unknown[0]}: unknown key (a variant has "
                        f"{', '.join(VARIANT_KEYS)}; axes go under `axes`)")
    config = spec.get("config")
    if not config:
        raise UserError(f"{where}.config: no model config for this variant")
    config = normalise_path(str(config))
    path = Path(config) if Path(config).is_absolute() else repo / config
    if not path.is_file():
        raise UserError(f"{where}.config: file not found: {config}")
    plain = resolved_base(path, cache)
    _check_data_layout(plain, ablation, f"{where}.config")
    methods = tuple(ax.methods_of_config(plain))
    aliases = dict(BUILTIN_AXES)
    for method in methods:
        for alias, axis in ax.method_axes(method).items():
            aliases.setdefault(alias, axis)
    train = ablation.get("train") or {}
    max_iters = int(spec.get("max_iters") or train.get("max_iters", 300))
    from pipelines.config import parse_cfg_options

    options: dict[str, Any] = {}
    for source, pairs in ((f"train.cfg_options", train.get("cfg_options")),
                          (f"{where}.cfg_options", spec.get("cfg_options"))):
        try:
            parsed = parse_cfg_options(pairs)
        except UserError as err:
            raise UserError(f"{source}: {err}") from None
        for key, value in parsed.items():
            get_key(plain, key, f"{source}: {key}")
            options[key] = value
    options.setdefault("train_cfg.max_iters", max_iters)
    return _Variant(name, config, plain, methods, aliases, options, max_iters)


def _check_data_layout(plain: dict, ablation: Mapping, where: str) -> None:
    """The user's dataset (``data.synthetic: null``), when its folder exists: the image and
    label folders this model config reads from it (``data_prefix`` of each dataloader) must
    exist and hold files. (A missing ``data.root`` is :func:`check_data_root`'s.)"""
    from pipelines.config import DATALOADERS, check_dataset

    data = ablation.get("data") or {}
    root = Path(str(data.get("root") or ""))
    if data.get("synthetic") is not None or not data.get("root") or not root.is_dir():
        return
    try:
        check_dataset(plain, DATALOADERS, data_root=str(root))
    except UserError as err:
        raise UserError(f"ablation config key 'data.root': {err} (the layout {where} "
                        f"reads)") from None


def _resolve_axis(variant: _Variant, name: str, where: str) -> Axis:
    """An axis name -> its Axis: a declared alias, else a config key of the variant's config."""
    if name in variant.aliases:
        return variant.aliases[name]
    if "." not in name and name not in variant.plain:
        known = sorted(a for a in variant.aliases)
        raise UserError(f"{where}: unknown axis {name!r} for variant {variant.name!r} (aliases: "
                        f"{', '.join(known)}; or give a config key such as "
                        f"model.decode_head.num_queries)")
    return key_axis(name, get_key(variant.plain, name, where))


def _axis_order(variant: _Variant, names: Iterable[str]) -> list[str]:
    """Canonical order of a setting's axes: aliases as declared, config keys sorted, seed last."""
    declared = [a for a in variant.aliases if a != contract.SEED]
    names = set(names)
    aliases = [a for a in declared if a in names]
    keys = sorted(n for n in names if n not in variant.aliases)
    return aliases + keys + ([contract.SEED] if contract.SEED in names else [])


def _id_prefixes(variant: _Variant, order: list[str]) -> dict[str, str]:
    """The id prefix of each config-key axis: its last part, longer where that is ambiguous."""
    out = {}
    for name in order:
        if name in variant.aliases:
            continue
        short = ax.short_name(name)
        clash = [n for n in order if n != name and (
            ax.short_name(n) == short or n == short
            or (n in variant.aliases and (n.startswith(short) or short.startswith(n))))]
        out[name] = re.sub(r"[^A-Za-z0-9_]", "_", name) if clash else short
    return out


def make_id(variant: str, parts: list[str], identity: Any) -> str:
    text = "-".join([variant] + [p for p in parts if p])
    return ax.cap_id(text, _canonical(identity))


def _copy_plain(cfg: dict) -> dict:
    """A deep copy of a plain config (pickle's C copy, ~10x faster than ``copy.deepcopy``)."""
    try:
        return pickle.loads(pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # something pickle cannot copy (a lambda): the general copy
        return copy.deepcopy(cfg)


def _code_hash(resolved: dict, cache: dict | None) -> str:
    """:func:`pipelines.axes.code_hash` of a config's code, memoised for one expansion by the
    set of ``type`` names it builds (the project files cannot change during one expansion)."""
    if cache is None:
        return ax.code_hash(ax.code_files(resolved))
    key = ("code", frozenset(ax.config_types(resolved)))
    if key not in cache:
        cache[key] = ax.code_hash(ax.code_files(resolved))
    return cache[key]


def _build_run(variant: _Variant, setting: dict[str, Any], axes_of: dict[str, Axis],
               data_root: str, data_identity: Any, cache: dict | None = None) -> Run:
    order = _axis_order(variant, setting)
    prefixes = _id_prefixes(variant, order)
    settings = {n: setting[n] for n in order}
    parts = [ax.id_part(n, axes_of[n] if n in variant.aliases else None, settings[n],
                        prefixes.get(n, n)) for n in order]
    train_names = [n for n in order if axes_of[n].stage == "train"]
    identity = {"variant": variant.name, "settings": settings}
    run_id = make_id(variant.name, parts, identity)
    train_identity = {"variant": variant.name, "settings": {n: settings[n] for n in train_names}}
    train_id = make_id(variant.name, [p for n, p in zip(order, parts) if n in train_names],
                       train_identity)

    options = dict(variant.options)
    for name in train_names:
        options[axes_of[name].key] = axes_of[name].config_value(settings[name])
    if "train_cfg.val_interval" not in options:
        options["train_cfg.val_interval"] = options["train_cfg.max_iters"]
    resolved = _copy_plain(variant.plain)
    for key, value in options.items():
        set_key(resolved, key, value, f"grid.variants.{variant.name}: {key}")
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dataset = (resolved.get(loader) or {}).get("dataset")
        if isinstance(dataset, dict) and "data_root" in dataset:
            dataset["data_root"] = DATA_ROOT_MASK
    resolved.pop("data_root", None)
    code = _code_hash(resolved, cache)
    train_recipe = _digest({"config": resolved, "data": data_identity, "code": code})
    later = {n: settings[n] for n in order if axes_of[n].stage != "train"}
    recipe = train_recipe if not later else _digest({"train": train_recipe, "later": later})
    cfg_options = tuple(sorted(_option(k, v) for k, v in options.items()))
    return Run(run_id=run_id, variant=variant.name, settings=settings,
               axis_keys={n: axes_of[n].key for n in order}, config=variant.config,
               max_iters=int(options["train_cfg.max_iters"]), cfg_options=cfg_options,
               data_root=data_root, recipe=recipe, train_id=train_id,
               train_recipe=train_recipe, methods=variant.methods,
               stages={n: axes_of[n].stage for n in order if axes_of[n].stage != "train"})


def expand_grid(ablation: Mapping[str, Any], repo: str | Path = ".") -> list[Run]:
    """Expand a (schema-validated) ablation config into its runs, in a stable order.

    Args:
        ablation: the parsed YAML (see ``workflow/schemas/ablation.schema.yaml``).
        repo: folder that relative model config paths are read from.

    Raises:
        UserError: unknown axis or key, bad value, missing model config, clashing ids.
    """
    grid = dict(ablation.get("grid") or {})
    variants = grid.pop("variants", None) or {}
    baseline = grid.pop("baseline", None)
    if not variants:
        raise UserError("grid.variants: no variant given")
    global_axes = {name: _as_list(values, f"grid.{name}") for name, values in grid.items()}
    global_axes.setdefault(contract.SEED, [0])
    data_root, data_identity = _data_identity(ablation)
    repo = Path(repo)

    runs: dict[str, Run] = {}
    cache: dict = {}
    for name, spec in variants.items():
        variant = _prepare_variant(name, spec, ablation, repo, cache)
        spec = dict(spec or {})
        product = {a: _as_list(v, f"grid.variants.{name}.axes.{a}")
                   for a, v in (spec.get("axes") or {}).items()}
        clash = sorted(set(product) & set(global_axes))
        if clash:
            raise UserError(f"grid.variants.{name}.axes.{clash[0]}: also a grid-level axis "
                            f"(give it in one place)")
        settings_lists = []
        points = spec.get("points")
        if points is not None:
            for i, point in enumerate(_as_list(points, f"grid.variants.{name}.points")):
                if not isinstance(point, dict):
                    raise UserError(f"grid.variants.{name}.points.{i}: expected a mapping "
                                    f"axis: value")
                settings_lists.append((f"grid.variants.{name}.points.{i}",
                                       {a: [v] for a, v in point.items()}))
        if product or points is None:
            settings_lists.append((f"grid.variants.{name}.axes", product))
        for where, local in settings_lists:
            lists = {**{a: v for a, v in global_axes.items() if a not in local}, **local}
            axes_of = {}
            checked = {}
            for axis_name, values in lists.items():
                at = (f"grid.{axis_name}" if axis_name in global_axes and axis_name not in local
                      else f"{where}.{axis_name}")
                axis = _resolve_axis(variant, axis_name, at)
                axes_of[axis_name] = axis
                checked[axis_name] = [axis.check(v, at) for v in values]
            names = list(checked)
            for combo in itertools.product(*(checked[n] for n in names)):
                _check_bounds(variant, dict(zip(names, combo)), axes_of, where)
                run = _build_run(variant, dict(zip(names, combo)), axes_of, data_root,
                                 data_identity, cache)
                if run.run_id in runs and runs[run.run_id] != run:
                    raise UserError(f"grid: two different settings share the id "
                                    f"{run.run_id!r}")
                runs[run.run_id] = run
    base = baseline_variant(baseline, {r.variant: r.methods for r in runs.values()})
    return sorted((replace(r, baseline=r.variant == base) for r in runs.values()),
                  key=lambda r: r.run_id)


def baseline_variant(declared: str | None, methods: Mapping[str, tuple[str, ...]]) -> str | None:
    """The ablation's baseline variant: ``grid.baseline`` when given, else the one variant whose
    config builds no method (None when there is no such variant, or more than one)."""
    if declared is not None:
        if declared not in methods:
            raise UserError(f"grid.baseline: {declared!r} is not a variant "
                            f"({', '.join(sorted(methods))})")
        return declared
    plain = [v for v, m in methods.items() if not m]
    return plain[0] if len(plain) == 1 else None


def _check_bounds(variant: _Variant, settings: Mapping[str, Any], axes_of: Mapping[str, Axis],
                  where: str) -> None:
    """Model-dependent bounds (``Axis.maximum_key``) against this run's resolved value of the
    bounding key: the run's own setting of it, else the variant's options, else its config."""
    by_key = {axes_of[n].key: axes_of[n].config_value(v) for n, v in settings.items()}
    for name, value in settings.items():
        axis = axes_of[name]
        if axis.maximum_key is None:
            continue
        keys = (axis.maximum_key,) if isinstance(axis.maximum_key, str) else axis.maximum_key
        bound = key = None
        for key in keys:  # the first key this run's config sets (a tuple: alternatives)
            if key in by_key:
                bound = by_key[key]
            elif key in variant.options:
                bound = variant.options[key]
            elif len(keys) > 1:
                try:
                    bound = get_key(variant.plain, key, f"{where}.{name}: bound {key}")
                except UserError:
                    continue
            else:
                bound = get_key(variant.plain, key, f"{where}.{name}: bound {key}")
            if bound is not None:
                break
        axis.check_bound(value, bound, f"{where}.{name}", key)


def runs_by_id(runs: Iterable[Run]) -> dict[str, Run]:
    return {r.run_id: r for r in runs}


def axes_table(config: str | Path) -> list[tuple[str, Axis]]:
    """The aliases a model config offers (for ``python -m pipelines grid --axes CONFIG``)."""
    plain = resolved_base(config)
    out = list(BUILTIN_AXES.items())
    for method in ax.methods_of_config(plain):
        out += list(ax.method_axes(method).items())
    return out


def check_model_config(path: str | Path) -> None:
    """``path`` is a model config (a ``.py`` file with a ``model``) whose model builds."""
    from pipelines.config import load_config

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    if path.suffix != ".py":
        raise UserError(f"{path}: not a model config (configs/models/*.py); an ablation "
                        f"config is listed by `python -m pipelines grid {path}`")
    cfg = load_config(path)
    if not isinstance(cfg.get("model"), dict):
        raise UserError(f"{path}: not a model config (it defines no `model`)")
    from pipelines.flops import build_model

    build_model(cfg)  # an unknown type or a value its class refuses: one line


def load_ablation(path: str | Path) -> dict[str, Any]:
    """Read an ablation YAML (no schema defaults; the Snakefile validates with snakemake)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ablation config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"cannot parse {path}: {yaml_error_line(err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def yaml_error_line(err) -> str:
    """A PyYAML error -> one line with its line and column (``line 4, column 7: ...``)."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or str(err)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(err, "context", None)
    text = f"{where}{problem}" + (f" ({context})" if context else "")
    return " ".join(text.split())


def validate_ablation(config: dict, schema: str | Path | None = None, *,
                      check_data: bool = True) -> dict:
    """Validate against the JSON schema (filling defaults) -> config; one-line UserError.

    Values from Snakemake's ``--config`` arrive as text inside a mapping (it reads them with
    YAML's BaseLoader: ``data={root: /x, synthetic: null}`` gives ``synthetic: 'null'``); a text
    value the schema refuses is read again as a YAML scalar, in place (:func:`_coerce_text`).

    Args:
        check_data: with ``data.synthetic: null`` the dataset is the user's, so ``data.root``
            must be a folder with something in it (checked here, before any job; its layout is
            checked against each model config by :func:`expand_grid`).
    """
    import jsonschema
    import yaml

    schema_path = Path(schema) if schema else (Path(__file__).resolve().parents[1] / "workflow"
                                               / "schemas" / "ablation.schema.yaml")
    schema_doc = yaml.safe_load(schema_path.read_text())
    validator_cls = jsonschema.validators.validator_for(schema_doc)
    validator = _with_defaults(validator_cls)(schema_doc)
    _coerce_text(config, validator)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise UserError(describe_schema_error(errors[0]))
    if check_data:
        check_data_root(config)
    return config


def _coerce_text(config: dict, validator) -> None:
    """Text values the schema refuses, read again as YAML scalars where that gives a number, a
    boolean or null (``'null'`` -> None, ``'8'`` -> 8): what ``--config`` meant."""
    import yaml

    def errors(errs):
        for err in errs:
            yield err
            yield from errors(err.context or ())

    for _ in range(100):  # one pass per nesting level is plenty
        changed = False
        for err in list(errors(validator.iter_errors(config))):
            if not isinstance(err.instance, str) or not err.absolute_path:
                continue
            try:
                value = yaml.safe_load(err.instance)
            except yaml.YAMLError:
                continue
            if value is not None and not isinstance(value, (bool, int, float)):
                continue
            *parents, last = list(err.absolute_path)
            node = config
            for part in parents:
                node = node[part]
            if node[last] == err.instance:
                node[last] = value
                changed = True
        if not changed:
            return


def check_data_root(config: Mapping) -> None:
    """With ``data.synthetic: null``, ``data.root`` must be an existing, non-empty folder."""
    data = config.get("data") or {}
    if data.get("synthetic") is not None:
        return
    root = Path(str(data.get("root") or "data/synthetic"))
    hint = ("give your dataset's folder as data.root, or data.synthetic to generate the "
            "synthetic set there")
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "not found"
        raise UserError(f"ablation config key 'data.root': dataset folder {what}: {root} "
                        f"(data.synthetic is null; {hint})")
    try:
        empty = not any(root.iterdir())
    except OSError as err:
        raise UserError(f"ablation config key 'data.root': cannot read {root}: "
                        f"{err.strerror}") from None
    if empty:
        raise UserError(f"ablation config key 'data.root': dataset folder is empty: {root} "
                        f"(data.synthetic is null; {hint})")


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
    """Where each stage of one run writes (small JSON outputs; checkpoints beside, undeclared).

    Every output is keyed by what it depends on (issue 17): a run's files live in its recipe's
    folder (``results/<stage>/<ablation>/<run-id>/<recipe>/``), its training in the training
    recipe's (``results/train/<ablation>/<train-id>/work-<train recipe>/``). A changed recipe is
    therefore a missing output from ``run.json`` to ``metrics.json``, which Snakemake schedules
    whatever its rerun triggers and with or without ``.snakemake/`` metadata, and a consumer that
    reads a run's files through its ``run.json`` reads the current recipe's files only.
    """

    results: str
    ablation: str
    run_id: str
    train_id: str = ""  # the training it uses (runs differing only in later-stage axes share one)
    train_recipe: str = ""  # that training's recipe: its folder, so a new recipe is a new output
    recipe: str = ""  # the run's own recipe: the folder of its per-run outputs

    def _stage(self, stage: str, name: str | None = None) -> Path:
        folder = Path(self.results) / stage / self.ablation / (name or self.run_id)
        return folder / self.recipe if self.recipe and name is None else folder

    @classmethod
    def of(cls, results: str, ablation: str, run: "Run | Mapping") -> "RunPaths":
        get = run.get if isinstance(run, Mapping) else lambda k: getattr(run, k)
        return cls(str(results), ablation, get("run_id"), get("train_id") or get("run_id"),
                   get("train_recipe") or "", get("recipe") or "")

    @property
    def run_json(self) -> Path:
        return self._stage("runs") / "run.json"

    @property
    def train_done(self) -> Path:
        """In the recipe's work folder (when known): a changed recipe is a missing output, so
        Snakemake trains it whatever its rerun triggers; checkpoints sit beside, undeclared."""
        if self.train_recipe:
            return self.work_dir(self.train_recipe) / "train_done.json"
        return self._stage("train", self.train_id) / "train_done.json"

    def work_dir(self, recipe_hash: str) -> Path:
        return self._stage("train", self.train_id) / f"work-{recipe_hash}"

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


def content_key(runs: Iterable["Run"], *extra: Any) -> str:
    """12 hex digits of what an ablation-wide output depends on: every run's id and recipe (and
    ``extra``: the tracking store, say). The manifest, the ingest record and the paired benchmark
    live in a folder of this name, so a changed run set or recipe is a missing output for them
    too, under any rerun trigger."""
    return _digest({"runs": sorted((r.run_id, r.recipe) for r in runs), "extra": list(extra)})


# ----------------------------------------------------------------------------- CLI
def add_parser(sub) -> None:
    p = sub.add_parser("grid", help="expand an ablation config into its runs (ids, settings)",
                       description="Validate an ablation config against the schema and list "
                       "its runs, or write one run's resolved settings as JSON.")
    p.add_argument("ablation", nargs="?", help="configs/ablations/*.yaml")
    p.add_argument("--json", action="store_true", help="print every run as JSON")
    p.add_argument("--axes", metavar="MODEL_CONFIG", help="list the axis aliases a model config "
                   "offers (any config key is an axis too)")
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
    if args.axes:
        check_model_config(args.axes)
        for name, axis in axes_table(args.axes):
            extra = f" [{axis.stage} stage]" if axis.stage != "train" else ""
            print(f"{name:<18} -> {axis.key}  ({axis.type}){extra}  {axis.help}")
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
            print(f"  {r.run_id}  ({r.config}, {r.max_iters} iters, recipe {r.recipe})")
    return 0
