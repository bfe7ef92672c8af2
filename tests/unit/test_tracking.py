"""MLflow ingest: the naming contract, one parent per ablation, a child per run and recipe,
re-ingest idempotent; curves, times and provenance from a real tiny training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import contract
from pipelines.grid import RunPaths, expand_grid
from pipelines.grid.render import render_run, write_configs
from pipelines.grid.run import run_document
from pipelines.tracking.ingest import ingest
from pipelines.tracking.run_files import collect_metrics

BASE = "configs/models/mask2former_r18_synthetic-128x128.py"
PRO = "configs/models/mask2former_r18_proscale-333_synthetic-128x128.py"


def write_results(root: Path, ablation: str = "abl", max_iters: int = 10, miou: float = 40.0):
    """A results tree as the workflow's stages write it (JSON files in their documented shape)."""
    config = {"name": ablation, "train": {"max_iters": max_iters},
              "grid": {"seed": [0], "variants": {"baseline": {"config": BASE}, "pro_scale": {
                  "config": PRO, "axes": {"schedule": ["3-3-3", "2-2-5"], "trc": [True],
                                          "lpe": [False]}}}}}
    runs = expand_grid(config)
    results = root / "results"
    jsons = []
    for i, run in enumerate(runs):
        p = RunPaths.of(str(results), ablation, run)
        work = p.work_dir(run.recipe_hash)
        work.mkdir(parents=True)
        write_configs([(p.config, render_run(run))])  # as the workflow's onstart hook does
        files = {
            p.run_json: run_document(run, str(results), ablation),
            p.train_done: {"work_dir": str(work), "train_time_s": 12.5 + i, "iters": max_iters},
            p.metrics: {"miou": miou + i, "aacc": 80.0, "macc": 50.0, "units": "percent",
                        "per_class_iou": {"background": 90.0, "stripes": 10.0 + i,
                                          "dots": None}},
            p.flops: {"gflops": {"backbone": 0.59, "encoder": 1.4 - i / 10,
                                 "pixel_decoder": 2.1, "transformer_decoder": 0.13,
                                 "total": 2.9}, "params": {"total": 21e6}},
            p.benchmark: {"results": {"candidate": {"model": {"median_ms": 100.0 + i},
                                                    "pixel_decoder": {"median_ms": 50.0}}}},
        }
        for path, data in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data))
        p.logs.mkdir(parents=True, exist_ok=True)
        (p.logs / "train.log").write_text("training\n")
        jsons.append(str(p.run_json))
    return results, jsons


def check_store(client, ablation: str, n_runs: int):
    exp = client.get_experiment_by_name(ablation)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("pipelines.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("pipelines.role") == "run"]
    assert len(parents) == 1 and parents[0].info.run_name == ablation
    assert len(children) == n_runs
    for child in children:
        tags = child.data.tags
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert tags["pipelines.ablation"] == ablation
        assert tags["pipelines.run_id"] == child.info.run_name
        axes = json.loads(tags[contract.AXES_TAG])
        assert set(child.data.params) == set(contract.FIXED_PARAMS) | set(axes)
        assert "seed" in axes and tags[contract.RECIPE_TAG] == child.data.params["recipe"]
        for name in ("miou", "aacc", "macc", "gflops_backbone", "gflops_encoder",
                     "gflops_pixel_decoder", "gflops_transformer_decoder", "gflops_total",
                     "latency_ms", "latency_ms_pixel_decoder", "train_time_s",
                     "iou.background", "iou.stripes"):
            assert name in child.data.metrics, name
        assert "iou.dots" not in child.data.metrics  # NaN class: absent, not a fake number
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"metrics", "config.py", "logs"} <= artifacts
        metric_files = {a.path for a in client.list_artifacts(child.info.run_id, "metrics")}
        assert "metrics/metrics.json" in metric_files and "metrics/flops.json" in metric_files
    return {c.info.run_name: c for c in children}


def test_collect_metrics_reads_every_stage(tmp_path):
    results, jsons = write_results(tmp_path)
    run_id = json.loads(Path(jsons[0]).read_text())["run_id"]
    metrics = collect_metrics(RunPaths.of(str(results), "abl", json.loads(Path(jsons[0]).read_text())))
    assert metrics["miou"] == 40.0 and metrics["gflops_encoder"] == pytest.approx(1.4)
    assert metrics["latency_ms"] == 100.0 and metrics["latency_ms_pixel_decoder"] == 50.0
    assert metrics["train_time_s"] == 12.5 and metrics["params"] == 21e6


