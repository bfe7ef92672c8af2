"""The fast grid expansion gives the same runs as the plain one: every id, recipe, train recipe,
cfg-option and content key of the repository's ablations and of a load-test grid, compared with
the expansion as it was written before (a full copy of the config per run, ``json.dumps`` of it,
the code files looked up from the whole config)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines import axes as ax
from pipelines.grid import content_key, expand_grid, validate_ablation
from pipelines.grid import expand as ex
from pipelines.grid.plain_config import SharedBase, copy_plain, set_key, share_plain
from pipelines.grid.run import Run, cfg_option, digest, make_id
from tests.conftest import REPO, TINY_OPTIONS

SYNTHETIC = {"root": "data/x", "synthetic": {"train": 4, "val": 2, "size": 64, "seed": 0}}


def plain_build_run(variant, setting, axes_of, data_root, data_identity, cache=None) -> Run:
    """``expand._build_run`` as it was: the reference the fast one must equal."""
    order = ex._axis_order(variant, setting)
    prefixes = ex._id_prefixes(variant, order)
    settings = {n: setting[n] for n in order}
    parts = [ax.id_part(n, axes_of[n] if n in variant.aliases else None, settings[n],
                        prefixes.get(n, n)) for n in order]
    train_names = [n for n in order if axes_of[n].stage == "train"]
    run_id = make_id(variant.name, parts, {"variant": variant.name, "settings": settings})
    train_id = make_id(variant.name, [p for n, p in zip(order, parts) if n in train_names],
                       {"variant": variant.name,
                        "settings": {n: settings[n] for n in train_names}})
    options = dict(variant.options)
    for name in train_names:
        options[axes_of[name].key] = axes_of[name].config_value(settings[name])
    if "train_cfg.val_interval" not in options:
        options["train_cfg.val_interval"] = options["train_cfg.max_iters"]
    resolved = copy_plain(variant.plain)
    for key, value in options.items():
        set_key(resolved, key, value, key)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        dataset = (resolved.get(loader) or {}).get("dataset")
        if isinstance(dataset, dict) and "data_root" in dataset:
            dataset["data_root"] = ex.DATA_ROOT_MASK
    resolved.pop("data_root", None)
    code = ax.code_hash(ax.code_files(resolved))
    train_recipe = digest({"config": resolved, "data": data_identity, "code": code})
    later = {n: settings[n] for n in order if axes_of[n].stage != "train"}
    recipe = train_recipe if not later else digest({"train": train_recipe, "later": later})
    return Run(run_id=run_id, variant=variant.name, settings=settings,
               axis_keys={n: axes_of[n].key for n in order}, config=variant.config,
               max_iters=int(options["train_cfg.max_iters"]),
               cfg_options=tuple(sorted(cfg_option(k, v) for k, v in options.items())),
               data_root=data_root, recipe=recipe, train_id=train_id,
               train_recipe=train_recipe, methods=variant.methods,
               stages={n: axes_of[n].stage for n in order if axes_of[n].stage != "train"})


def _ablations():
    for path in sorted((REPO / "configs" / "ablations").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        if config["data"].get("synthetic") is None:  # no dataset here: the synthetic spec
            config["data"] = dict(SYNTHETIC)
        yield path.stem, config
    from pipelines.benchmarks import many_runs

    yield "loadtest", many_runs.loadtest_ablation(150, Path("/nonexistent"))
    # list-index keys, tuples, options that set keys inside other options' values
    tiny = yaml.safe_load((REPO / "configs" / "ablations" / "demo.yaml").read_text())
    tiny["train"]["cfg_options"] = list(TINY_OPTIONS) + ["optim_wrapper.optimizer.lr=0.0003"]
    tiny["grid"]["variants"]["baseline"]["axes"] = {
        "model.decode_head.num_queries": [5, 10], "train_dataloader.batch_size": [1, 2]}
    yield "tiny", tiny


@pytest.mark.parametrize("name, config", list(_ablations()), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_fast_expansion_equals_the_plain_one(name, config, monkeypatch):
    config = validate_ablation(config)
    fast = expand_grid(config, repo=REPO)
    monkeypatch.setattr(ex, "_build_run", plain_build_run)
    plain = expand_grid(config, repo=REPO)
    assert [r.to_dict() for r in fast] == [r.to_dict() for r in plain]
    assert content_key(fast, "x") == content_key(plain, "x")


def test_shared_configs_leave_the_variant_config_alone_and_read_like_full_copies():
    import json

    plain = {"a": {"b": [1, {"type": "mmdet.X", "c": 2}], "d": "e"}, "f": 1.5, "g": (1, 2),
             "n": {1: "int key"}, "u": "é"}
    before = json.dumps(plain, sort_keys=True, default=str)
    base = SharedBase(plain)
    for key, value in (("a.b.1.c", 3), ("a.d", {"type": "Y"}), ("f", None), ("a.b.0", [7])):
        mine, owned = share_plain(plain)
        set_key(mine, key, value, key, owned)
        full = copy_plain(plain)
        set_key(full, key, value, key)
        assert base.canonical(mine, owned) == json.dumps(
            full, sort_keys=True, separators=(",", ":"), default=str)
        assert base.types(mine) == frozenset(ax.config_types(full))
        assert json.dumps(plain, sort_keys=True, default=str) == before  # never written
