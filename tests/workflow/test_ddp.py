"""Multi-process training on mmengine's launcher: two CPU processes on gloo (the code path of
NCCL on GPUs) train, checkpoint, are SIGKILLed, resume from the last checkpoint and evaluate."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, TINY_CONFIG, TINY_OPTIONS, run_cli

pytestmark = pytest.mark.slow

MAX_ITERS = 8


def _cmd(work, data_root):
    return [sys.executable, "-m", "pipelines", "train", str(TINY_CONFIG), "--work-dir",
            str(work), "--data-root", str(data_root), "--no-progress", "--nproc", "2",
            "--done-file", str(work.parent / "train_done.json"), "--cfg-options",
            *TINY_OPTIONS, "val_dataloader.dataset.pipeline.1.scale=(64,64)",
            f"train_cfg.max_iters={MAX_ITERS}", f"train_cfg.val_interval={MAX_ITERS}",
            "default_hooks.checkpoint.interval=2", "default_hooks.logger.interval=1"]


def test_two_gloo_processes_train_are_killed_resume_and_evaluate(tmp_path, synthetic_root):
    work = tmp_path / "work"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(_cmd(work, synthetic_root), cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 600
        try:
            while not (work / "iter_4.pth").exists():
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint after 600 s"
                time.sleep(0.2)
            time.sleep(0.5)  # let mmengine finish writing `last_checkpoint`
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher's group; the ranks die with it
            proc.wait(timeout=60)
    written = sorted(p.name for p in work.glob("iter_*.pth"))
    time.sleep(5)  # no orphaned rank trains on
    assert sorted(p.name for p in work.glob("iter_*.pth")) == written
    first = log_path.read_text()
    assert "Distributed training: True" in first and "MMDistributedDataParallel" in first
    assert not (work / f"iter_{MAX_ITERS}.pth").exists(), "killed too late to test resuming"
    resumed_from = (work / "last_checkpoint").read_text().strip()

    second = subprocess.run(_cmd(work, synthetic_root), cwd=REPO, capture_output=True,
                            text=True, env=env, timeout=900)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert f"Auto resumed from the latest checkpoint {resumed_from}" in out
    first_iter = int(resumed_from.rsplit("iter_", 1)[1].split(".")[0])
    assert f"Iter(train) [{first_iter + 1}/{MAX_ITERS}]" in out
    assert "Iter(train) [1/" not in out
    done = json.loads((tmp_path / "train_done.json").read_text())
    assert done["processes"] == 2 and done["iters"] == MAX_ITERS
    assert done["checkpoint"].endswith(f"iter_{MAX_ITERS}.pth")

    metrics_path = tmp_path / "metrics.json"
    ev = run_cli("evaluate", str(TINY_CONFIG), "--train-done", str(tmp_path / "train_done.json"),
                 "--out", str(metrics_path), "--data-root", str(synthetic_root), "--cfg-options",
                 "test_dataloader.dataset.pipeline.1.scale=(64,64)",
                 "model.data_preprocessor.size=(64,64)")
    assert ev.returncode == 0, ev.stderr[-3000:]
    metrics = json.loads(metrics_path.read_text())
    # the single-process format, unchanged
    assert set(metrics) == {"miou", "aacc", "macc", "per_class_iou", "units", "config",
                            "checkpoint"}
    assert 0.0 <= metrics["miou"] <= 100.0 and len(metrics["per_class_iou"]) == 8