def ingest_and_check(tmp_path, uri: str):
    from pipelines.tracking.store import open_client

    results, jsons = write_results(tmp_path)
    art = str(tmp_path / "artifacts")
    first = ingest("abl", str(results), jsons, uri, art)
    assert {v["action"] for v in first["runs"].values()} == {"created"}
    client = open_client(uri)
    before = check_store(client, "abl", 3)

    # same results again: nothing to write
    again = ingest("abl", str(results), jsons, uri, art)
    assert {v["action"] for v in again["runs"].values()} == {"unchanged"}
    assert again["parent_run_id"] == first["parent_run_id"]
    after = check_store(client, "abl", 3)
    assert {k: v.info.run_id for k, v in after.items()} == \
        {k: v.info.run_id for k, v in before.items()}

    # a new evaluation of the same recipes: metrics move, the child is written again, once
    results, jsons = write_results(tmp_path / "second", miou=55.0)
    second = ingest("abl", str(results), jsons, uri, art)
    assert {v["action"] for v in second["runs"].values()} == {"replaced"}
    after = check_store(client, "abl", 3)
    assert after["baseline-seed0"].data.metrics["miou"] == 55.0

    # a new recipe under the same id (more iterations): a new child; the old one's history
    # stays, marked superseded, and the analysis reads only the new one
    results, jsons = write_results(tmp_path / "third", max_iters=20)
    third = ingest("abl", str(results), jsons, uri, art)
    assert {v["action"] for v in third["runs"].values()} == {"created"}
    after = check_store(client, "abl", 3)
    assert after["baseline-seed0"].data.params["max_iters"] == "20"
    exp = client.get_experiment_by_name("abl")
    assert exp.tags[contract.EXPERIMENT_KIND_TAG] == contract.EXPERIMENT_KIND
    old = client.search_runs([exp.experiment_id],
                             f"tags.`{contract.ROLE_TAG}` = '{contract.ROLE_SUPERSEDED}'")
    assert len(old) == 3 and all(r.data.params["max_iters"] == "10" for r in old)
    from pipelines.analysis.data import load_runs

    table = load_runs(uri, "abl")
    assert len(table) == 3 and set(table["max_iters"]) == {20}


def test_ingest_sqlite_is_idempotent_and_follows_the_contract(tmp_path):
    ingest_and_check(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_ingest_cli_and_report(tmp_path):
    from tests.conftest import run_cli

    results, jsons = write_results(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_cli("ingest", "--ablation", "abl", "--results", str(results), "--tracking-uri",
                   uri, "--artifact-location", str(tmp_path / "art"), "--out",
                   str(tmp_path / "ingested.json"), "--runs", *jsons)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((tmp_path / "ingested.json").read_text())["runs"]) == 3
    # the workflow passes thousands of runs as `--runs @FILE` (one path per line)
    manifest = tmp_path / "runs.txt"
    manifest.write_text("".join(f"{j}\n" for j in jsons))
    proc = run_cli("report", "--ablation", "abl", "--results", str(results), "--out",
                   str(tmp_path / "report.md"), "--runs", f"@{manifest}")
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "report.md").read_text()
    assert "`pro_scale-s2-2-5-trc-nolpe-seed0`" in text and "| 41.00 |" in text
    assert "schedule=2-2-5, trc=true, lpe=false" in text


