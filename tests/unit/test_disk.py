"""Bounded disk: checkpoint retention, the estimate from parameter counts, the refusal."""
from __future__ import annotations

import json

from mmengine.config import Config

from pipelines.stages.disk import apply_retention, checkpoints_kept, running_bytes, training_bytes
from tests.conftest import TINY_CONFIG, run_cli


def _cfg(**hook):
    return Config(dict(default_hooks=dict(checkpoint=dict(type="CheckpointHook", **hook)),
                       train_cfg=dict(max_iters=160000),
                       optim_wrapper=dict(optimizer=dict(type="AdamW", lr=1e-4))))


def test_unbounded_retention_keeps_the_last_two_and_the_best():
    cfg = _cfg(interval=5000, save_best="mIoU")  # MMSeg's R50 recipe: 32 checkpoints a run
    assert apply_retention(cfg) == 2
    assert cfg.default_hooks.checkpoint.max_keep_ckpts == 2
    assert checkpoints_kept(cfg) == (2, 1)
    # done: the final weights + the best (weights only)
    assert training_bytes(1000, cfg) == 1000 * 4 * 2
    # running: 2 resume checkpoints (weights + Adam's 2 moments) + the best + the final written
    assert running_bytes(1000, cfg) == 2 * 1000 * 4 * 3 + 1000 * 4 * 2
    # one would leave none while mmengine writes the next (it deletes the oldest first)
    assert apply_retention(_cfg(interval=50, max_keep_ckpts=1)) == 2


def test_a_bound_the_config_sets_is_kept():
    cfg = _cfg(interval=50, max_keep_ckpts=2)
    assert apply_retention(cfg) == 2 and checkpoints_kept(cfg) == (2, 0)
    cfg.train_cfg.max_iters = 50  # only one checkpoint is ever written
    assert checkpoints_kept(cfg) == (1, 0)


def test_estimate_from_the_real_model_and_refusal_in_one_line(tmp_path):
    import pipelines.registry  # noqa: F401
    from pipelines.stages.disk import estimate

    config = tmp_path / "config.py"  # the run's config file (run.json's config_file)
    config.write_text(f"_base_ = [{str(TINY_CONFIG)!r}]\ntrain_cfg = dict(max_iters=100)\n")
    run = {"run_id": "baseline-seed0", "train_id": "baseline-seed0", "config": str(TINY_CONFIG),
           "config_file": str(config)}
    doc = estimate([run, {**run, "run_id": "baseline-seed0-again"}])  # one training
    params = doc["trainings"]["baseline-seed0"]["params"]
    assert list(doc["trainings"]) == ["baseline-seed0"]
    assert params > 1_000_000  # the real tiny Mask2Former, counted
    # kept when done: its weights; while running also max_keep_ckpts=2 resume checkpoints
    assert doc["trainings"]["baseline-seed0"]["bytes"] == params * 4
    assert doc["total_bytes"] == params * 4 + 2 * params * 4 * 3

    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps(run))
    refused = run_cli("disk", "--runs", str(run_json), "--results", str(tmp_path / "results"),
                      "--margin", "1e9")
    assert refused.returncode == 2
    assert "disk: 1 trainings keep about" in refused.stdout  # printed before the refusal
    assert refused.stderr.startswith("error: the results folder") and \
        len(refused.stderr.strip().splitlines()) == 1

    # the onstart hook's form: one file holding the list of runs; the estimate is written
    listed = tmp_path / "runs.json"
    listed.write_text(json.dumps([run, {**run, "run_id": "b", "train_id": "b"}]))
    ok = run_cli("disk", "--runs", str(listed), "--results", str(tmp_path / "results"),
                 "--out", str(tmp_path / "estimate.json"))
    assert ok.returncode == 0, ok.stderr
    written = json.loads((tmp_path / "estimate.json").read_text())
    assert sorted(written["trainings"]) == ["b", "baseline-seed0"]
    # both keep their weights; one runs at a time (--jobs 1) with its resume checkpoints
    assert written["total_bytes"] == 2 * params * 4 + 2 * params * 4 * 3
    assert estimate([run, {**run, "run_id": "b", "train_id": "b"}], jobs=2)["total_bytes"] \
        == 2 * doc["total_bytes"]


def test_already_written_counts_only_the_listed_trainings(tmp_path):
    from pipelines.stages.disk import used_bytes

    for train_id, size in (("listed", 3000), ("dropped", 5000)):
        work = tmp_path / "train" / "abl" / train_id / "work-0123"
        work.mkdir(parents=True)
        (work / "iter_2.pth").write_bytes(b"\0" * size)
    assert used_bytes(tmp_path, "abl") == 8000
    assert used_bytes(tmp_path, "abl", ["listed"]) == 3000
    assert used_bytes(tmp_path, "abl", ["listed", "never-trained"]) == 3000
