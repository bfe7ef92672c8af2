"""The DAG for real, at its smallest: two runs, a few iterations at 64x64 (a few minutes)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, run_file
from tests.workflow.conftest import SNAKEMAKE, snakemake, tiny_ablation, write_config
from tests.workflow.test_dry_run import job_counts

pytestmark = pytest.mark.slow


def test_tiny_grid_end_to_end(tiny):
    workdir, configfile, config = tiny
    first = snakemake(workdir, configfile)
    assert first.returncode == 0, first.stderr[-4000:]
    results = workdir / "results"
    ids = ["baseline-seed0", "pro_scale-s3-3-3-trc-lpe-seed0"]
    for run_id in ids:
        metrics = json.loads(run_file(results, "evaluate", "tiny", run_id, "metrics.json").read_text())
        assert 0 <= metrics["miou"] <= 100
        flops = json.loads(run_file(results, "flops", "tiny", run_id, "flops.json").read_text())
        assert flops["gflops"]["total"] > 0
        (done_file,) = (results / "train" / "tiny" / run_id).glob("work-*/train_done.json")
        done = json.loads(done_file.read_text())
        assert done["iters"] == done["max_iters"] == 4 and Path(done["checkpoint"]).is_file()
        # the run's rendered config, beside its run.json, is the file its training read
        rendered = run_file(results, "runs", "tiny", run_id, "config.py")
        assert rendered.parent == run_file(results, "runs", "tiny", run_id, "run.json").parent
        assert Path(done["config"]).resolve() == rendered.resolve()
        assert done["config_sha256"] == hashlib.sha256(rendered.read_bytes()).hexdigest()
        assert "cfg_options" not in done and "\n_base_ = " not in rendered.read_text()
    # PRO-SCALE's early stages see fewer tokens: a cheaper encoder than the baseline's
    f = {r: json.loads(run_file(results, "flops", "tiny", r, "flops.json").read_text())["gflops"]
         for r in ids}
    assert f[ids[1]]["encoder"] < f[ids[0]]["encoder"]

    # MLflow: one parent, the two runs as children, named by run id
    from pipelines.tracking.store import open_client

    client = open_client(config["mlflow"]["tracking_uri"])
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == sorted(ids + ["tiny"])
    for run in runs:  # MLflow keeps each run's rendered config byte for byte
        if run.info.run_name in ids:
            kept = client.download_artifacts(run.info.run_id, "config.py", str(workdir / "dl"))
            assert Path(kept).read_bytes() == run_file(results, "runs", "tiny",
                                                       run.info.run_name,
                                                       "config.py").read_bytes()
    report = (results / "report" / "tiny" / "report.md").read_text()
    assert all(f"`{r}`" in report for r in ids)

    # a second run right after does nothing
    second = snakemake(workdir, configfile)
    assert second.returncode == 0
    assert "Nothing to be done" in second.stdout + second.stderr

    # one axis value changed: only the new setting trains (then ingest and report again)
    config["grid"]["variants"]["pro_scale"]["axes"]["schedule"] = ["3-3-3", "2-2-2"]
    changed = snakemake(workdir, write_config(configfile, config), "-n")
    counts = job_counts(changed.stdout)
    assert counts["train_model"] == counts["evaluate_model"] == 1, changed.stdout[-3000:]
    trained = re.findall(r"output: (\S+/train_done\.json)", changed.stdout)
    assert [Path(t).parent.parent.name for t in trained] == ["pro_scale-s2-2-2-trc-lpe-seed0"]


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path):
    # 20 iterations, interrupted once its first checkpoint is complete (mmengine's
    # `last_checkpoint` written after the file): on a fast machine a 10-iteration training
    # finished before the Ctrl-C landed (CI, 2026-11-23)
    config = tiny_ablation(tmp_path, iters=20)
    config["grid"]["variants"] = {"baseline": config["grid"]["variants"]["baseline"]}
    config["stages"] = {"flops": False, "benchmark": False}
    configfile = write_config(tmp_path / "one.yaml", config)
    cmd = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--configfile",
           str(configfile), "--directory", str(tmp_path), "--cores", "1"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    train_dir = tmp_path / "results" / "train" / "tiny" / "baseline-seed0"
    deadline = time.time() + 600
    try:
        def checkpointed() -> bool:
            return any(Path(f.read_text().strip()).is_file()
                       for f in train_dir.glob("work-*/last_checkpoint") if f.read_text().strip())

        while time.time() < deadline and not checkpointed():
            assert proc.poll() is None, "snakemake ended before the first checkpoint"
            time.sleep(0.2)
        assert checkpointed(), "no checkpoint within 10 minutes"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C on the whole job tree
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:  # Snakemake still waiting on its job under load
            os.killpg(proc.pid, signal.SIGKILL)  # (a fresh-clone run here, 2026-11-23)
            proc.wait(60)
    assert not list(train_dir.glob("work-*/train_done.json"))

    again = snakemake(tmp_path, configfile, "--rerun-incomplete")
    assert again.returncode == 0, again.stderr[-3000:]
    (log_file,) = (tmp_path / "results" / "logs" / "tiny" / "baseline-seed0").glob("train-*.log")
    log = log_file.read_text()
    resumed = [line for line in log.splitlines() if "resumed epoch" in line]
    assert resumed, log[-2000:]
    assert "iter: 0" not in resumed[0]
    (done_file,) = train_dir.glob("work-*/train_done.json")
    done = json.loads(done_file.read_text())
    assert done["iters"] == 20
