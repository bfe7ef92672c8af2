"""The ablation DAG on a real single-node SLURM (sbatch per job, a fake GPU through gres.conf).

Runs the two-run tiny grid twice: locally and with ``--profile slurm`` (resolved the way a user
gets it: workflow/scripts/install_profile.sh links the profile into the user's snakemake config
folder); the evaluation metrics must be equal. On SLURM each training is one sbatch job (its
training, evaluation and FLOPs count in one allocation: ablation key ``cluster.jobs``), and the
ablation-wide jobs are one each: the submissions are counted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, ablation_file
from tests.services.local_slurm import LocalSlurm, missing_reason
from tests.workflow.conftest import snakemake, tiny_ablation, write_config

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture
def slurm(tmp_path):
    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    cluster = LocalSlurm(tmp_path / "slurm")
    try:
        cluster.start()
    except RuntimeError as err:
        pytest.fail(f"SLURM is installed but did not start: {str(err)[-2000:]}")
    yield cluster
    cluster.stop()


def _metrics(root: Path, ablation: str) -> dict[str, dict]:
    out = {}
    for path in sorted((root / "results" / "evaluate" / ablation).glob("*/*/metrics.json")):
        data = json.loads(path.read_text())
        out[path.parent.parent.name] = {k: data[k] for k in ("miou", "aacc", "macc", "per_class_iou")}
    return out


def test_slurm_run_equals_local_run(slurm, tmp_path):
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "cluster"
    configs = {}
    for where in (local_dir, slurm_dir):
        where.mkdir()
        # the paired benchmark (one job for the whole ablation) on SLURM only: the metrics
        # compared below are the evaluation's
        config = tiny_ablation(where, name="tiny", benchmark=where == slurm_dir)
        if where == slurm_dir:  # the train jobs ask SLURM for the (fake) GPU
            config["resources"] = {"train": {"gpus": 1, "cpus": 1, "mem_mb": 3000,
                                             "runtime": 30}}
        configs[where] = write_config(where / "tiny.yaml", config)

    local = snakemake(local_dir, configs[local_dir])
    assert local.returncode == 0, local.stderr[-3000:]

    xdg = tmp_path / "xdg"
    env = dict(slurm.env, XDG_CONFIG_HOME=str(xdg))
    link = subprocess.run(["bash", "workflow/scripts/install_profile.sh"], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert link.returncode == 0, link.stderr
    assert (xdg / "snakemake" / "slurm" / "config.yaml").is_file()

    cluster = snakemake(slurm_dir, configs[slurm_dir], "--profile", "slurm",
                        "--slurm-init-seconds-before-status-checks", "5",
                        "--seconds-between-status-checks", "5", "--jobs", "4",
                        env=env, timeout=1500)
    assert cluster.returncode == 0, (cluster.stderr[-4000:] + "\n" + slurm.logs())
    # the jobs really went through sbatch: one per training (train, evaluate and count_flops
    # of its run in one allocation, which carried the GPU request) plus one per ablation-wide
    # stage that is not a local rule (the synthetic dataset, the paired benchmark), not one per
    # stage and run (that was 2 x 3 + 2 = 8)
    jobs = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%k|%b|%T"], env=slurm.env,
                          capture_output=True, text=True).stdout.splitlines()
    assert all(line.endswith("|COMPLETED") for line in jobs), jobs
    assert len(jobs) == 2 + 2, jobs
    grouped = [line for line in jobs if "gpu" in line.split("|")[1]]
    assert len(grouped) == 2, jobs
    # the executor's comment names the rule, or the group and its rules
    assert sorted(line.split("|")[0].split("_wildcards")[0] for line in jobs) == [
        "rule_benchmark_ablation", "rule_generate_dataset",
        "rule_run_count_flops_evaluate_model_train_model",
        "rule_run_count_flops_evaluate_model_train_model"], jobs
    flops = sorted((slurm_dir / "results" / "flops" / "tiny").glob("*/*/flops.json"))
    assert [p.parent.parent.name for p in flops] == sorted(_metrics(slurm_dir, "tiny")), flops
    assert ablation_file(slurm_dir / "results", "benchmark", "tiny", "paired.json").is_file()

    local_metrics, cluster_metrics = _metrics(local_dir, "tiny"), _metrics(slurm_dir, "tiny")
    assert set(local_metrics) == {"baseline-seed0", "pro_scale-s3-3-3-trc-lpe-seed0"}
    assert cluster_metrics == local_metrics
    assert ablation_file(slurm_dir / "results", "ingest", "tiny", "ingested.json").is_file()


def _train_jobs(slurm, state: str) -> list[str]:
    """Ids of the jobs in ``state`` whose rules include the training."""
    lines = subprocess.run(["squeue", "-h", "-t", state, "-o", "%i|%k"], env=slurm.env,
                           capture_output=True, text=True).stdout.splitlines()
    return [line.split("|")[0] for line in lines if "train_model" in line]


def test_requeued_training_resumes_from_its_checkpoint(slurm, tmp_path):
    """Preemption as a cluster does it: ``scontrol requeue`` of a running training job. SLURM
    runs the same job again in a new allocation; the training resumes from its last checkpoint
    (no step before it is trained again), Snakemake submits the job once (no second sbatch of
    a requeued job) and the DAG completes, the run ingested once."""
    from tests.workflow.test_chaos import invocations

    where = tmp_path / "requeue"
    where.mkdir()
    config = tiny_ablation(where, name="requeue", iters=40, benchmark=False)
    config["grid"]["variants"] = {"baseline": config["grid"]["variants"]["baseline"]}
    config["stages"]["flops"] = False
    config["train"]["cfg_options"] = [o.replace("checkpoint.interval=2", "checkpoint.interval=4")
                                      for o in config["train"]["cfg_options"]]
    config["resources"] = {"train": {"gpus": 1, "cpus": 1, "mem_mb": 3000, "runtime": 30}}
    configfile = write_config(where / "requeue.yaml", config)
    xdg = tmp_path / "xdg"
    env = dict(slurm.env, XDG_CONFIG_HOME=str(xdg))
    subprocess.run(["bash", "workflow/scripts/install_profile.sh"], cwd=REPO, env=env,
                   check=True, capture_output=True)
    log = open(tmp_path / "snakemake.log", "w")
    cmd = [str(Path(sys.executable).with_name("snakemake")), "--configfile", str(configfile),
           "--snakefile", str(REPO / "Snakefile"), "--directory", str(where), "--cores", "2",
           "--profile", "slurm", "--slurm-init-seconds-before-status-checks", "5",
           "--seconds-between-status-checks", "5", "--jobs", "2"]
    head = subprocess.Popen(cmd, env=dict(env, PATH=f"{Path(sys.executable).parent}"
                                               f"{os.pathsep}{env['PATH']}"),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 900
        requeued = None
        while requeued is None:
            assert head.poll() is None, (tmp_path / "snakemake.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no checkpoint to requeue from"
            saved = list((where / "results" / "train" / "requeue").glob("*/work-*/iter_*.pth"))
            running = _train_jobs(slurm, "RUNNING")
            if running and any(int(p.stem.split("_")[1]) >= 8 for p in saved):
                requeued = running[0]
                subprocess.run(["scontrol", "requeue", requeued], env=slurm.env, check=True)
            time.sleep(0.5)
        assert head.wait(timeout=1500) == 0, ((tmp_path / "snakemake.log").read_text()[-4000:]
                                              + "\n" + slurm.logs())
    finally:
        if head.poll() is None:
            head.kill()
        log.close()
    (work,) = (where / "results" / "train" / "requeue").glob("*/work-*")
    runs = [steps for steps in invocations(work) if steps]
    assert len(runs) >= 2, runs  # killed by the requeue, then resumed
    first, rest = runs[0], sorted(s for steps in runs[1:] for s in steps)
    resumed_at = min(rest)
    # the second start began after a checkpoint of the first (interval 4), and nothing before
    # that checkpoint was trained again
    assert resumed_at > 1 and (resumed_at - 1) % 4 == 0 and resumed_at - 1 <= max(first), runs
    assert max(rest) == 40
    # one sbatch of the training (the requeue ran the same job id again)
    jobs = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i|%k|%T"], env=slurm.env,
                          capture_output=True, text=True).stdout.splitlines()
    trains = [line for line in jobs if "train_model" in line]
    assert len(trains) == 1 and trains[0].startswith(requeued + "|"), jobs
    assert ablation_file(where / "results", "ingest", "requeue", "ingested.json").is_file()
