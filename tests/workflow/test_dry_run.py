"""The DAG without training: dry runs, lint, and malformed ablation configs refused up front."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO
from tests.workflow.conftest import snakemake, tiny_ablation, write_config
from tests.workflow.fake_data import fake_dataset

ECO_M2F = str(REPO / "configs" / "models" / "mask2former_r18_ecom2f_synthetic-128x128.py")


def job_counts(stdout: str) -> dict[str, int]:
    """The `Job stats` table of a dry run -> {rule: count}."""
    counts: dict[str, int] = {}
    for rule, n in re.findall(r"^(\w+)\s+(\d+)$", stdout, flags=re.M):
        counts.setdefault(rule, int(n))
    return counts


def test_demo_dry_run(tmp_path):
    # demo.yaml (the Snakefile's default) in a fresh folder, so nothing is done yet; its model
    # paths are relative to the repository, so they are made absolute here
    assert 'configfile: "configs/ablations/demo.yaml"' in (REPO / "Snakefile").read_text()
    demo = yaml.safe_load((REPO / "configs" / "ablations" / "demo.yaml").read_text())
    for variant in demo["grid"]["variants"].values():
        variant["config"] = str(REPO / variant["config"])
    proc = snakemake(tmp_path, write_config(tmp_path / "demo.yaml", demo), "-n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = job_counts(proc.stdout)
    from pipelines.grid import expand_grid, validate_ablation

    runs = expand_grid(validate_ablation(demo))
    assert counts["train_model"] == len({r.train_id for r in runs})
    assert counts["evaluate_model"] == counts["count_flops"] == len(runs)
    assert counts["ingest_results"] == 1 and counts["write_report"] == 1
    # one cluster job per training (cluster.jobs: per_run): its evaluation and FLOPs count
    # join it in a Snakemake job group
    assert (proc.stdout + proc.stderr).count("Group job run") == counts["train_model"]
    assert {"baseline", "pro_scale"} <= {r.variant for r in runs}
    for run in runs:
        assert re.search(rf"results/train/demo/{re.escape(run.train_id)}/work-"
                         rf"{run.train_recipe}/train_done\.json", proc.stdout)
    # checkpoints are never outputs: a retry resumes instead of deleting them
    assert ".pth" not in proc.stdout


@pytest.mark.parametrize("ablation, n_train", [("ade20k", 51)])
def test_full_size_grids_dry_run(tmp_path, ablation, n_train):
    # the dataset is the user's (data.synthetic: null), given the way the README says, with
    # Snakemake's --config (which hands `null` over as text: read back as null by the schema
    # check); a stand-in with the folders the model configs read
    path = REPO / "configs" / "ablations" / f"{ablation}.yaml"
    configs = [v["config"] for v in yaml.safe_load(path.read_text())["grid"]["variants"].values()]
    data = fake_dataset(tmp_path / "dataset", *configs)
    proc = snakemake(tmp_path, path, "-n", "--config",
                     f"data={{root: {data}, synthetic: null}}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert job_counts(proc.stdout)["train_model"] == n_train
    assert "generate_dataset" not in proc.stdout  # the user's dataset, not generated
    assert "gres=gpu:1" in proc.stdout


def test_cityscapes_config_is_schema_valid():
    from pipelines.grid import load_ablation, validate_ablation

    config = validate_ablation(load_ablation(REPO / "configs" / "ablations" / "cityscapes.yaml"),
                               check_data=False)  # the dataset is the user's
    assert config["name"] == "cityscapes"


# The one lint we keep on purpose: rules name no conda environment, because `--sdm conda` cannot
# build mmcv 2.1.0 against the installed torch/CUDA (the comment in workflow/rules/common.smk).
ACCEPTED_LINT = "Specify a conda environment or container for each rule."


def test_lint_is_clean():
    proc = snakemake(None, None, "--lint")
    out = proc.stdout + proc.stderr
    lints = re.findall(r"^    \* (.+?):?$", out, flags=re.M)
    assert lints, out[-3000:]  # the lint ran and printed its findings
    assert set(lints) == {ACCEPTED_LINT}, sorted(set(lints))


def test_changing_one_axis_value_adds_only_its_runs(tmp_path):
    a = tiny_ablation(tmp_path)
    a["grid"]["variants"]["pro_scale"]["axes"]["schedule"] = ["3-3-3", "2-2-2"]
    proc = snakemake(tmp_path, write_config(tmp_path / "a.yaml", a), "-n")
    assert job_counts(proc.stdout)["train_model"] == 3
    assert "pro_scale-s2-2-2-trc-lpe-seed0" in proc.stdout


def json_runs(tmp_path, config) -> str:
    """``python -m pipelines grid --json`` of an ablation: run id -> the config keys it sets."""
    import json

    from tests.conftest import run_cli

    proc = run_cli("grid", str(write_config(tmp_path / "grid.yaml", config)), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.dumps({r["run_id"]: r["options"] for r in json.loads(proc.stdout)})


def test_a_config_key_is_an_axis_with_no_code_change(tmp_path):
    a = tiny_ablation(tmp_path)
    a["grid"]["variants"]["pro_scale"]["axes"]["model.decode_head.num_queries"] = [10, 20]
    proc = snakemake(tmp_path, write_config(tmp_path / "a.yaml", a), "-n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert job_counts(proc.stdout)["train_model"] == 3
    assert "pro_scale-s3-3-3-trc-lpe-num_queries10-seed0" in proc.stdout
    run = yaml.safe_load(json_runs(tmp_path, a))["pro_scale-s3-3-3-trc-lpe-num_queries10-seed0"]
    assert run["model.decode_head.num_queries"] == 10


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["grid"]["variants"].update(vit_magic={}),
     "ablation config key 'grid.variants.vit_magic': 'config' is a required property"),
    (lambda c: c["grid"]["variants"]["pro_scale"]["axes"].update(schedule=["3-3"]),
     "grid.variants.pro_scale.axes.schedule: '3-3' does not match"),
    (lambda c: c["grid"]["variants"]["pro_scale"]["axes"].update(schedule=["3-3-0"]),
     "grid.variants.pro_scale.axes.schedule: '3-3-0' does not match"),
    (lambda c: c["train"].update(max_iters="many"), "ablation config key 'train.max_iters'"),
    (lambda c: c["grid"].update(seed=["zero"]), "ablation config key 'grid.seed.0'"),
    (lambda c: c.update(colour="blue"), "ablation config key 'colour': unknown key"),
    (lambda c: c["grid"]["variants"]["pro_scale"]["axes"].update(beta=[0.1]),
     "grid.variants.pro_scale.axes.beta: unknown axis 'beta' for variant 'pro_scale'"),
    (lambda c: c["grid"]["variants"]["pro_scale"]["axes"].update(trc=["yes"]),
     "grid.variants.pro_scale.axes.trc: expected true or false, got 'yes'"),
    (lambda c: c["grid"]["variants"]["pro_scale"]["axes"].update(
        **{"model.decode_head.num_querys": [10]}),
     "grid.variants.pro_scale.axes.model.decode_head.num_querys: unknown config key"),
    # what used to pass `snakemake -n` and fail in a job
    (lambda c: c["grid"]["variants"]["pro_scale"]["axes"].update(
        **{"model.decode_head.num_queries": [-3]}),
     "grid.variants.pro_scale.axes.model.decode_head.num_queries: -3 out of range [1, inf)"),
    (lambda c: c["flops"].update(shape=[63, 64]),
     "ablation config key 'flops.shape.0': 63 is not a multiple of 32"),
    (lambda c: c["benchmark"].update(shape=[64, 65536]),
     "ablation config key 'benchmark.shape.1': 65536 is greater than the maximum of 8192"),
    (lambda c: c["data"].update(root="no-such-dataset", synthetic=None),
     "ablation config key 'data.root': dataset folder not found: no-such-dataset"),
    (lambda c: c["grid"]["variants"].update(eco={"config": ECO_M2F,
                                                 "axes": {"min_layers": [20]}}),
     "grid.variants.eco.axes.min_layers: 20 out of range: at most "
     "model.decode_head.pixel_decoder.encoder.num_layers = 6 for this model"),
])
def test_malformed_configs_are_refused_before_any_job(tmp_path, mutate, message):
    config = tiny_ablation(tmp_path)
    mutate(config)
    path = write_config(tmp_path / "bad.yaml", config)
    proc = snakemake(tmp_path, path, "--cores", "1")
    assert proc.returncode != 0
    assert f"invalid ablation config: {message}" in proc.stderr, proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


@pytest.mark.parametrize("uri, message", [
    ("foo://bar", "tracking URI 'foo://bar': expected sqlite:///FILE"),
    ("sqlite:///{root}/notes.db", "notes.db is not an SQLite database"),
])
def test_a_tracking_store_mlflow_cannot_open_is_refused_at_dry_run(tmp_path, uri, message):
    """The audit: these passed `snakemake -n`, then the real run stopped with a traceback from
    its start-up plan (which reads the store's history)."""
    (tmp_path / "notes.db").write_text("my notes, not a database\n")
    config = tiny_ablation(tmp_path)
    config["mlflow"]["tracking_uri"] = uri.format(root=tmp_path)
    proc = snakemake(tmp_path, write_config(tmp_path / "a.yaml", config), "-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    line = ("invalid ablation config: ablation config key 'mlflow.tracking_uri': "
            f"tracking URI '{config['mlflow']['tracking_uri']}'")
    assert line in out and message in out, out[-1500:]
    assert "Traceback" not in out
    assert (tmp_path / "notes.db").read_text() == "my notes, not a database\n"


def test_a_yaml_error_in_the_configfile_names_its_line_and_column(tmp_path):
    """The audit: Snakemake reads --configfile before the Snakefile runs and said only "Config
    file is not valid JSON or YAML" (`python -m pipelines grid` gave line and column)."""
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: x\ngrid:\n  variants: [a, b\n  seed: [0]\n")
    proc = snakemake(tmp_path, bad, "-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"Config file {bad}: line 4, column 7: expected ',' or ']'" in out, out[-1500:]
    assert "Traceback" not in out
    assert not (tmp_path / "results").exists()
    # the start-up hook that does it imports no `pipelines` (a Snakefile of another checkout,
    # as tests/workflow/test_data_identity.py runs, imports its own)
    probe = subprocess.run([sys.executable, "-c", "import sys; print('pipelines' in sys.modules)"],
                           cwd=tmp_path, capture_output=True, text=True)
    assert probe.stdout.strip() == "False", probe.stderr


def test_demo_config_is_valid_yaml_with_known_keys():
    config = yaml.safe_load((REPO / "configs" / "ablations" / "demo.yaml").read_text())
    assert set(config["grid"]["variants"]) == {"baseline", "pro_scale"}
    # fewer schedules, three seeds each (every setting gets an interval)
    assert len(config["grid"]["variants"]["pro_scale"]["axes"]["schedule"]) >= 2
    assert len(config["grid"]["seed"]) >= 3


@pytest.mark.parametrize("layout, message", [
    ({}, "dataset folder is empty: {root}"),
    ({"images/training/a.jpg": "x"}, "dataset folder missing: {root}/annotations/training"),
])
def test_a_users_dataset_is_checked_before_any_job(tmp_path, layout, message):
    """data.synthetic: null: the folder must exist, hold something, and have the folders the
    model configs read; `snakemake -n` says so in one line and writes nothing."""
    root = tmp_path / "mydata"
    root.mkdir()
    for rel, text in layout.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    config = tiny_ablation(tmp_path)
    config["data"] = {"root": str(root), "synthetic": None}
    proc = snakemake(tmp_path, write_config(tmp_path / "a.yaml", config), "-n")
    out = proc.stdout + proc.stderr  # a dry run prints its error on stdout
    assert proc.returncode != 0
    assert ("invalid ablation config: ablation config key 'data.root': "
            + message.format(root=root)) in out, out[-1500:]
    assert "Traceback" not in out
    assert not (tmp_path / "results").exists()
    # one line, not Snakemake's file and line of the rule file under it
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # with the folders the configs read (images with their labels), the same command plans
    shutil.rmtree(root)
    fake_dataset(root, config["grid"]["variants"]["baseline"]["config"])
    proc = snakemake(tmp_path, tmp_path / "a.yaml", "-n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "generate_dataset" not in proc.stdout
