"""A real search of tiny trainings as Snakemake jobs: SIGKILL the head (and its jobs) mid-
generation, start it again: the study finishes, no completed training is redone, no trial is
left RUNNING, and no setting over the GFLOPs budget was ever trained."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from pipelines import contract
from tests.conftest import REPO, TINY_OPTIONS

pytestmark = pytest.mark.slow

MODELS = REPO / "configs" / "models"


def _space(root):
    ablation = {
        "name": "tiny_search",
        "results": str(root / "results"),
        "data": {"root": str(root / "data" / "synthetic"),
                 "synthetic": {"train": 8, "val": 2, "size": 64, "seed": 3}},
        "train": {"max_iters": 6, "cfg_options": list(TINY_OPTIONS) + [
            "val_dataloader.dataset.pipeline.1.scale=(64,64)",
            "default_hooks.checkpoint.interval=2", "default_hooks.logger.interval=1"]},
        "grid": {"variants": {
            "baseline": {"config": str(MODELS / "mask2former_r18_synthetic-128x128.py")},
            "pro_scale": {"config": str(MODELS / "mask2former_r18_proscale-333_synthetic-128x128.py"),
                          "axes": {"schedule": ["1-1-1"]}}}},
        "stages": {"flops": False, "benchmark": False},
        "flops": {"shape": [64, 64]},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'results' / 'mlflow.db'}",
                   "artifact_location": str(root / "results" / "mlartifacts")},
        "resources": {"train": {"gpus": 0, "cpus": 1, "mem_mb": 3000, "runtime": 5},
                      "evaluate": {"gpus": 0, "cpus": 1, "mem_mb": 3000, "runtime": 5}},
        "retries": 0,
    }
    (root / "ablation.yaml").write_text(yaml.safe_dump(ablation))
    space = {"name": "tiny_search", "ablation": str(root / "ablation.yaml"),
             "budget": {"gflops_total": 0.65, "trials": 8, "trainings": 3}, "batch": 4,
             "sampler": {"name": "tpe", "seed": 1},
             "failed": {"retries": 0, "grace_minutes": 1},
             "space": {"variants": {"baseline": {}, "pro_scale": {
                 "schedule": ["1-1-1", "2-2-2"], "trc": [False], "lpe": [False]}}}}
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    return root / "space.yaml"


def _cmd(space, storage, mlflow=False):
    return [sys.executable, "-m", "pipelines", "search", str(space), "--storage", storage,
            "--cores", "1"] + ([] if mlflow else ["--no-mlflow"])


def _survivors(tmp_path) -> list[str]:
    """Command lines of live processes working on this test's folder (zombies excluded)."""
    from tests.conftest import process_alive

    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or not process_alive(proc.name):
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(tmp_path) in cmd and "pytest" not in cmd:
            out.append(cmd[:200])
    return out


def test_sigkill_head_then_resume(tmp_path):
    space = _space(tmp_path)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    train = tmp_path / "results" / "train" / "tiny_search"
    # the two feasible settings first, so that the first generation trains both
    study = optuna.create_study(study_name="tiny_search", storage=storage,
                                directions=["maximize", "minimize"])
    for schedule in ("1-1-1", "2-2-2"):
        study.enqueue_trial({"variant": "pro_scale", "pro_scale.schedule": schedule,
                             "pro_scale.trc": False, "pro_scale.lpe": False})
    log = open(tmp_path / "first.log", "w")
    head = subprocess.Popen(_cmd(space, storage), cwd=REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 900
    try:  # wait until one training is done and the next one has started
        while True:
            done = sorted(train.glob("*/work-*/train_done.json"))
            # mmengine writes last_checkpoint once a checkpoint file is complete
            started = {p.parent.parent.name for p in train.glob("*/work-*/last_checkpoint")}
            if len(done) == 1 and len(started) == 2:  # one trained, the other under way
                time.sleep(0.5)
                break
            assert head.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no second training after 900 s"
            time.sleep(0.5)
    finally:
        if head.poll() is None:
            os.kill(head.pid, signal.SIGKILL)  # the head alone: its children must follow it
        head.wait(timeout=60)
    # the generation's Snakemake and its training die with their head (its group's guard), so
    # the restarted search does not race them for the same folders; at once, not after the
    # training (SIGTERM to Snakemake alone let it finish its running jobs first)
    deadline = time.monotonic() + 20
    while _survivors(tmp_path) and time.monotonic() < deadline:
        time.sleep(1)
    left = _survivors(tmp_path)
    if left:
        os.killpg(head.pid, signal.SIGKILL)
    assert not left, left
    finished = {p.parent.parent.name: p.stat().st_mtime_ns for p in done}
    study = optuna.load_study(study_name="tiny_search", storage=storage)
    assert [t for t in study.trials if t.state.name == "RUNNING"], "killed too late"

    second = subprocess.run(_cmd(space, storage, mlflow=True), cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=1200)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    study = optuna.load_study(study_name="tiny_search", storage=storage)
    trials = study.trials
    assert not [t.number for t in trials if t.state.name in ("RUNNING", "WAITING")]
    for run_id, mtime in finished.items():  # a finished training is not redone
        assert next((train / run_id).glob("work-*/train_done.json")).stat().st_mtime_ns == mtime
    trained = {t.user_attrs["run_id"] for t in trials if t.user_attrs.get("status") == "trained"}
    statuses = {t.number: (t.state.name, t.user_attrs.get("status"), t.user_attrs.get("run_id"),
                           t.user_attrs.get("fail_reason")) for t in trials}
    logs = "".join(f"\n--- {p.name}\n" + p.read_text()[-4000:] for p in
                   sorted((tmp_path / "results" / "search" / "tiny_search").glob("*.log")))
    assert len(trained) == 2 and all(r.startswith(("pro_scale-s1-1-1", "pro_scale-s2-2-2"))
                                     for r in trained), (statuses, second.stderr[-3000:] + logs)
    for t in trials:  # nothing over budget ever trained
        if t.user_attrs.get("gflops_total", 0) > 0.65:
            assert t.user_attrs["status"] == "infeasible"
            assert not (train / t.user_attrs["run_id"]).exists()
    for run_id in trained:
        assert list((tmp_path / "results" / "evaluate" / "tiny_search" / run_id)
                    .glob("*/metrics.json"))

    # every trained trial is an MLflow run (role trial) under the search's parent run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny_search")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.data.tags.get("pipelines.role") == "search"]
    children = [r for r in runs if r.data.tags.get("pipelines.role") == "trial"]
    assert len(parent) == 1
    assert {r.data.tags["pipelines.run_id"] for r in children} == trained
    for r in children:
        assert r.data.tags["mlflow.parentRunId"] == parent[0].info.run_id
        assert r.data.tags[contract.TRIAL_NUMBER_TAG]
        assert r.data.metrics[contract.SEARCH_GFLOPS_BUDGET] > 0  # the figure's reference
        assert "miou" in r.data.metrics
