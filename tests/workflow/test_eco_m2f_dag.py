"""ECO-M2F through the DAG (configs/ablations/eco_m2f_demo.yaml): one training with exits, one
derived table, a gate and a gated evaluation per beta; a new or changed beta reruns only those.
"""
from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.conftest import REPO, TINY_OPTIONS, run_file
from tests.workflow.conftest import snakemake, write_config
from tests.workflow.test_dry_run import job_counts

ABLATION = "eco_m2f_demo"


def demo_config(root, betas=None, iters: int = 2, variants=("eco_m2f",)) -> dict:
    """The demo ablation at its smallest, results under ``root`` (by default its plain ECO-M2F
    variant only; ``variants=None`` keeps every variant)."""
    config = yaml.safe_load((REPO / "configs/ablations/eco_m2f_demo.yaml").read_text())
    if variants is not None:
        config["grid"]["variants"] = {k: v for k, v in config["grid"]["variants"].items()
                                      if k in variants}
    for variant in config["grid"]["variants"].values():
        variant["config"] = str(REPO / variant["config"])
        if betas is not None:
            variant["axes"]["beta"] = list(betas)
    config.update(
        results=str(root / "results"),
        data={"root": str(root / "data" / "synthetic"),
              "synthetic": {"train": 8, "val": 4, "size": 64, "seed": 3}},
        train={"max_iters": iters, "cfg_options": [o.replace("[64,64]", "(64,64)")
                                                   for o in TINY_OPTIONS] + [
            "default_hooks.checkpoint.interval=2", "default_hooks.logger.interval=1"]},
        mlflow={"tracking_uri": f"sqlite:///{root / 'results' / 'mlflow.db'}",
                "artifact_location": str(root / "results" / "mlartifacts")},
        retries=0)
    return config


