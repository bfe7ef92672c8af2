"""Train for real, SIGKILL mid-run, run the same command again: it resumes, bit-identically to an
uninterrupted training (pipelines/stages/resume.py); then evaluate; a finished training keeps weights
only (pipelines/stages/disk.py)."""
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


def _train_cmd(work, data_root, *extra, max_iters=MAX_ITERS, val_interval=None):
    return [sys.executable, "-m", "pipelines", "train", str(TINY_CONFIG), "--work-dir",
            str(work), "--data-root", str(data_root), "--no-progress", "--cfg-options",
            *TINY_OPTIONS, "val_dataloader.dataset.pipeline.1.scale=(64,64)",
            f"train_cfg.max_iters={max_iters}",
            f"train_cfg.val_interval={val_interval or max_iters}",
            "default_hooks.checkpoint.interval=2", "default_hooks.logger.interval=1", *extra]


def _start_and_kill(cmd, work, log_path, env, at="iter_4.pth"):
    """Start a training, SIGKILL it once ``work/at`` is complete (``last_checkpoint`` names
    it: mmengine writes the marker after the file); returns the resume point."""
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    marker = work / "last_checkpoint"
    deadline = time.monotonic() + 900
    try:
        while not (marker.is_file() and marker.read_text().strip() == str(work / at)):
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"no {at} after 900 s"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()
    assert proc.returncode == -signal.SIGKILL, "it finished before the kill"
    return marker.read_text().strip()


def _logged(work) -> dict:
    """``(step, "train"|"val") -> [values]`` of every invocation's ``scalars.json`` in ``work``
    (timings dropped); a step logged by a killed and by a resumed invocation has two entries."""
    out: dict = {}
    for path in sorted(work.glob("*/vis_data/scalars.json")):
        for line in path.read_text().splitlines():
            values = json.loads(line)
            for timing in ("time", "data_time", "memory", "eta"):
                values.pop(timing, None)
            key = (values.pop("step"), "val" if "mIoU" in values else "train")
            out.setdefault(key, []).append(values)
    return out


def _checkpoint(path):
    import torch

    from pipelines import compat

    compat.apply()
    return torch.load(path, map_location="cpu", weights_only=True)


def test_killed_twice_and_resumed_equals_uninterrupted(tmp_path, synthetic_root):
    """SIGKILL after the checkpoint of iteration 2, resume, SIGKILL after the one of iteration 4
    (a validation iteration too), resume: the final weights, every logged loss and learning
    rate, and the validation metrics are bit-identical to an uninterrupted training."""
    import torch

    iters = 6
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    straight, broken = tmp_path / "straight", tmp_path / "broken"

    def cmd(work):
        return _train_cmd(work, synthetic_root, max_iters=iters, val_interval=2)

    done = subprocess.run(cmd(straight), cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    points = [_start_and_kill(cmd(broken), broken, tmp_path / f"kill-{at}.log", env, at=at)
              for at in ("iter_2.pth", "iter_4.pth")]
    assert points == [str(broken / "iter_2.pth"), str(broken / "iter_4.pth")]
    assert "restored the random states of iteration 2" in \
        (tmp_path / "kill-iter_4.pth.log").read_text()
    last = subprocess.run(cmd(broken), cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=1800)
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    assert "restored the random states of iteration 4" in last.stdout + last.stderr
    assert "validating again at iteration 4" in last.stdout + last.stderr

    want, got = _logged(straight), _logged(broken)
    assert sorted(want) == sorted(got)  # the validations the kills cut short were done again
    assert {k: v[0] for k, v in want.items()} == {k: v[0] for k, v in got.items()}
    assert all(v == [v[0]] * len(v) for v in got.values())  # killed and resumed agree too
    assert sorted(k for k in want if k[1] == "val") == [(2, "val"), (4, "val"), (6, "val")]

    a, b = (_checkpoint(w / f"iter_{iters}.pth")["state_dict"] for w in (straight, broken))
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert differ == [], f"resumed weights differ: {differ[:5]}"

    # done: the weights alone are kept (pipelines/stages/disk.py), under the last checkpoint's name
    assert sorted(p.name for p in broken.glob("*.pth")) == [f"iter_{iters}.pth"]
    final = _checkpoint(broken / f"iter_{iters}.pth")
    assert final["meta"]["final"] is True and final["meta"]["iter"] == iters
    assert not {"optimizer", "param_schedulers", "rng_state"} & set(final)
    # the same command again trains nothing; a longer schedule cannot continue without the
    # optimizer state: one line
    again = subprocess.run(cmd(broken), cwd=REPO, capture_output=True, text=True, env=env,
                           timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Iter(train)" not in again.stdout + again.stderr
    longer = subprocess.run(_train_cmd(broken, synthetic_root, max_iters=iters + 2), cwd=REPO,
                            capture_output=True, text=True, env=env, timeout=900)
    assert longer.returncode == 2, longer.stdout[-3000:] + longer.stderr[-3000:]
    assert f"finished at iteration {iters}" in longer.stderr
    assert len(longer.stderr.strip().splitlines()) == 1


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
