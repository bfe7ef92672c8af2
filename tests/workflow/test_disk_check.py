"""The disk check before training (the Snakefile's onstart, pipelines/stages/disk.py) on real runs.

- A changed set of runs (a search generation, a run added or dropped) still trains a training
  that was left unfinished. With the check as a job that trainings depended on through
  ``ancient()``, Snakemake 9 dropped such a training from the DAG (snakemake/snakemake#4166):
  the search failed a trial whose head had been killed mid-training (CI, 2026-11-23).
- A results folder too small for the checkpoints: one line, a non-zero exit, and no job run.
"""
from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from pipelines.grid import RunPaths
from tests.conftest import REPO
from tests.workflow.conftest import PRO_SCALE, snakemake, tiny_ablation, write_config


def _points(root, schedules, results=None):
    config = tiny_ablation(root, iters=2)
    if results is not None:
        config["results"] = str(results)
    config["stages"] = {"flops": False, "benchmark": False}
    config["grid"] = {"variants": {"pro_scale": {"config": PRO_SCALE, "points": [
        {"seed": 0, "schedule": s, "trc": False, "lpe": False} for s in schedules]}}}
    return config


def _run(config, schedule):
    from pipelines.grid import expand_grid

    return next(r for r in expand_grid(config, repo=REPO)
                if r.run_id == f"pro_scale-s{schedule}-notrc-nolpe-seed0")


def _metrics(config, schedule):
    return str(RunPaths.of(config["results"], config["name"], _run(config, schedule)).metrics)


@pytest.mark.slow
def test_a_changed_run_set_still_trains_what_is_missing(tmp_path):
    both = _points(tmp_path, ["1-1-1", "2-2-2"])
    first = write_config(tmp_path / "both.yaml", both)
    # the runs of both are described, one of them trained and evaluated
    result = snakemake(tmp_path, first, _metrics(both, "2-2-2"),
                       str(RunPaths.of(both["results"], both["name"], _run(both, "1-1-1"))
                           .run_json))
    assert result.returncode == 0, result.stderr[-3000:]
    trained = next((tmp_path / "results" / "train").rglob("train_done.json"))
    mtime = trained.stat().st_mtime_ns

    one = write_config(tmp_path / "one.yaml", _points(tmp_path, ["1-1-1"]))
    result = snakemake(tmp_path, one, _metrics(both, "1-1-1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "disk: 1 trainings keep" in result.stdout + result.stderr
    metrics = json.loads(Path(_metrics(both, "1-1-1")).read_text())
    assert "miou" in metrics, metrics

    # a third setting added: only it trains; nothing finished is trained or evaluated again
    evaluated = os.stat(_metrics(both, "2-2-2")).st_mtime_ns
    all_three = _points(tmp_path, ["1-1-1", "2-2-2", "3-3-3"])
    three = write_config(tmp_path / "three.yaml", all_three)
    result = snakemake(tmp_path, three,
                       *(_metrics(all_three, s) for s in ("1-1-1", "2-2-2", "3-3-3")))
    assert result.returncode == 0, result.stderr[-3000:]
    assert trained.stat().st_mtime_ns == mtime
    assert os.stat(_metrics(both, "2-2-2")).st_mtime_ns == evaluated
    assert "miou" in json.loads(Path(_metrics(all_three, "3-3-3")).read_text())


def test_a_results_folder_too_small_stops_before_any_job(tmp_path):
    small = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    small.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(small)],
                           capture_output=True, text=True)
    if mount.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.strip()}")
    try:
        config = _points(tmp_path, ["1-1-1"], results=small / "results")
        configfile = write_config(tmp_path / "small.yaml", config)
        result = snakemake(tmp_path, configfile, _metrics(config, "1-1-1"))
        assert result.returncode != 0
        errors = [line for line in (result.stdout + result.stderr).splitlines()
                  if line.startswith("error:")]
        assert len(errors) == 1 and "free but the ablation needs about" in errors[0], errors
        assert "Traceback" not in result.stderr
        # no job ran (the rendered configs, written before the check reads them, are no job)
        assert not list((small / "results").rglob("run.json"))
        assert not (small / "results" / "train").exists()
        assert not (tmp_path / "data" / "synthetic" / "meta.json").exists()
    finally:
        subprocess.run(["umount", str(small)], check=False)