def test_bad_tracking_uri_is_one_line(tmp_path):
    from tests.conftest import run_cli

    results, jsons = write_results(tmp_path)
    proc = run_cli("ingest", "--ablation", "abl", "--results", str(results), "--tracking-uri",
                   "nonsense", "--runs", *jsons)
    assert proc.returncode == 2 and "tracking URI 'nonsense'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_ingest_of_a_real_tiny_training_has_curves_times_and_provenance(tmp_path, synthetic_root):
    """The real producer: `python -m pipelines train` on the tiny model (4 iterations, 64x64),
    `evaluate`, then ingest: the child's curves have one point per logged iteration, its start
    and end are the training's, and it carries the commit and library versions."""
    from pipelines.tracking.store import open_client
    from tests.conftest import TINY_OPTIONS, run_cli

    config = {"name": "real", "train": {"max_iters": 4, "cfg_options": [
        o.replace("[64,64]", "(64,64)") for o in TINY_OPTIONS] + [
        "default_hooks.logger.interval=1", "default_hooks.checkpoint.interval=4"]},
        "data": {"root": str(synthetic_root)},
        "grid": {"seed": [0], "variants": {"baseline": {"config": BASE}}}}
    (run,) = expand_grid(config)
    results = tmp_path / "results"
    paths = RunPaths.of(str(results), "real", run)
    paths.run_json.parent.mkdir(parents=True)
    paths.run_json.write_text(json.dumps(run_document(run, str(results), "real")))
    write_configs([(paths.config, render_run(run))])  # as the workflow's onstart hook does

    def train_and_evaluate(config, done_file, metrics):
        work = Path(done_file).parent
        proc = run_cli("train", str(config), "--work-dir", str(work), "--data-root",
                       str(synthetic_root), "--done-file", str(done_file), "--no-progress")
        assert proc.returncode == 0, proc.stderr[-2000:]
        done = json.loads(Path(done_file).read_text())
        proc = run_cli("evaluate", str(config), done["checkpoint"], "--out", str(metrics),
                       "--data-root", str(synthetic_root))
        assert proc.returncode == 0, proc.stderr[-2000:]
        return done

    done = train_and_evaluate(paths.config, paths.train_done, paths.metrics)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    summary = ingest("real", str(results), [str(paths.run_json)], uri, str(tmp_path / "art"),
                     progress=False)
    client = open_client(uri)
    child = client.get_run(summary["runs"][run.run_id]["mlflow_run_id"])
    loss = client.get_metric_history(child.info.run_id, "train/loss")
    assert [m.step for m in loss] == [1, 2, 3, 4]
    assert "train/lr" in child.data.metrics and "val/mIoU" in child.data.metrics
    assert any(k.startswith("train/decode.loss_") for k in child.data.metrics)
    assert child.info.start_time == int(done["started_at"] * 1000)
    assert child.info.end_time == int(done["ended_at"] * 1000)
    assert child.info.end_time - child.info.start_time > 1000  # real seconds, not ingest time
    tags = child.data.tags
    assert len(tags[contract.GIT_COMMIT_TAG]) == 40 and tags[contract.GIT_DIRTY_TAG] in (
        "true", "false")
    for lib in contract.PROVENANCE_LIBRARIES:
        assert tags[contract.VERSION_TAG_PREFIX + lib]
    assert child.data.metrics["miou"] == json.loads(paths.metrics.read_text())["miou"]
    assert contract.CONFIG_ARTIFACT in {a.path for a in client.list_artifacts(child.info.run_id)}
    # MLflow holds what trained, byte for byte, and a reviewer re-runs the point from it alone
    downloaded = Path(client.download_artifacts(child.info.run_id, contract.CONFIG_ARTIFACT,
                                                str(tmp_path)))
    assert downloaded.read_bytes() == paths.config.read_bytes()
    again = tmp_path / "again"
    train_and_evaluate(downloaded, again / "train_done.json", again / "metrics.json")
    assert json.loads((again / "metrics.json").read_text())["miou"] == \
        json.loads(paths.metrics.read_text())["miou"]
    # the analysis reads what ingest wrote
    from pipelines.analysis.data import load_runs

    table = load_runs(uri, "real")
    assert list(table["run_id"]) == [run.run_id] and table["seed"].iloc[0] == 0
    assert table["miou"].iloc[0] == child.data.metrics["miou"]
    # re-ingest of unchanged files writes nothing
    again = ingest("real", str(results), [str(paths.run_json)], uri, None, progress=False)
    assert again["runs"][run.run_id]["action"] == "unchanged"


def test_a_changed_baseline_is_recorded_without_new_files(tmp_path):
    """The baseline role is the ablation's (grid.baseline), not the run's recipe: told a new
    baseline variant, a re-ingest re-tags runs whose files did not change (a run.json's own flag
    can be older than the ablation's choice), and changes nothing when told the same again."""
    from pipelines.tracking.store import open_client

    results, jsons = write_results(tmp_path)
    uri, art = f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "artifacts")

    def roles():
        exp = open_client(uri).get_experiment_by_name("abl")
        runs = open_client(uri).search_runs(
            [exp.experiment_id], f"tags.`{contract.ROLE_TAG}` = '{contract.ROLE_RUN}'")
        return {r.info.run_name: r.data.tags[contract.BASELINE_TAG] for r in runs}

    ingest("abl", str(results), jsons, uri, art, baseline_variant="baseline")
    assert roles() == {"baseline-seed0": "true", "pro_scale-s3-3-3-trc-nolpe-seed0": "false",
                       "pro_scale-s2-2-5-trc-nolpe-seed0": "false"}
    moved = ingest("abl", str(results), jsons, uri, art, baseline_variant="pro_scale")
    assert {v["action"] for v in moved["runs"].values()} == {"replaced"}
    assert roles() == {"baseline-seed0": "false", "pro_scale-s3-3-3-trc-nolpe-seed0": "true",
                       "pro_scale-s2-2-5-trc-nolpe-seed0": "true"}
    again = ingest("abl", str(results), jsons, uri, art, baseline_variant="pro_scale")
    assert {v["action"] for v in again["runs"].values()} == {"unchanged"}


def test_an_unknown_baseline_variant_is_one_line(tmp_path):
    from tests.conftest import run_cli

    results, jsons = write_results(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = run_cli("ingest", "--ablation", "abl", "--results", str(results), "--tracking-uri",
                   uri, "--baseline-variant", "nope", "--runs", *jsons)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "--baseline-variant 'nope' is no variant of these runs (baseline, pro_scale)")
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store opens

