"""The load benchmark's ablations and generated result files, and batched tracking writes."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pipelines import contract as c
from pipelines.benchmarks import many_runs as mr


@pytest.fixture(scope="module")
def loadtest(tmp_path_factory):
    """A 50-run load test ablation, expanded, with its generated result files."""
    from pipelines.grid import expand_grid, validate_ablation

    root = tmp_path_factory.mktemp("loadtest")
    config = mr.loadtest_ablation(50, root)
    runs = expand_grid(validate_ablation(config), repo=mr.REPO)
    mr.write_results(runs, Path(config["results"]), config["name"], max_iters=20,
                     log_interval=5)
    return root, config, runs


def test_ablation_is_a_marked_product_of_the_demo(loadtest):
    root, config, runs = loadtest
    assert config["name"] == "loadtest-50" and "LOAD TEST" in config["description"]
    assert Path(config["results"]).is_relative_to(root)
    assert len(runs) == 50 and len({r.run_id for r in runs}) == 50
    assert {r.variant for r in runs} == {"baseline", "pro_scale"}
    assert {r.settings["seed"] for r in runs} == {0, 1}
    assert len({r.train_id for r in runs}) == 50
    # sizes round up to whole seeds
    assert mr.settings_per_seed() == 25
    assert len(mr.loadtest_ablation(26, root)["grid"]["seed"]) == 2


def test_generated_files_read_like_the_real_stages(loadtest):
    """What ingest reads from the generated files: every contract metric, curves, provenance."""
    from pipelines.grid import RunPaths
    from pipelines.tracking.ingest import child_record

    root, config, runs = loadtest
    run = json.loads(RunPaths.of(config["results"], config["name"], runs[-1]).run_json
                     .read_text())
    record = child_record(config["results"], config["name"], run, root)
    for name in (c.MIOU, c.AACC, c.MACC, c.LATENCY_MS, c.LATENCY_MS_PIXEL_DECODER,
                 c.TRAIN_TIME_S):
        assert name in record.metrics, name
    # every part `flops --json` writes (0 for a part the model lacks), under the contract's names
    paths = RunPaths.of(config["results"], config["name"], run)
    assert set(json.loads(paths.flops.read_text())["gflops"]) == set(c.GFLOPS_PARTS)
    for name in c.GFLOPS:
        assert name in record.metrics, name
    name_of = dict(zip(c.GFLOPS_PARTS, c.GFLOPS))
    assert record.metrics[name_of["total"]] > record.metrics[name_of["pixel_decoder"]]
    assert len(record.curves["train/loss"]) == 4  # steps 5, 10, 15, 20
    assert [s for s, _, _ in record.curves["train/loss"]] == [5, 10, 15, 20]
    assert "val/mIoU" in record.curves
    assert record.tags[c.GIT_COMMIT_TAG] == "0" * 40
    assert record.start_ms and record.end_ms > record.start_ms
    subs = sorted(artifact[1] for artifact in record.artifacts)
    assert subs == ["", "logs", "metrics", "metrics", "metrics", "metrics", "metrics"]
    # the rendered config: the file beside run.json, logged under the artifact's name
    (config,) = [a for a in record.artifacts if a[1] == ""]
    assert config == (paths.config, "", c.CONFIG_ARTIFACT)
    assert json.loads(paths.train_done.read_text())["loadtest"] is True


def test_ingest_reingest_and_load(loadtest, tmp_path):
    """Five load-test runs into a fresh store, re-ingested for free, loaded as five rows."""
    from pipelines.analysis.data import load_runs
    from pipelines.grid import RunPaths
    from pipelines.tracking.ingest import ingest

    logging.getLogger("alembic").setLevel(logging.WARNING)
    root, config, runs = loadtest
    run_jsons = [str(RunPaths.of(config["results"], config["name"], r).run_json)
                 for r in runs[:5]]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = ingest(config["name"], config["results"], run_jsons, uri, str(tmp_path / "art"),
                   mr.LOADTEST_NOTE, progress=False)
    again = ingest(config["name"], config["results"], run_jsons, uri, str(tmp_path / "art"),
                   mr.LOADTEST_NOTE, progress=False)
    assert first["actions"] == {"created": 5} and again["actions"] == {"unchanged": 5}
    assert ({k: v["mlflow_run_id"] for k, v in again["runs"].items()}
            == {k: v["mlflow_run_id"] for k, v in first["runs"].items()})
    df = load_runs(uri, config["name"])
    assert sorted(df["run_id"]) == sorted(r.run_id for r in runs[:5])
    assert df["miou"].notna().all() and df["gflops_total"].notna().all()


def test_batches_respect_mlflow_limits():
    from pipelines.tracking.children import _batches
    from pipelines.tracking.store import BATCH, PARAM_BATCH

    params, metrics = list(range(130)), list(range(2500))
    chunks = list(_batches(params, metrics))
    assert all(len(p) <= PARAM_BATCH and len(p) + len(m) <= BATCH for p, m in chunks)
    assert [x for p, _ in chunks for x in p] == params
    assert [x for _, m in chunks for x in m] == metrics
    assert len(chunks) == 3  # 100 + 900, 30 + 970, 0 + 630
    # a typical run (a dozen params, a few hundred metric points) is one call
    assert len(list(_batches(range(12), range(400)))) == 1
    assert list(_batches([], [])) == []


def test_artifacts_in_one_call_keep_the_layout(tmp_path):
    """Files land in ``sub/<name>``, a folder's content in ``sub/``, in a real MLflow store."""
    from pipelines.tracking import children
    from pipelines.tracking import store as tracking

    logging.getLogger("alembic").setLevel(logging.WARNING)
    (tmp_path / "logs" / "sub").mkdir(parents=True)
    (tmp_path / "logs" / "train.log").write_text("t")
    (tmp_path / "logs" / "sub" / "x.log").write_text("x")
    (tmp_path / "metrics.json").write_text("{}")
    (tmp_path / "config.py").write_text("c")
    client = tracking.open_client(f"sqlite:///{tmp_path / 'm.db'}")
    exp = tracking.get_or_create_experiment(client, "layout", str(tmp_path / "art"))
    run = client.create_run(exp).info
    children.log_artifacts_once(client, run.run_id, [
        (tmp_path / "metrics.json", "metrics"), (tmp_path / "config.py", ""),
        (tmp_path / "logs", "logs"), (tmp_path / "missing.json", "metrics")])
    root = Path(client.download_artifacts(run.run_id, ""))
    files = {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}
    assert files == {"metrics/metrics.json": "{}", "config.py": "c", "logs/train.log": "t",
                     "logs/sub/x.log": "x"}
    assert not any(p.is_symlink() for p in root.rglob("*"))


def test_table_reports_per_run_cost_and_ratios():
    stages = ("grid", "dag", "write", *mr.STAGES[2:])
    results = {100: {"runs": 100, "wall": {s: 1.0 for s in stages}},
               1000: {"runs": 1000, "wall": {s: 10.0 for s in stages}}}
    results[1000]["wall"]["dag"] = 20.0
    text = mr.table(results)
    assert "| dag | 1.00 (10.00) | 20.00 (20.00) | 20.00 |" in text
    assert "| ingest | 1.00 (10.00) | 10.00 (10.00) | 10.00 |" in text


def test_reingest_fingerprint_is_the_records(loadtest, tmp_path):
    """The re-ingest shortcut compares the same fingerprint a full record carries."""
    from pipelines.grid import RunPaths
    from pipelines.tracking.ingest import child_record, run_fingerprint

    _, config, runs = loadtest
    for run in runs[:3]:
        data = json.loads(RunPaths.of(config["results"], config["name"], run).run_json
                          .read_text())
        record = child_record(config["results"], config["name"], data, tmp_path)
        assert run_fingerprint(config["results"], config["name"], data) == record.fingerprint
