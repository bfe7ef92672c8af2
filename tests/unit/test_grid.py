"""Grid expansion: stable readable ids, products of axes, per-variant sub-grids, refusals."""
from __future__ import annotations

import copy

import pytest

from pipelines.errors import UserError
from pipelines.grid import (Run, RunPaths, expand_grid, parse_schedule, run_id,
                            validate_ablation)

BASE = "configs/models/mask2former_r18_synthetic-128x128.py"


def ablation(**variants):
    return {"name": "t", "models": {"baseline": BASE, "pro_scale": BASE},
            "train": {"max_iters": 10}, "grid": {"seed": [0], "variants": variants}}


def test_run_id_is_readable_and_stable():
    s = {"schedule": "3-3-3", "trc": True, "lpe": True, "seed": 0}
    assert run_id("pro_scale", s) == "pro_scale-s3-3-3-trc-lpe-seed0"
    assert run_id("pro_scale", dict(s, trc=False, lpe=False, seed=2)) == "pro_scale-s3-3-3-seed2"
    assert run_id("baseline", {"seed": 1}) == "baseline-seed1"
    assert run_id("eco_m2f", {"beta": 0.0005, "seed": 0}) == "eco_m2f-beta0.0005-seed0"
    assert run_id("ailurus", {"cluster_fraction": 0.25, "seed": 0}) == "ailurus-cf0.25-seed0"


def test_grid_is_the_product_of_axes_with_sub_grids():
    runs = expand_grid(dict(ablation(baseline={}, pro_scale={
        "schedule": ["3-3-3", "2-2-5"], "trc": [True, False], "lpe": [False]}),
        grid={"seed": [0, 1], "variants": {"baseline": {}, "pro_scale": {
            "schedule": ["3-3-3", "2-2-5"], "trc": [True, False], "lpe": [False]}}}))
    ids = [r.run_id for r in runs]
    assert len(ids) == len(set(ids)) == 2 + 2 * 2 * 2
    assert "baseline-seed1" in ids and "pro_scale-s2-2-5-trc-seed1" in ids
    assert "pro_scale-s3-3-3-seed0" in ids
    # baseline has no PRO-SCALE axes, and its settings say so
    base = next(r for r in runs if r.run_id == "baseline-seed0")
    assert base.settings["schedule"] is None and base.params()["schedule"] == ""
    assert not any("pixel_decoder" in o for o in base.cfg_options)


def test_cfg_options_carry_the_axis_values():
    (run,) = expand_grid(ablation(pro_scale={"schedule": ["1-1-4"], "trc": [False],
                                             "lpe": [True]}))
    opts = run.cfg_options
    assert "model.decode_head.pixel_decoder.schedule=[1,1,4]" in opts
    assert "model.decode_head.pixel_decoder.trc=False" in opts
    assert "model.decode_head.pixel_decoder.lpe=True" in opts
    assert "train_cfg.max_iters=10" in opts and "randomness.seed=0" in opts
    assert run.params() == {"variant": "pro_scale", "schedule": "1-1-4", "trc": "false",
                            "lpe": "true", "cluster_fraction": "", "beta": "", "seed": "0",
                            "config": BASE, "max_iters": "10"}


def test_ids_and_hashes_do_not_depend_on_order_or_run():
    a = ablation(pro_scale={"schedule": ["3-3-3", "2-2-2"], "trc": [True], "lpe": [False]})
    b = copy.deepcopy(a)
    b["grid"]["variants"]["pro_scale"]["schedule"].reverse()
    runs_a = {r.run_id: r.recipe_hash for r in expand_grid(a)}
    runs_b = {r.run_id: r.recipe_hash for r in expand_grid(b)}
    assert runs_a == runs_b


def test_recipe_hash_changes_with_the_recipe_only():
    a = expand_grid(ablation(baseline={}))[0]
    b = expand_grid(dict(ablation(baseline={}), train={"max_iters": 11}))[0]
    assert a.run_id == b.run_id and a.recipe_hash != b.recipe_hash
    assert a.recipe_hash == expand_grid(ablation(baseline={}))[0].recipe_hash


