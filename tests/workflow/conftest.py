"""Helpers for running the Snakefile on small ablation configs in temporary folders."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, TINY_OPTIONS

SNAKEMAKE = Path(sys.executable).with_name("snakemake")
BASELINE = str(REPO / "configs" / "models" / "mask2former_r18_synthetic-128x128.py")
PRO_SCALE = str(REPO / "configs" / "models" / "mask2former_r18_proscale-333_synthetic-128x128.py")


def tiny_ablation(root: Path, name: str = "tiny", iters: int = 4, schedules=("3-3-3",),
                  benchmark: bool = True) -> dict:
    """Two runs (baseline + one PRO-SCALE schedule), a few iterations at 64x64."""
    return {
        "name": name,
        "results": str(root / "results"),
        "data": {"root": str(root / "data" / "synthetic"),
                 "synthetic": {"train": 8, "val": 2, "size": 64, "seed": 3}},
        "train": {"max_iters": iters,
                  # mmseg transforms want tuples: (64,64), not TINY_OPTIONS' [64,64]
                  "cfg_options": [o.replace("[64,64]", "(64,64)")
                                  for o in TINY_OPTIONS] + [
                      "default_hooks.checkpoint.interval=2", "default_hooks.logger.interval=1"]},
        "grid": {"seed": [0], "variants": {
            "baseline": {"config": BASELINE},
            "pro_scale": {"config": PRO_SCALE, "axes": {
                "schedule": list(schedules), "trc": [True], "lpe": [True]}}}},
        "stages": {"flops": True, "benchmark": benchmark},
        "flops": {"shape": [64, 64]},
        "benchmark": {"shape": [64, 64], "device": "cpu", "repeats": 1, "warmup": 0},
        "mlflow": {"tracking_uri": f"sqlite:///{root / 'results' / 'mlflow.db'}",
                   "artifact_location": str(root / "results" / "mlartifacts")},
        "retries": 0,
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path | None, configfile: Path | None, *args: str, timeout: float = 1200,
              env: dict | None = None):
    """Run the repo's Snakefile with `workdir` as working directory (its own .snakemake)."""
    cmd = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--cores", "2", *args]
    if workdir is not None:  # None: the repository itself (lint)
        cmd[3:3] = ["--directory", str(workdir)]
    if configfile is not None:
        cmd[1:1] = ["--configfile", str(configfile)]
    base = env if env is not None else os.environ
    env = dict(base, PATH=f"{Path(sys.executable).parent}{os.pathsep}"
               f"{base.get('PATH', '')}", PYTHONWARNINGS="ignore")
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture
def tiny(tmp_path):
    """(workdir, configfile, config) of the two-run tiny ablation."""
    config = tiny_ablation(tmp_path)
    return tmp_path, write_config(tmp_path / "tiny.yaml", config), config
