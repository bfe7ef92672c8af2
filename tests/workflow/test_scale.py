"""Scale work leaves a real ablation's results and MLflow store as they were.

A tiny ablation is run for real once; its MLflow ids and metrics are recorded; then the DAG is
rebuilt (nothing to do) and ingest is forced to run again over the same results: every run is
``unchanged``, with the same MLflow run id and the same metrics. The load benchmark runs end
to end at its smallest size.
"""
from __future__ import annotations

import json
import logging

import pytest

from tests.conftest import ablation_file
from tests.workflow.conftest import snakemake, tiny_ablation, write_config


def _store(uri: str, experiment: str) -> dict[str, dict]:
    """run id -> its MLflow id, status and every final metric, from the tidy table."""
    from pipelines.analysis.data import load_runs

    df = load_runs(uri, experiment)
    metrics = [c for c in df.columns if c.startswith(("miou", "aacc", "macc", "gflops_",
                                                      "latency_ms", "iou.", "train_time_s"))]
    return {row["run_id"]: {"mlflow_run_id": row["mlflow_run_id"], "status": row["status"],
                            **{m: row[m] for m in metrics if row[m] == row[m]}}
            for _, row in df.iterrows()}


@pytest.mark.slow
def test_reingest_and_rebuild_keep_run_ids_and_metrics(tmp_path):
    logging.getLogger("alembic").setLevel(logging.WARNING)
    config = tiny_ablation(tmp_path, benchmark=False)
    configfile = write_config(tmp_path / "tiny.yaml", config)
    proc = snakemake(tmp_path, configfile)
    assert proc.returncode == 0, proc.stderr[-3000:]
    uri = config["mlflow"]["tracking_uri"]
    ingested = ablation_file(tmp_path / "results", "ingest", "tiny", "ingested.json")
    first = json.loads(ingested.read_text())
    assert set(first["runs"]) == {"baseline-seed0", "pro_scale-s3-3-3-trc-lpe-seed0"}
    before = _store(uri, "tiny")
    assert set(before) == set(first["runs"])
    assert all("miou" in m and "gflops_total" in m for m in before.values())

    proc = snakemake(tmp_path, configfile, "-n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Nothing to be done" in proc.stdout + proc.stderr

    proc = snakemake(tmp_path, configfile, "--forcerun", "ingest_results")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(ingested.read_text())
    assert again["actions"] == {"unchanged": 2}
    assert ({r: v["mlflow_run_id"] for r, v in again["runs"].items()}
            == {r: v["mlflow_run_id"] for r, v in first["runs"].items()})
    assert _store(uri, "tiny") == before


@pytest.mark.slow
def test_load_benchmark_end_to_end(tmp_path, capsys):
    from pipelines.benchmarks import many_runs

    assert many_runs.main(["--sizes", "25", "--keep", str(tmp_path),
                           "--json", str(tmp_path / "t.json")]) == 0
    timings = json.loads((tmp_path / "t.json").read_text())["25"]
    assert timings["runs"] == 25
    assert timings["actions"] == {"ingest": {"created": 25}, "reingest": {"unchanged": 25}}
    # scontrol: timed where SLURM's client is installed
    assert set(many_runs.STAGES) - {"scontrol"} <= set(timings["wall"])
    assert (tmp_path / "loadtest-25" / "html" / "index.html").is_file()
    assert "| ingest |" in capsys.readouterr().out
