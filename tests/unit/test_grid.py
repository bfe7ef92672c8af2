"""Grid expansion: axes are config keys or method aliases, ids stable and injective, recipes are
content (resolved config, data, code), refusals name the key."""
from __future__ import annotations

import copy
import random
import shutil
from pathlib import Path

import pytest

from pipelines import axes as ax
from pipelines.errors import UserError
from pipelines.grid import Run, RunPaths, expand_grid, validate_ablation

REPO = Path(__file__).resolve().parents[2]
BASE = "configs/models/mask2former_r18_synthetic-128x128.py"
PRO = "configs/models/mask2former_r18_proscale-333_synthetic-128x128.py"


def ablation(seed=(0,), **variants):
    return {"name": "t", "train": {"max_iters": 10},
            "data": {"root": "data/x", "synthetic": {"train": 4, "val": 2, "size": 64, "seed": 0}},
            "grid": {"seed": list(seed), "variants": variants}}


def pro(**axes):
    return {"config": PRO, "axes": axes}


def test_run_ids_are_readable_and_follow_the_declared_axis_order():
    runs = expand_grid(ablation(seed=(0, 2), baseline={"config": BASE}, pro_scale=pro(
        lpe=[True, False], trc=[True], schedule=["3-3-3"])))
    ids = [r.run_id for r in runs]
    assert ids == ["baseline-seed0", "baseline-seed2", "pro_scale-s3-3-3-trc-lpe-seed0",
                   "pro_scale-s3-3-3-trc-lpe-seed2", "pro_scale-s3-3-3-trc-nolpe-seed0",
                   "pro_scale-s3-3-3-trc-nolpe-seed2"]
    run = runs[2]
    assert run.settings == {"schedule": "3-3-3", "trc": True, "lpe": True, "seed": 0}
    assert run.methods == ("pro_scale",)
    assert run.options["model.decode_head.pixel_decoder.schedule"] == [3, 3, 3]
    assert run.options["model.decode_head.pixel_decoder.trc"] is True
    assert run.options["randomness.seed"] == 0 and run.options["train_cfg.max_iters"] == 10
    assert run.params() == {"variant": "pro_scale", "config": PRO, "max_iters": "10",
                            "recipe": run.recipe, "schedule": "3-3-3", "trc": "true",
                            "lpe": "true", "seed": "0"}


def test_any_config_key_is_an_axis_and_grid_level_axes_apply_to_every_variant():
    config = ablation(baseline={"config": BASE}, pro_scale=pro(
        schedule=["1-1-4"], **{"model.decode_head.num_queries": [10, 20]}))
    config["grid"]["optim_wrapper.optimizer.lr"] = [0.001]
    runs = {r.run_id: r for r in expand_grid(config)}
    assert set(runs) == {"baseline-lr0.001-seed0", "pro_scale-s1-1-4-num_queries10-lr0.001-seed0",
                         "pro_scale-s1-1-4-num_queries20-lr0.001-seed0"}
    run = runs["pro_scale-s1-1-4-num_queries20-lr0.001-seed0"]
    assert run.options["model.decode_head.num_queries"] == 20
    assert run.params()["model.decode_head.num_queries"] == "20"
    assert run.params()["optim_wrapper.optimizer.lr"] == "0.001"


def test_points_list_exact_settings_beside_the_product():
    variant = pro(schedule=["3-3-3"], trc=[True])
    variant["points"] = [{"schedule": "2-2-2", "trc": False}]
    ids = [r.run_id for r in expand_grid(ablation(seed=(0, 1), pro_scale=variant))]
    assert ids == ["pro_scale-s2-2-2-notrc-seed0", "pro_scale-s2-2-2-notrc-seed1",
                   "pro_scale-s3-3-3-trc-seed0", "pro_scale-s3-3-3-trc-seed1"]


@pytest.mark.parametrize("variant, message", [
    (pro(schedule=["3-3"]), r"grid\.variants\.pro_scale\.axes\.schedule: '3-3' does not match"),
    (pro(schedule=["3-3-3"], trc=["yes"]),
     r"grid\.variants\.pro_scale\.axes\.trc: expected true or false, got 'yes'"),
    (pro(**{"model.decode_head.num_querys": [10]}),
     r"model\.decode_head\.num_querys: unknown config key .*no 'num_querys' under "
     r"model\.decode_head"),
    (pro(**{"model.decode_head.num_queries": [10.5]}),
     r"num_queries: expected an integer, got 10\.5"),
    (pro(colour=["blue"]), r"unknown axis 'colour' for variant 'pro_scale'"),
    (pro(schedule=[]), r"axes\.schedule: empty list"),
    ({"config": BASE, "axes": {"schedule": ["3-3-3"]}}, r"unknown axis 'schedule'"),
    ({"config": "configs/models/nope.py"}, r"config: file not found"),
    ({"config": BASE, "schedule": ["3-3-3"]}, r"pro_scale\.schedule: unknown key"),
    ({"config": BASE, "cfg_options": ["model.nope=1"]}, r"unknown config key 'model\.nope'"),
])
def test_bad_grids_are_refused_in_one_line_naming_the_key(variant, message):
    with pytest.raises(UserError, match=message) as err:
        expand_grid(ablation(pro_scale=variant))
    assert "\n" not in str(err.value)


