"""Grid expansion: a (schema-validated) ablation config -> its runs (:func:`expand_grid`), every
key and value checked against the variant's resolved config and its axes before any job."""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipelines import axes as ax
from pipelines import contract
from pipelines.axes import Axis
from pipelines.errors import UserError
from pipelines.grid.plain_config import get_key, key_axis, normalise_path, resolved_base
from pipelines.grid.render import RenderedBase, remember_base, run_config, text_digest
from pipelines.grid.run import ID_RE, Run, digest, make_id
from pipelines.stages import weights

#: aliases every variant has
BUILTIN_AXES = {contract.SEED: Axis("randomness.seed", type="int", minimum=0, id="seed{}",
                                    help="random seed; settings that differ only here are "
                                    "replicates")}
VARIANT_KEYS = ("config", "axes", "points", "cfg_options", "max_iters")


def _as_list(value, where: str) -> list:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise UserError(f"{where}: empty list (give at least one value)")
    return values


@dataclass
class _Variant:
    name: str
    config: str
    plain: dict
    methods: tuple[str, ...]
    aliases: dict[str, Axis]       # every alias this variant may use
    options: dict[str, Any]        # fixed options (train + variant cfg_options, iterations)
    max_iters: int
    weights_folder: Path | None = None  # the ablation's folder of pretrained checkpoints
    base: RenderedBase | None = None  # `plain` and its text, shared by the runs' configs

    def __post_init__(self) -> None:
        self.base = RenderedBase(self.plain)


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
    folder = weights.folder_of(ablation)
    if folder is None:  # no folder: a checkpoint given as a file path must exist (once here)
        weights.identity(plain, None, f"{where}.config")
    variant = _Variant(name, config, plain, methods, aliases, options, max_iters, folder)
    remember_base(str(path), variant.base)  # pipelines.grid.render.render_run reads it back
    return variant


def _check_data_layout(plain: dict, ablation: Mapping, where: str) -> None:
    """The user's dataset (``data.synthetic: null``), when its folder exists: the image and
    label folders this model config reads from it (``data_prefix`` of each dataloader) must
    exist and hold files. (A missing ``data.root`` is :func:`check_data_root`'s.)"""
    from pipelines.config import DATALOADERS, check_dataset
    from pipelines.data.layout import check_labels

    data = ablation.get("data") or {}
    root = Path(str(data.get("root") or ""))
    if data.get("synthetic") is not None or not data.get("root") or not root.is_dir():
        return
    try:
        check_dataset(plain, DATALOADERS, data_root=str(root))
        check_labels(plain, DATALOADERS, root)  # image/label pairs, sampled label values
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


def _code_hash(types: frozenset[str], cache: dict) -> str:
    """:func:`pipelines.axes.code_hash` of the project code a config builds, memoised for one
    expansion by the set of ``type`` names it builds (the project files cannot change during
    one expansion, and a config's code files follow from those names alone)."""
    key = ("code", types)
    if key not in cache:
        cache[key] = ax.code_hash(ax.type_code_files(types))
    return cache[key]


def _weights_identity(variant: _Variant, options: Mapping[str, Any], resolved: dict,
                      cache: dict) -> dict[str, str] | None:
    """:func:`pipelines.stages.weights.identity` of a run's config, memoised for one expansion: a run
    differs from its variant's config only along its options, so only the options that can
    reach a pretrained checkpoint (a key through ``init_cfg`` or ``pretrained``, or a container
    value that may hold one) key the memo; runs without such options share one walk."""
    reach = tuple(sorted((key, repr(value)) for key, value in options.items()
                         if isinstance(value, (dict, list, tuple))
                         or {"init_cfg", "pretrained"} & set(key.split("."))))
    memo = ("weights", variant.name, reach)
    if memo not in cache:
        cache[memo] = weights.identity(resolved, variant.weights_folder,
                                       f"grid.variants.{variant.name}.config")
    return cache[memo]


def _build_run(variant: _Variant, setting: dict[str, Any], axes_of: dict[str, Axis],
               data_root: str, data_identity: Any, cache: dict) -> Run:
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
    # merged in key order (not the YAML's): a key before the keys under it, so the more
    # specific one wins, whatever order the options were written in
    options = dict(sorted(options.items()))
    # the run's config, rendered once: the variant's with the run's options merged in by
    # mmengine's merge (pipelines/grid/render.py); the recipe hashes that text, every stage
    # reads that file
    resolved = run_config(variant.plain, options, f"grid.variants.{variant.name}")
    text = variant.base.render(resolved)
    config_sha = text_digest(text)
    code = _code_hash(variant.base.types(resolved), cache)
    recipe_of = {"config": config_sha, "data": data_identity, "code": code}
    if variant.weights_folder is not None:  # the pretrained files' content, not their folder
        pretrained = _weights_identity(variant, options, resolved, cache)
        if pretrained:  # (a config without pretrained weights keeps its recipe)
            recipe_of["weights"] = pretrained
    train_recipe = digest(recipe_of)
    later = {n: settings[n] for n in order if axes_of[n].stage != "train"}
    recipe = train_recipe if not later else digest({"train": train_recipe, "later": later})
    return Run(run_id=run_id, variant=variant.name, settings=settings,
               axis_keys={n: axes_of[n].key for n in order}, config=variant.config,
               max_iters=int(options["train_cfg.max_iters"]), options=options,
               config_sha=config_sha,
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
