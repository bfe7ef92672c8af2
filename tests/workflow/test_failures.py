"""Failures stay local, in a results folder whose path has a space: one run of a tiny grid
diverges (lr=1e30); the others are trained, evaluated, timed (one paired benchmark job),
ingested, reported and drawn; the failed run is listed with its reason; after a fix, ingest
replaces it."""
from __future__ import annotations

import json

import pytest

from tests.conftest import ablation_file, run_file
from tests.workflow.conftest import BASELINE, snakemake, tiny_ablation, write_config

pytestmark = pytest.mark.slow

GOOD = ["baseline-seed0", "pro_scale-s3-3-3-trc-lpe-seed0"]
BROKEN = "diverge-seed0"


def test_one_failed_run_stays_local_then_a_fix_replaces_it(tmp_path):
    root = tmp_path / "my results"  # a space in every path the rules see
    config = tiny_ablation(root)
    config["grid"]["variants"]["diverge"] = {
        "config": BASELINE, "cfg_options": ["optim_wrapper.optimizer.lr=1e30"]}
    config["retries"] = 1  # the first attempt fails for real, the last records the failure
    configfile = write_config(tmp_path / "tiny.yaml", config)
    first = snakemake(tmp_path, configfile, "--keep-going")
    # the run ends saying so: exit status 3 and one line per failed run, after the rest was
    # ingested and reported (below)
    assert first.returncode == 3, first.stderr[-4000:]
    assert "1 of 3 runs failed" in first.stderr
    assert f"  {BROKEN}: train: " in first.stderr and "Traceback" not in first.stderr[-600:]
    results = root / "results"

    done = json.loads(next((results / "train" / "tiny" / BROKEN).glob("work-*/train_done.json"))
                      .read_text())
    assert done["status"] == "failed" and "diverged" in done["reason"], done["reason"]
    for run_id in GOOD:
        metrics = json.loads(run_file(results, "evaluate", "tiny", run_id, "metrics.json")
                             .read_text())
        assert 0 <= metrics["miou"] <= 100

    # one paired benchmark job: every run's model (the diverged one too: it builds) in one
    # process, with the host and device named
    paired = json.loads(ablation_file(results, "benchmark", "tiny", "paired.json").read_text())
    assert paired["paired"] and paired["host"]["host"] and paired["host"]["cpu"]
    assert paired["host"]["versions"]["mmcv"] == "2.1.0"
    assert set(paired["results"]) == set(GOOD + [BROKEN])
    assert paired["baseline_run"] == "baseline-seed0"
    own = json.loads(run_file(results, "benchmark", "tiny", GOOD[1], "benchmark.json")
                     .read_text())
    assert own["ratios"]["model"] > 0 and own["host"] == paired["host"]

    from pipelines import contract as c
    from pipelines.tracking.store import open_client

    client = open_client(config["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name("tiny")
    children = {r.info.run_name: r for r in client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{c.ROLE_TAG}` = 'run'")}
    assert set(children) == set(GOOD + [BROKEN])
    assert children[BROKEN].info.status == "FAILED"
    assert "diverged" in children[BROKEN].data.tags[c.FAILURE_TAG]
    assert c.MIOU not in children[BROKEN].data.metrics
    for run_id in GOOD:
        assert children[run_id].info.status == "FINISHED"
        assert c.MIOU in children[run_id].data.metrics
        assert children[run_id].data.metrics[c.LATENCY_MS] > 0

    report = (results / "report" / "tiny" / "report.md").read_text()
    failed_section = report.split("## Failed runs", 1)[1]
    assert f"`{BROKEN}`" in failed_section and "diverged" in failed_section
    assert all(f"`{r}`" in report.split("## Failed runs")[0] for r in GOOD)
    figures = results / "figures" / "tiny"
    assert (figures / "figures.json").is_file()
    points = (figures / "points.csv").read_text()
    assert all(r in points for r in GOOD)
    assert (results / "report" / "tiny" / "html" / "index.html").is_file()

    # the fix: a sane learning rate is a new recipe; it trains, and ingest replaces the failure
    config["grid"]["variants"]["diverge"]["cfg_options"] = ["optim_wrapper.optimizer.lr=1e-4"]
    fixed = snakemake(tmp_path, write_config(configfile, config), "--keep-going")
    assert fixed.returncode == 0, fixed.stderr[-4000:]
    children = {r.info.run_name: r for r in client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{c.ROLE_TAG}` = 'run'")}
    assert children[BROKEN].info.status == "FINISHED"
    assert c.FAILURE_TAG not in children[BROKEN].data.tags
    assert c.MIOU in children[BROKEN].data.metrics
    report = (results / "report" / "tiny" / "report.md").read_text()
    assert "## Failed runs" not in report
