"""MLflow ingest: the naming contract, one parent per ablation, re-ingesting updates in place."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.grid import RunPaths, expand_grid
from pipelines.ingest import collect_metrics, ingest

BASE = "configs/models/mask2former_r18_synthetic-128x128.py"


def write_results(root: Path, ablation: str = "abl", max_iters: int = 10, miou: float = 40.0):
    """A results tree as the workflow's stages write it (JSON files in their documented shape)."""
    config = {"name": ablation, "models": {"baseline": BASE, "pro_scale": BASE},
              "train": {"max_iters": max_iters},
              "grid": {"seed": [0], "variants": {"baseline": {}, "pro_scale": {
                  "schedule": ["3-3-3", "2-2-5"], "trc": [True], "lpe": [False]}}}}
    runs = expand_grid(config)
    results = root / "results"
    jsons = []
    for i, run in enumerate(runs):
        p = RunPaths(str(results), ablation, run.run_id)
        work = p.work_dir(run.recipe_hash)
        work.mkdir(parents=True)
        (work / "mask2former.py").write_text("model = dict()\n")
        files = {
            p.run_json: run.to_dict(),
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
        assert set(child.data.params) == {"variant", "schedule", "trc", "lpe",
                                          "cluster_fraction", "beta", "seed", "config",
                                          "max_iters"}
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
    metrics = collect_metrics(RunPaths(str(results), "abl", run_id))
    assert metrics["miou"] == 40.0 and metrics["gflops_encoder"] == pytest.approx(1.4)
    assert metrics["latency_ms"] == 100.0 and metrics["latency_ms_pixel_decoder"] == 50.0
    assert metrics["train_time_s"] == 12.5 and metrics["params"] == 21e6


def ingest_and_check(tmp_path, uri: str):
    from pipelines.tracking import open_client

    results, jsons = write_results(tmp_path)
    art = str(tmp_path / "artifacts")
    first = ingest("abl", str(results), jsons, uri, art)
    assert {v["action"] for v in first["runs"].values()} == {"created"}
    client = open_client(uri)
    before = check_store(client, "abl", 3)

    # same results again: the same runs, updated in place
    again = ingest("abl", str(results), jsons, uri, art)
    assert {v["action"] for v in again["runs"].values()} == {"updated"}
    assert again["parent_run_id"] == first["parent_run_id"]
    after = check_store(client, "abl", 3)
    assert {k: v.info.run_id for k, v in after.items()} == \
        {k: v.info.run_id for k, v in before.items()}

    # a new evaluation of the same runs: metrics move, still no duplicate
    results, jsons = write_results(tmp_path / "second", miou=55.0)
    ingest("abl", str(results), jsons, uri, art)
    after = check_store(client, "abl", 3)
    assert after["baseline-seed0"].data.metrics["miou"] == 55.0

    # params changed under the same id (more iterations): the child is written again, once
    results, jsons = write_results(tmp_path / "third", max_iters=20)
    third = ingest("abl", str(results), jsons, uri, art)
    assert {v["action"] for v in third["runs"].values()} == {"replaced"}
    after = check_store(client, "abl", 3)
    assert after["baseline-seed0"].data.params["max_iters"] == "20"


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
    proc = run_cli("report", "--ablation", "abl", "--results", str(results), "--out",
                   str(tmp_path / "report.md"), "--runs", *jsons)
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "report.md").read_text()
    assert "`pro_scale-s2-2-5-trc-seed0`" in text and "| 41.00 |" in text


def test_bad_tracking_uri_is_one_line(tmp_path):
    from tests.conftest import run_cli

    results, jsons = write_results(tmp_path)
    proc = run_cli("ingest", "--ablation", "abl", "--results", str(results), "--tracking-uri",
                   "nonsense", "--runs", *jsons)
    assert proc.returncode == 2 and "tracking URI 'nonsense'" in proc.stderr
    assert "Traceback" not in proc.stderr
