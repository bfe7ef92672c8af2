"""Searched runs are everywhere a grid run is: a real tiny grid through the
Snakefile, then a real search on the same ablation that trains one new setting. The trial's
MLflow run has every metric the grid's runs have; the search's last step brings the ablation's
analysis, figures and reports up to date (the trial counted, the hypervolume figure drawn), so
Snakemake then has nothing to do; a second search that trains nothing leaves them as they are."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import REPO
from tests.workflow.conftest import snakemake, tiny_ablation, write_config

pytestmark = pytest.mark.slow


def _search(space, storage):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([sys.executable, "-m", "pipelines", "search", str(space), "--storage",
                           storage, "--cores", "2"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1500)


def test_searched_runs_in_mlflow_figures_and_reports(tmp_path):
    config = tiny_ablation(tmp_path, name="tiny_sr")
    configfile = write_config(tmp_path / "tiny_sr.yaml", config)
    grid = snakemake(tmp_path, configfile)
    assert grid.returncode == 0, grid.stderr[-3000:]
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({
        "name": "tiny_sr_search", "ablation": str(configfile),
        "budget": {"gflops_total": 100.0, "trials": 6, "trainings": 1}, "batch": 1,
        "sampler": {"name": "tpe", "seed": 0}, "failed": {"retries": 0, "grace_minutes": 5},
        # 3-3-3 is the grid's (reused from disk), 1-1-1 is new: the search trains it
        "space": {"seed": [0], "variants": {"pro_scale": {
            "schedule": ["1-1-1", "3-3-3"], "trc": [True], "lpe": [True]}}}}))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    results = tmp_path / "results"
    report = results / "report" / "tiny_sr" / "report.md"
    page = results / "report" / "tiny_sr" / "html" / "index.html"
    figures = results / "figures" / "tiny_sr" / "figures.json"
    before = json.loads(figures.read_text())
    assert "search_hypervolume" in before["skipped"]  # no trial yet

    first = _search(space, storage)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "brought up to date (with the searched runs" in first.stdout, first.stdout[-2000:]
    assert f"tiny_sr_search: watch it with: optuna-dashboard {storage}" in first.stdout

    # MLflow: the trial run has every metric a grid run has
    from mlflow.tracking import MlflowClient

    client = MlflowClient(config["mlflow"]["tracking_uri"])
    experiment = client.get_experiment_by_name("tiny_sr")
    runs = client.search_runs([experiment.experiment_id])
    by_role: dict[str, list] = {}
    for r in runs:
        by_role.setdefault(r.data.tags.get("pipelines.role"), []).append(r)
    assert len(by_role["trial"]) == 1 and len(by_role["run"]) == 2
    trial_keys = set(by_role["trial"][0].data.metrics)
    for r in by_role["run"]:
        assert set(r.data.metrics) - trial_keys == set(), r.info.run_name

    # the analysis, figures and both reports count and draw it
    analysis = json.loads((results / "analysis" / "tiny_sr" / "analysis.json").read_text())
    assert (analysis["runs"], analysis["trials"]) == (2, 1)
    drawn = json.loads(figures.read_text())
    assert "search_hypervolume" in drawn["figures"], drawn["skipped"]
    assert drawn["runs"] == 3
    trial_id = by_role["trial"][0].data.tags["pipelines.run_id"]
    text = report.read_text()
    assert "## Search" in text and f"`{trial_id}`" in text and "1 search trials" in text
    html = page.read_text()
    assert "1 search trials" in html and "Skipped <code>search_hypervolume" not in html

    # up to date: Snakemake has nothing to do for the ablation's figures and reports
    dry = snakemake(tmp_path, configfile, "-n", "figures", "write_report")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout

    # the same study again: nothing new is trained, so the record and the reports stay as they are
    stamps = {p: p.stat().st_mtime_ns for p in (report, page, figures)}
    record = results / "search" / "tiny_sr_search" / "trials.json"
    record_stamp = record.stat().st_mtime_ns
    second = _search(space, storage)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "no change in the searched runs" in second.stdout, second.stdout[-2000:]
    assert record.stat().st_mtime_ns == record_stamp
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
