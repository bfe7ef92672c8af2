"""Train for real, SIGKILL mid-run, run the same command again: it resumes; then evaluate."""
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


def _train_cmd(work_dir, data_root, *extra, max_iters=MAX_ITERS):
    return [sys.executable, "-m", "pipelines", "train", str(TINY_CONFIG), "--work-dir",
            str(work_dir), "--data-root", str(data_root), "--no-progress", "--cfg-options",
            *TINY_OPTIONS, "val_dataloader.dataset.pipeline.1.scale=(64,64)",
            f"train_cfg.max_iters={max_iters}", f"train_cfg.val_interval={max_iters}",
            "default_hooks.checkpoint.interval=2", "default_hooks.logger.interval=1", *extra]


def _start_and_kill(cmd, work, log_path, env, at="iter_4.pth"):
    """Start a training, SIGKILL it once ``work/at`` is written; returns the resume point."""
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    try:
        while not (work / at).exists():
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.2)
        time.sleep(0.5)  # let mmengine finish writing `last_checkpoint`
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()
    assert not (work / f"iter_{MAX_ITERS}.pth").exists(), "killed too late to test resuming"
    return (work / "last_checkpoint").read_text().strip()


def test_sigkill_then_resume_then_evaluate(tmp_path, synthetic_root):
    work = tmp_path / "work"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    resumed_from = _start_and_kill(_train_cmd(work, synthetic_root), work,
                                   tmp_path / "first.log", env)

    second = subprocess.run(_train_cmd(work, synthetic_root), cwd=REPO, capture_output=True,
                            text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    out = second.stdout + second.stderr
    assert f"Auto resumed from the latest checkpoint {resumed_from}" in out
    first_iter = int(resumed_from.rsplit("iter_", 1)[1].split(".")[0])
    assert first_iter >= 2
    assert f"Iter(train) [{first_iter + 1}/{MAX_ITERS}]" in out
    assert "Iter(train) [1/" not in out  # it did not start over
    assert (work / f"iter_{MAX_ITERS}.pth").exists()

    metrics_path = tmp_path / "metrics.json"
    ev = run_cli("evaluate", str(TINY_CONFIG), str(work / f"iter_{MAX_ITERS}.pth"), "--out",
                 str(metrics_path), "--data-root", str(synthetic_root), "--cfg-options",
                 "test_dataloader.dataset.pipeline.1.scale=(64,64)",
                 "model.data_preprocessor.size=(64,64)")
    assert ev.returncode == 0, ev.stderr[-3000:]
    metrics = json.loads(metrics_path.read_text())
    assert 0.0 <= metrics["miou"] <= 100.0 and 0.0 < metrics["aacc"] <= 100.0
    assert set(metrics["per_class_iou"]) == {
        "background", "stripes", "checker", "dots", "speckle", "large_blob", "small_blob",
        "small_stripes"}


def test_load_from_first_then_own_checkpoint_on_retry(tmp_path, synthetic_root):
    """Fine-tuning: ``load_from`` is the start the first time; a retry resumes from the work
    dir's own last checkpoint (mmengine alone would resume from ``load_from`` again)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    parent = tmp_path / "parent"
    first = subprocess.run(_train_cmd(parent, synthetic_root, max_iters=2), cwd=REPO,
                           capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    weights = parent / "iter_2.pth"
    assert weights.is_file()

    work = tmp_path / "finetune"
    cmd = _train_cmd(work, synthetic_root, f"load_from={weights}")
    resumed_from = _start_and_kill(cmd, work, tmp_path / "finetune-first.log", env)
    first_log = (tmp_path / "finetune-first.log").read_text()
    assert f"Load checkpoint from {weights}" in first_log  # the parent's weights ...
    assert "Iter(train) [1/" in first_log  # ... at iteration 0 (weights only, not its schedule)
    assert str(work) in resumed_from

    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env,
                            timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    out = second.stdout + second.stderr
    assert f"Auto resumed from the latest checkpoint {resumed_from}" in out
    assert f"Load checkpoint from {weights}" not in out
    assert str(parent) not in out.replace(str(weights), "")  # nothing else from the parent
    first_iter = int(resumed_from.rsplit("iter_", 1)[1].split(".")[0])
    assert f"Iter(train) [{first_iter + 1}/{MAX_ITERS}]" in out
    assert "Iter(train) [1/" not in out
    assert (work / f"iter_{MAX_ITERS}.pth").exists()