def test_identical_settings_train_once():
    runs = expand_grid(ablation(pro_scale={"schedule": ["3-3-3", "3-3-3"], "trc": [True],
                                           "lpe": [False, False]}))
    assert [r.run_id for r in runs] == ["pro_scale-s3-3-3-trc-seed0"]


@pytest.mark.parametrize("variants, message", [
    ({"vit_magic": {}}, "grid.variants.vit_magic: unknown variant"),
    ({"pro_scale": {"schedule": ["3-3"], "trc": [True], "lpe": [True]}}, "expected 3 stages"),
    ({"pro_scale": {"schedule": ["a-b-c"], "trc": [True], "lpe": [True]}}, "'a-b-c'"),
    ({"pro_scale": {"schedule": ["3-3-3"], "trc": ["yes"], "lpe": [True]}},
     "grid.variants.pro_scale.trc: expected true or false"),
    ({"pro_scale": {"schedule": ["3-3-3"], "trc": [True]}}, "pro_scale.lpe: required axis"),
    ({"baseline": {"schedule": ["3-3-3"]}}, "baseline.schedule: not an axis of baseline"),
    ({"eco_m2f": {"beta": [0.01], "config": BASE}}, "has no model yet"),
    ({"ailurus": {"cluster_fraction": [1.5], "config": BASE}}, "out of range"),
    ({"pro_scale": {"config": "configs/models/nope.py", "schedule": ["3-3-3"],
                    "trc": [True], "lpe": [True]}}, "file not found"),
])
def test_bad_grids_are_refused_naming_the_key(variants, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace(".", r"\.")):
        expand_grid(ablation(**variants))


def test_parse_schedule():
    assert parse_schedule("0-0-6") == (0, 0, 6)
    assert parse_schedule([3, 3, 3]) == (3, 3, 3)
    with pytest.raises(UserError):
        parse_schedule("3-3-0")


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["grid"]["variants"].update(unknown_variant={}), "grid.variants.unknown_variant"),
    (lambda c: c["grid"]["variants"]["pro_scale"].update(schedule=["3-3"]),
     "grid.variants.pro_scale.schedule.0"),
    (lambda c: c["train"].update(max_iters="many"), "train.max_iters"),
    (lambda c: c.update(colour="blue"), "colour"),
    (lambda c: c["grid"]["variants"]["pro_scale"].update(trc=[1]), "grid.variants.pro_scale.trc.0"),
])
def test_schema_refuses_with_the_key_named(mutate, key):
    config = ablation(baseline={}, pro_scale={"schedule": ["3-3-3"], "trc": [True],
                                              "lpe": [True]})
    mutate(config)
    with pytest.raises(UserError, match=f"ablation config key '{key}'"):
        validate_ablation(config)


def test_schema_fills_defaults():
    config = validate_ablation({"name": "x", "grid": {"variants": {"baseline": {}}}})
    assert config["results"] == "results"
    assert config["mlflow"]["tracking_uri"] == "sqlite:///results/mlflow.db"
    assert config["grid"]["seed"] == [0] and config["train"]["max_iters"] == 300
    assert config["resources"]["train"]["gpus"] == 0


def test_every_schema_key_has_a_description_and_default():
    import yaml
    from pathlib import Path

    schema = yaml.safe_load((Path(__file__).resolve().parents[2] / "workflow" / "schemas"
                             / "ablation.schema.yaml").read_text())
    missing = []

    def walk(node, where, need_default):
        for key, sub in (node.get("properties") or {}).items():
            path = f"{where}.{key}".lstrip(".")
            if "description" not in sub and "$ref" not in sub:
                missing.append(f"{path}: description")
            if need_default and "default" not in sub and key not in node.get("required", []) \
                    and path.count(".") < 3 and not path.startswith("grid.variants."):
                missing.append(f"{path}: default")
            walk(sub, path, need_default)

    walk(schema, "", True)
    assert not missing, missing


def test_paths_layout():
    p = RunPaths("results", "demo", "baseline-seed0")
    assert str(p.metrics) == "results/evaluate/demo/baseline-seed0/metrics.json"
    assert str(p.work_dir("abcd1234")) == "results/train/demo/baseline-seed0/work-abcd1234"
    assert isinstance(expand_grid(ablation(baseline={}))[0], Run)
