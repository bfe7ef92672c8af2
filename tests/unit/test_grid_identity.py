"""One rendering per run: the grid's rendered config of a run is mmengine's own resolution of it
(``Config.fromfile`` of the variant's config, then ``merge_from_dict`` of the run's options: the
public API, run here independently), and the recipe is the hash of that text plus code and data.
Checked on every ablation in the repository, a load-test grid and a grid of awkward keys."""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import yaml

from pipelines import axes as ax
from pipelines.config import DATA_ROOT_MASK, DATALOADERS, add_runner_defaults
from pipelines.grid import expand_grid, validate_ablation
from pipelines.grid.render import (RenderedBase, load_rendered, merge_options, render_run,
                                   text_digest)
from pipelines.grid.run import digest
from tests.conftest import REPO, TINY_OPTIONS

SYNTHETIC = {"root": "data/x", "synthetic": {"train": 4, "val": 2, "size": 64, "seed": 0}}


def _ablations():
    for path in sorted((REPO / "configs" / "ablations").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        if config["data"].get("synthetic") is None:  # no dataset here: the synthetic spec
            config["data"] = dict(SYNTHETIC)
        yield path.stem, config
    from pipelines.benchmarks import many_runs

    yield "loadtest", many_runs.loadtest_ablation(150, Path("/nonexistent"))
    # list-index keys, tuples, options that set keys inside other options' values, a dict axis
    tiny = yaml.safe_load((REPO / "configs" / "ablations" / "demo.yaml").read_text())
    tiny["train"]["cfg_options"] = list(TINY_OPTIONS) + ["optim_wrapper.optimizer.lr=0.0003"]
    tiny["grid"]["variants"]["baseline"]["axes"] = {
        "model.decode_head.num_queries": [5, 10], "train_dataloader.batch_size": [1, 2],
        "optim_wrapper.optimizer": [{"lr": 0.001, "weight_decay": 0.0},
                                    {"_delete_": True, "type": "SGD", "lr": 0.01,
                                     "momentum": 0.9}]}
    yield "tiny", tiny


def mmengine_config(run):
    """The run's config by mmengine's public API alone, the dataset folder masked."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(REPO / run.config), import_custom_modules=False)
    add_runner_defaults(cfg)
    cfg.merge_from_dict(dict(run.options), allow_list_keys=True)
    plain = cfg.to_dict()
    for loader in DATALOADERS:
        dataset = (plain.get(loader) or {}).get("dataset")
        if isinstance(dataset, dict) and "data_root" in dataset:
            dataset["data_root"] = DATA_ROOT_MASK
    plain.pop("data_root", None)
    return plain


@pytest.mark.parametrize("name, config", list(_ablations()), ids=lambda v: v
                         if isinstance(v, str) else "")
def test_the_rendered_config_is_mmengines_resolution_and_the_recipe_hashes_it(name, config):
    config = validate_ablation(config)
    runs = expand_grid(config, repo=REPO)
    sample = runs if len(runs) <= 12 else random.Random(0).sample(runs, 12)
    for run in sample:
        text = render_run(run, REPO)
        assert text_digest(text) == run.config_sha
        plain = mmengine_config(run)
        assert load_rendered(text).to_dict() == plain, run.run_id
        code = ax.code_hash(ax.code_files(plain))
        data = (run.data_root, config["data"])
        recipe = digest({"config": run.config_sha, "data": _data_identity(config), "code": code})
        assert run.train_recipe == recipe, (run.run_id, data)
    # one text per recipe, and a different text is a different recipe
    by_recipe = {}
    for run in runs:
        by_recipe.setdefault(run.train_recipe, set()).add(run.config_sha)
    assert all(len(shas) == 1 for shas in by_recipe.values())
    assert len({r.config_sha for r in runs}) == len(by_recipe)


def _data_identity(config):
    from pipelines.grid.expand import _data_identity

    return _data_identity(config)[1]


def test_a_dict_merges_into_a_dict_as_mmengine_merges_it():
    from mmengine.config import Config

    base = {"a": {"b": {"c": 1, "d": 2}, "l": [{"x": 1}, {"y": 2}]}, "t": (1, 2)}
    for options in ({"a.b": {"c": 5}}, {"a.b": {"_delete_": True, "c": 5}}, {"a.l.1.y": 3},
                    {"a.b.c": 7, "a.b": {"d": 9}}, {"t": (3, 4)}):
        cfg = Config(base)
        cfg.merge_from_dict(dict(options), allow_list_keys=True)
        assert merge_options(base, options) == cfg.to_dict(), options
    assert merge_options(base, {"a.b": {"c": 5}})["a"]["b"] == {"c": 5, "d": 2}
    assert base == {"a": {"b": {"c": 1, "d": 2}, "l": [{"x": 1}, {"y": 2}]}, "t": (1, 2)}


def test_rendering_reuses_the_variants_text_and_never_changes_it():
    import json

    plain = {"a": {"b": [1, {"type": "mmdet.X", "c": 2}], "d": "e"}, "f": 1.5, "g": (1, 2),
             "n": {1: "int key"}, "u": "é", "inf": float("inf"), "lst": [(1,), []]}
    before = json.dumps(plain, sort_keys=True, default=str)
    base = RenderedBase(plain)
    base.render(plain)  # fills the cache
    for key, value in (("a.b.1.c", 3), ("a.d", {"_delete_": True, "type": "Y"}), ("f", None),
                       ("a.b.1", {"c": 9})):
        mine = merge_options(plain, {key: value})
        text = base.render(mine)
        assert text == RenderedBase(mine).render(mine)  # the cache changes nothing
        assert load_rendered(text).to_dict() == {**mine, "randomness": {"seed": None}}
        assert base.types(mine) == frozenset(ax.config_types(mine))
        assert json.dumps(plain, sort_keys=True, default=str) == before  # never written


def test_a_value_a_config_file_cannot_hold_is_one_line():
    from pipelines.errors import UserError

    with pytest.raises(UserError, match=r"a list element is changed by a key inside it"):
        merge_options({"a": [1, 2]}, {"a.0": 7})  # (mmengine's merge_from_dict fails here too)

    with pytest.raises(UserError, match=r"x\.y: a set value cannot be written"):
        RenderedBase({}).render({"x": {"y": {1, 2}}})
