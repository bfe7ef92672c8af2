"""Same seed, same machine, same numbers: two real trainings of the tiny model with one seed give
bit-identical weights and identical evaluation metrics; another seed gives other weights (so the
comparison can fail). CPU only: on a GPU the reports say what is not bit-reproducible
(``pipelines.analysis.settings.DETERMINISM``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, TINY_CONFIG, TINY_OPTIONS, run_cli

pytestmark = pytest.mark.slow

ITERS = 6


def _train(work, data_root, seed):
    cmd = [sys.executable, "-m", "pipelines", "train", str(TINY_CONFIG), "--work-dir", str(work),
           "--data-root", str(data_root), "--no-progress", "--cfg-options", *TINY_OPTIONS,
           "val_dataloader.dataset.pipeline.1.scale=(64,64)", f"randomness.seed={seed}",
           f"train_cfg.max_iters={ITERS}", f"train_cfg.val_interval={ITERS}",
           f"default_hooks.checkpoint.interval={ITERS}", "default_hooks.logger.interval=1"]
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    checkpoint = work / f"iter_{ITERS}.pth"
    out = work.parent / f"{work.name}-metrics.json"
    ev = run_cli("evaluate", str(TINY_CONFIG), str(checkpoint), "--out", str(out),
                 "--data-root", str(data_root), "--cfg-options",
                 "test_dataloader.dataset.pipeline.1.scale=(64,64)",
                 "model.data_preprocessor.size=(64,64)", env={"OMP_NUM_THREADS": "1"})
    assert ev.returncode == 0, ev.stderr[-3000:]
    return checkpoint, json.loads(out.read_text())


def _weights(checkpoint):
    import torch

    from pipelines import compat

    compat.apply()  # mmengine's checkpoints under weights_only=True (pipelines/compat.py)
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def test_same_seed_same_weights_and_metrics(tmp_path, synthetic_root):
    import torch

    first, m1 = _train(tmp_path / "a", synthetic_root, seed=7)
    second, m2 = _train(tmp_path / "b", synthetic_root, seed=7)
    other, m3 = _train(tmp_path / "c", synthetic_root, seed=8)
    w1, w2, w3 = _weights(first), _weights(second), _weights(other)
    assert w1.keys() == w2.keys()
    differ = [k for k in w1 if not torch.equal(w1[k], w2[k])]
    assert differ == [], f"same seed, different weights: {differ[:5]}"
    m1.pop("checkpoint"), m2.pop("checkpoint"), m3.pop("checkpoint")  # paths, not results
    assert m1 == m2  # every metric and per-class IoU, exactly
    assert any(not torch.equal(w1[k], w3[k]) for k in w1 if w1[k].is_floating_point())
    # the per-iteration losses logged by both trainings are the same numbers too
    logs = [sorted((tmp_path / d).glob("*/vis_data/scalars.json")) for d in ("a", "b")]
    losses = [[json.loads(line).get("loss") for line in files[-1].read_text().splitlines()]
              for files in logs]
    assert losses[0] == losses[1] and any(v is not None for v in losses[0])