VIT_CLUSTER = "configs/models/mask2former_vit-tiny-cluster_synthetic-128x128.py"
VIT_ATS = "configs/models/mask2former_vit-tiny-ats_synthetic-128x128.py"
VIT_PD = "configs/models/mask2former_vit-tiny-pdcluster_synthetic-128x128.py"


@pytest.mark.parametrize("variant, message", [
    ({"config": VIT_CLUSTER, "axes": {"cluster_layer": [1, 5]}},
     r"axes\.cluster_layer: 5 out of range: at most model\.backbone\.num_layers - 2 = 4 for "
     r"this model"),
    ({"config": VIT_CLUSTER, "axes": {"cluster_layer": [3], "model.backbone.num_layers": [4]}},
     r"axes\.cluster_layer: 3 out of range: at most model\.backbone\.num_layers - 2 = 2"),
    ({"config": VIT_ATS, "axes": {"ats_layers": [[1, 6]]}},
     r"axes\.ats_layers: \[1, 6\] out of range: at most model\.backbone\.num_layers - 1 = 5"),
    ({"config": VIT_PD, "axes": {"pd_cluster_layer": [6]}},
     r"axes\.pd_cluster_layer: 6 out of range: at most "
     r"model\.decode_head\.pixel_decoder\.encoder\.num_layers - 1 = 5"),
])
def test_layer_indices_beyond_the_models_depth_are_refused_before_any_job(variant, message):
    """A cluster layer (or sampling block) beyond the depth is one line at grid
    expansion, against the run's own resolved depth (an axis of the same run included)."""
    with pytest.raises(UserError, match=message) as err:
        expand_grid(ablation(vit=variant), repo=REPO)
    assert "\n" not in str(err.value)
    ok = {k: [v[0]] for k, v in variant["axes"].items() if k != "model.backbone.num_layers"}
    ok = {k: ([[1]] if k == "ats_layers" else [1]) for k in ok}
    assert expand_grid(ablation(vit={"config": variant["config"], "axes": ok}), repo=REPO)


def test_a_global_axis_that_a_variant_lacks_is_refused():
    config = ablation(baseline={"config": BASE})
    config["grid"]["schedule"] = ["3-3-3"]
    with pytest.raises(UserError, match=r"grid\.schedule: unknown axis 'schedule' for variant "
                                        r"'baseline'"):
        expand_grid(config)


# ----------------------------------------------------------------------------- id properties
KEYS = ["model.decode_head.num_queries", "optim_wrapper.optimizer.lr",
        "optim_wrapper.optimizer.weight_decay", "model.decode_head.num_transformer_feat_level",
        "train_dataloader.batch_size", "model.decode_head.align_corners"]
VALUES = {
    "model.decode_head.num_queries": lambda r: r.choice([1, 2, 10, 20, 100, 21]),
    "optim_wrapper.optimizer.lr": lambda r: r.choice([1e-4, 0.0001, 1e-05, 0.001, 0.5, 2.0, 0.1]),
    "optim_wrapper.optimizer.weight_decay": lambda r: r.choice([0.0, 0.05, 0.5, 1e-8]),
    "model.decode_head.num_transformer_feat_level": lambda r: r.choice([1, 2, 3]),
    "train_dataloader.batch_size": lambda r: r.choice([1, 2, 4, 8, 16]),
    "model.decode_head.align_corners": lambda r: r.choice([True, False]),
}
SCHEDULES = ["3-3-3", "2-2-2", "1-1-4", "0-0-6", "0-2-4", "10-0-1", "1-10-1", "11-1-1"]


def random_grid(rng: random.Random) -> dict:
    axes = {}
    for key in rng.sample(KEYS, rng.randint(0, 3)):
        values = {repr(v): v for v in (VALUES[key](rng) for _ in range(3))}
        axes[key] = list(values.values())
    if rng.random() < 0.7:
        axes["schedule"] = rng.sample(SCHEDULES, rng.randint(1, 3))
    if rng.random() < 0.5:
        axes["trc"] = rng.sample([True, False], rng.randint(1, 2))
    seeds = rng.sample(range(4), rng.randint(1, 2))
    return ablation(seed=seeds, pro_scale={"config": PRO, "axes": axes})


