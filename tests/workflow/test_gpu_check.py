"""workflow/scripts/gpu_check.sh, the one command that proves the CUDA route on a GPU node, run
on its CPU path here (no build; bare imports in fresh processes): the script itself works and
logs each step's exit status."""
from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_gpu_check_cpu_path_runs_and_logs_each_step(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "workflow/scripts/gpu_check.sh"), "run", "--cpu",
                           "build", "imports"], cwd=REPO, capture_output=True, text=True,
                          timeout=900, env=dict(os.environ, OUT=str(tmp_path)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / "gpu_check.txt").read_text()
    assert "build: skipped on the CPU" in log
    for step in ("bare import mmcv.ops", "bare import torch, mmcv, mmcv._ext",
                 "import mmcv._ext after CUDA init", "train-style import"):
        assert f"gpu_check: {step}: exit 0" in log, log[-2000:]
    assert "done: exit 0" in log
    bad = subprocess.run(["bash", str(REPO / "workflow/scripts/gpu_check.sh"), "run", "--cpu",
                          "nonsense"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, OUT=str(tmp_path / "bad")))
    assert bad.returncode == 2