def test_the_demo_composes_with_pro_scale(tmp_path):
    """The demo's PRO-SCALE + exits row: its own training and derive, a gate per beta."""
    config = demo_config(tmp_path, variants=None)
    assert sorted(config["grid"]["variants"]) == ["eco_m2f", "eco_m2f_proscale"]
    proc = snakemake(tmp_path, write_config(tmp_path / "a.yaml", config), "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = job_counts(proc.stdout)
    assert counts["train_model"] == 2 and counts["derive_exit_quality"] == 2, counts
    assert counts["train_gate"] == 4 and counts["evaluate_gated"] == 4, counts
    assert re.search(rf"results/derive/{ABLATION}/eco_m2f_proscale-seed0/[0-9a-f]+/derive\.json",
                     proc.stdout)


def test_dry_run_shares_one_training_and_one_derive(tmp_path):
    proc = snakemake(tmp_path, write_config(tmp_path / "a.yaml", demo_config(tmp_path)), "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = job_counts(proc.stdout)
    assert counts["train_model"] == 1 and counts["derive_exit_quality"] == 1
    assert counts["train_gate"] == 2 and counts["evaluate_gated"] == 2
    # a gated run's metrics and flops come from the gated evaluation only
    assert "evaluate_model" not in counts and "count_flops" not in counts
    assert re.search(rf"results/derive/{ABLATION}/eco_m2f-seed0/[0-9a-f]+/derive\.json", proc.stdout)


def test_negative_beta_is_refused_before_any_job(tmp_path):
    config = demo_config(tmp_path, betas=[0.0, -0.01])
    proc = snakemake(tmp_path, write_config(tmp_path / "a.yaml", config), "-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "invalid ablation config: grid.variants.eco_m2f.axes.beta: -0.01 out of range" in out
    assert "Job stats" not in out and "Traceback" not in out
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_eco_m2f_demo_end_to_end(tmp_path):
    from mlflow import MlflowClient

    from pipelines import contract as c
    from pipelines.analysis.data import exit_histogram, load_runs

    # beta 1.0 outweighs any quality gain (q in [0, 1], exits one layer apart): every label is
    # the first exit, so its gate can only exit as early as beta 0's or earlier
    betas = (0.0, 1.0)
    config = demo_config(tmp_path, betas)
    configfile = write_config(tmp_path / "a.yaml", config)
    done = snakemake(tmp_path, configfile)
    assert done.returncode == 0, done.stderr[-4000:]

    results = tmp_path / "results"
    runs = [f"eco_m2f-beta{b}-seed0" for b in betas]
    metrics = {r: json.loads(run_file(results, "evaluate", ABLATION, r, "metrics.json").read_text())
               for r in runs}
    flops = {r: json.loads(run_file(results, "flops", ABLATION, r, "flops.json").read_text())
             for r in runs}
    low, high = (metrics[r] for r in runs)
    assert high["mean_exit"] <= low["mean_exit"]
    assert flops[runs[1]]["gflops"]["total"] <= flops[runs[0]]["gflops"]["total"]
    for r in runs:
        m = metrics[r]
        assert 0 <= m["miou"] <= 100 and sum(m["exit_histogram"].values()) == 4
        assert [row["exit"] for row in m["ladder"]] == [2, 3, 4, 5, 6]
        # the flops JSON (what ingest reads) is the gated mean per image
        assert flops[r]["gflops"]["total"] == pytest.approx(m["gflops_total"])
        assert len(flops[r]["per_image"]) == 4
    assert high["oracle"]["mean_exit"] == 2  # beta 1: the oracle takes the first exit
    # one training and one derived table for both betas
    assert len(list((results / "train" / ABLATION).glob("*/work-*/train_done.json"))) == 1
    assert len(list((results / "derive" / ABLATION).glob("*/*/quality.parquet"))) == 1

    # the report shows the histogram, the ladder and the oracle of each gated run
    report = (results / "report" / ABLATION / "report.md").read_text()
    for r in runs:
        assert f"`{r}`" in report
    assert "exit histogram" in report and "ladder" in report and "oracle" in report

    # MLflow: gated metrics, ladder and oracle as metrics, the histogram as an artifact
    uri = config["mlflow"]["tracking_uri"]
    table = load_runs(uri, ABLATION)
    assert sorted(table["run_id"]) == runs
    for r in runs:
        row = table[table["run_id"] == r].iloc[0]
        assert row[c.MEAN_EXIT] == pytest.approx(metrics[r]["mean_exit"])
        assert row[c.GFLOPS[-1]] == pytest.approx(metrics[r]["gflops_total"])
        assert row[c.LADDER_METRIC.format(exit=6, metric=c.MIOU)] == pytest.approx(
            metrics[r]["ladder"][-1]["miou"])
        assert row[c.ORACLE_METRIC.format(metric=c.MEAN_EXIT)] == pytest.approx(
            metrics[r]["oracle"]["mean_exit"])
        assert exit_histogram(row) == {int(k): v for k, v in
                                       metrics[r]["exit_histogram"].items()}
    client = MlflowClient(uri)
    child = client.get_run(table["mlflow_run_id"].iloc[0])
    assert c.LADDER_METRIC.format(exit=2, metric="gflops_total") in child.data.metrics
    figures = json.loads((results / "figures" / ABLATION / "figures.json").read_text())
    assert "eco_m2f_tradeoff" in json.dumps(figures)

    # adding a beta, or changing one, reruns only its gate and gated evaluation
    for new in ((0.0, 0.5, 1.0), (0.0, 0.9)):
        config = demo_config(tmp_path, new)
        proc = snakemake(tmp_path, write_config(tmp_path / "b.yaml", config), "-n")
        assert proc.returncode == 0, proc.stderr[-3000:]
        counts = job_counts(proc.stdout)
        assert counts["train_gate"] == 1 and counts["evaluate_gated"] == 1, counts
        assert "train_model" not in counts and "derive_exit_quality" not in counts, counts