def test_property_distinct_settings_never_share_an_id_and_order_never_matters():
    rng = random.Random(1234)
    seen: dict[str, tuple] = {}
    for _ in range(20):
        config = random_grid(rng)
        runs = expand_grid(config)
        # the same grid with every list and every mapping shuffled gives the same ids + recipes
        shuffled = copy.deepcopy(config)
        variant = shuffled["grid"]["variants"]["pro_scale"]
        items = list(variant["axes"].items())
        rng.shuffle(items)
        variant["axes"] = {k: rng.sample(v, len(v)) for k, v in items}
        shuffled["grid"]["seed"].reverse()
        again = expand_grid(shuffled)
        assert [(r.run_id, r.recipe) for r in runs] == [(r.run_id, r.recipe) for r in again]
        for run in runs:
            setting = (run.variant, tuple(sorted((k, repr(v)) for k, v in run.settings.items())))
            assert seen.setdefault(run.run_id, setting) == setting, run.run_id
    assert len(seen) > 60


def test_format_value_is_injective_on_tricky_values():
    values = [1, 1.0, -1, "m1", 0.0001, 1e-05, "1em05", True, "true", None, "none", [3, 3, 3],
              "3x3x3", (3, 3), "3.3", 3.3, "a-b", "a_b", "", {"a": 1}, "_h1234", [1, "x"]]
    texts = [ax.format_value(v) for v in values]
    assert len(set(texts)) == len(texts), texts
    assert all("-" not in t and ax.ID_CHARS.match(t) for t in texts)


def test_over_long_ids_fall_back_to_a_prefix_and_a_hash():
    config = ablation(pro_scale=pro(**{"model.decode_head.num_queries": [10]}))
    config["grid"]["variants"] = {"v" * 95: config["grid"]["variants"]["pro_scale"]}
    (run,) = expand_grid(config)
    assert len(run.run_id) <= ax.MAX_ID_LEN and run.run_id.startswith("v" * 80)
    assert ax.ID_CHARS.match(run.run_id)


# ----------------------------------------------------------------------------- recipes
def test_recipe_is_content_not_spelling_or_order():
    a = expand_grid(ablation(baseline={"config": BASE}))[0]
    b = expand_grid(ablation(baseline={"config": "./" + BASE.replace("/", "//", 1)}))[0]
    assert a.run_id == b.run_id and a.recipe == b.recipe and b.config == BASE
    c = copy.deepcopy(ablation(baseline={"config": BASE, "cfg_options": [
        "default_hooks.logger.interval=5", "default_hooks.checkpoint.interval=5"]}))
    d = copy.deepcopy(c)
    d["grid"]["variants"]["baseline"]["cfg_options"].reverse()
    assert expand_grid(c)[0].recipe == expand_grid(d)[0].recipe != a.recipe
    # a value equal to the config's own is the same recipe
    e = ablation(baseline={"config": BASE, "cfg_options": ["model.decode_head.num_queries=20"]})
    assert expand_grid(e)[0].recipe == a.recipe


def test_recipe_follows_the_data_spec_and_iterations():
    a = expand_grid(ablation(baseline={"config": BASE}))[0]
    spec = ablation(baseline={"config": BASE})
    spec["data"]["synthetic"]["train"] = 5
    assert expand_grid(spec)[0].recipe != a.recipe
    longer = ablation(baseline={"config": BASE})
    longer["train"]["max_iters"] = 11
    assert expand_grid(longer)[0].recipe != a.recipe


def _copy_repo_configs(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "configs" / "models", tmp_path / "configs" / "models")
    return tmp_path


def test_editing_a_base_config_changes_the_recipe_of_its_users_only(tmp_path):
    repo = _copy_repo_configs(tmp_path)
    config = ablation(baseline={"config": BASE}, pro_scale=pro(schedule=["3-3-3"]))
    before = {r.run_id: r.recipe for r in expand_grid(config, repo=repo)}
    pro_cfg = repo / PRO
    pro_cfg.write_text(pro_cfg.read_text().replace("trc_temperature=0.1", "trc_temperature=0.2"))
    after = {r.run_id: r.recipe for r in expand_grid(config, repo=repo)}
    assert after["baseline-seed0"] == before["baseline-seed0"]
    assert after["pro_scale-s3-3-3-seed0"] != before["pro_scale-s3-3-3-seed0"]
    base = repo / BASE
    base.write_text(base.read_text().replace("num_queries=20", "num_queries=21"))
    again = {r.run_id: r.recipe for r in expand_grid(config, repo=repo)}
    assert all(again[k] != after[k] for k in again)  # PRO-SCALE's config inherits the base


def test_code_identity_names_exactly_the_files_a_config_builds():
    from pipelines.grid import resolved_base

    base = {p.name for p in ax.code_files(resolved_base(REPO / BASE))}
    pro_files = {p.name for p in ax.code_files(resolved_base(REPO / PRO))}
    assert "pro_scale.py" in pro_files and "pro_scale.py" not in base
    assert {"dataset.py", "metrics.py"} <= base
    assert "train.py" not in pro_files and "figures.py" not in pro_files


def test_later_stage_axes_share_one_training(tmp_path, monkeypatch):
    """An axis of a later stage (ECO-M2F's beta) is in the run id but not in the training."""
    declared = dict(ax.method_axes("pro_scale"))
    declared["gate_beta"] = ax.Axis("gate.beta", type="float", minimum=0, id="beta{}",
                                    stage="gate")
    real = ax.method_axes
    monkeypatch.setattr(ax, "method_axes",
                        lambda m: declared if m == "pro_scale" else real(m))
    runs = expand_grid(ablation(pro_scale=pro(schedule=["3-3-3"], gate_beta=[0.0, 0.02])))
    assert [r.run_id for r in runs] == ["pro_scale-s3-3-3-beta0.0-seed0",
                                        "pro_scale-s3-3-3-beta0.02-seed0"]
    assert runs[0].train_id == runs[1].train_id == "pro_scale-s3-3-3-seed0"
    assert runs[0].train_recipe == runs[1].train_recipe and runs[0].recipe != runs[1].recipe
    assert not any("gate.beta" in key for key in runs[0].options)
    assert runs[0].stages == {"gate_beta": "gate"}
    paths = RunPaths.of("results", "t", runs[1])
    assert str(paths.train_done) == (f"results/train/t/pro_scale-s3-3-3-seed0/work-"
                                     f"{runs[1].train_recipe}/train_done.json")
    assert str(paths.metrics) == (f"results/evaluate/t/pro_scale-s3-3-3-beta0.02-seed0/"
                                  f"{runs[1].recipe}/metrics.json")


# ----------------------------------------------------------------------------- schema
@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["grid"]["variants"].update(nocfg={}), "grid.variants.nocfg"),
    (lambda c: c["grid"]["variants"]["pro_scale"]["axes"].update(schedule="3-3-3"),
     "grid.variants.pro_scale.axes.schedule"),
    (lambda c: c["train"].update(max_iters="many"), "train.max_iters"),
    (lambda c: c.update(colour="blue"), "colour"),
    (lambda c: c["grid"].update(seed=[-1]), "grid.seed.0"),
])
def test_schema_refuses_with_the_key_named(mutate, key):
    config = ablation(baseline={"config": BASE}, pro_scale=pro(schedule=["3-3-3"]))
    mutate(config)
    with pytest.raises(UserError, match=f"ablation config key '{key}'"):
        validate_ablation(config)


def test_schema_fills_defaults():
    config = validate_ablation({"name": "x", "grid": {"variants": {"baseline": {
        "config": BASE}}}}, check_data=False)  # data/synthetic, used as is: not here
    assert config["results"] == "results"
    assert config["mlflow"]["tracking_uri"] == "sqlite:///results/mlflow.db"
    assert config["grid"]["seed"] == [0] and config["train"]["max_iters"] == 300
    assert config["resources"]["train"]["gpus"] == 0


def test_every_schema_key_has_a_description_and_default():
    import yaml

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "ablation.schema.yaml").read_text())
    missing = []

    def walk(node, where, need_default):
        for key, sub in (node.get("properties") or {}).items():
            path = f"{where}.{key}".lstrip(".")
            if "description" not in sub and "$ref" not in sub:
                missing.append(f"{path}: description")
            if need_default and "default" not in sub and key not in node.get("required", []) \
                    and path.count(".") < 3 and not path.startswith("grid.variants"):
                missing.append(f"{path}: default")
            walk(sub, path, need_default)

    walk(schema, "", True)
    assert not missing, missing


def test_every_shipped_ablation_expands():
    from pipelines.grid import load_ablation

    for path in sorted((REPO / "configs" / "ablations").glob("*.yaml")):
        config = validate_ablation(load_ablation(path), check_data=False)  # ADE20K's is yours
        runs = expand_grid(config, repo=REPO)
        assert runs and all(isinstance(r, Run) for r in runs), path


def test_paths_layout():
    p = RunPaths("results", "demo", "baseline-seed0", recipe="r1")
    assert str(p.metrics) == "results/evaluate/demo/baseline-seed0/r1/metrics.json"
    assert str(p.run_json) == "results/runs/demo/baseline-seed0/r1/run.json"
    assert str(p.work_dir("abcd1234")) == "results/train/demo/baseline-seed0/work-abcd1234"
