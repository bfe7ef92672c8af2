"""Failures stay local: failure records, the NaN-loss stop, and how ingest/report read them."""
from __future__ import annotations

import json

import pytest

from pipelines.stages.failures import read_failure, recording_failures, run_stage, upstream_failure


def test_recording_writes_the_reason_and_swallows_only_when_asked(tmp_path):
    out = tmp_path / "done.json"
    with pytest.raises(ValueError):
        with recording_failures(out, "train", record=False):
            raise ValueError("boom")
    assert not out.exists()
    with recording_failures(out, "train", record=True):
        raise ValueError("boom\nsecond line")
    record = read_failure(out)
    assert record["stage"] == "train" and record["reason"] == "ValueError: boom"
    assert "Traceback" in record["traceback"]
    with pytest.raises(KeyboardInterrupt):
        with recording_failures(out, "train", record=True):
            raise KeyboardInterrupt


def test_a_normal_output_is_not_a_failure(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"miou": 1.0}))
    (tmp_path / "bad.json").write_text("{not json")
    assert read_failure(tmp_path / "m.json") is None
    assert read_failure(tmp_path / "bad.json") is None
    assert read_failure(tmp_path / "missing.json") is None
    skipped = upstream_failure("evaluate", {"stage": "train", "reason": "x"})
    assert skipped["stage"] == "train" and skipped["skipped"] == "evaluate"


def test_run_stage_passes_an_upstream_failure_on_and_records_its_own(tmp_path):
    """The one wrapper of the stage CLIs: an upstream record reaches every output without
    running the stage; the stage's own failure is recorded in every output on the last attempt
    (and propagates on the others); a stage that works returns its status."""
    outs = [tmp_path / "a.json", None, tmp_path / "b.json"]  # None: an option not given
    upstream = tmp_path / "up.json"
    upstream.write_text(json.dumps({"status": "failed", "stage": "train", "reason": "nan"}))
    ran = []
    assert run_stage("evaluate", ran.append, "args", outs=outs, upstreams=[None, upstream]) == 0
    assert not ran
    for out in (outs[0], outs[2]):
        assert read_failure(out) == {"status": "failed", "stage": "train", "reason": "nan",
                                     "skipped": "evaluate"}

    def fail(args):
        raise ValueError(f"boom {args}")

    with pytest.raises(ValueError):
        run_stage("gate", fail, 1, outs=outs, record=False)
    assert run_stage("gate", fail, 1, outs=outs, record=True) == 0
    assert [read_failure(o)["reason"] for o in (outs[0], outs[2])] == ["ValueError: boom 1"] * 2
    assert run_stage("gate", lambda args: 7, None, outs=outs, record=True) == 7


def test_nan_loss_stops_a_real_mmengine_training_at_once(tmp_path):
    """A real mmengine Runner with lr=1e30 diverges; the hook stops it with the reason."""
    import torch
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    import pipelines.registry  # noqa: F401  (version checks before mmdet)
    from pipelines.stages.hooks import NonFiniteLossError

    class Quadratic(BaseModel):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(4))

        def forward(self, inputs, mode="loss"):
            return {"loss": ((self.w * inputs) ** 2).sum()}

    data = [{"inputs": torch.ones(4)} for _ in range(64)]
    runner = Runner(model=Quadratic(), work_dir=str(tmp_path),
                    train_dataloader=dict(dataset=data, batch_size=2,
                                          sampler=dict(type="DefaultSampler", shuffle=False),
                                          collate_fn=dict(type="default_collate")),
                    train_cfg=dict(by_epoch=False, max_iters=30),
                    optim_wrapper=dict(optimizer=dict(type="SGD", lr=1e30)),
                    default_hooks=dict(checkpoint=None, logger=None),
                    custom_hooks=[dict(type="StopOnNonFiniteLossHook")])
    with pytest.raises(NonFiniteLossError, match=r"loss is (inf|nan) at iteration \d+, lr 1e\+30"):
        runner.train()
    assert runner.iter < 5  # stopped at once, not after the budget


def test_ingest_and_report_name_the_failed_run(tmp_path):
    from pipelines import contract as c
    from pipelines.grid import RunPaths
    from pipelines.reports.report import build_report
    from pipelines.tracking.ingest import run_failure

    run = {"run_id": "broken-seed0", "train_id": "t1", "params": {"variant": "broken",
           "max_iters": "2", "recipe": "r"}, "settings": {}}
    paths = RunPaths.of(str(tmp_path), "abl", run)
    paths.train_done.parent.mkdir(parents=True)
    with recording_failures(paths.train_done, "train", record=True):
        raise RuntimeError("loss is nan at iteration 3")
    paths.metrics.parent.mkdir(parents=True)
    paths.metrics.write_text(json.dumps(upstream_failure("evaluate", read_failure(
        paths.train_done))))
    assert run_failure(paths, {}) == "train: RuntimeError: loss is nan at iteration 3"
    ok = RunPaths.of(str(tmp_path), "abl", {**run, "run_id": "ok", "train_id": "t2"})
    assert run_failure(ok, {c.MIOU: float("nan")}) == "evaluate: mIoU is nan"
    assert run_failure(ok, {c.MIOU: 12.0}) is None
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps(run))
    text = build_report("abl", str(tmp_path), [str(run_json)], tracking_uri="sqlite:///m.db")
    assert "## Failed runs" in text
    # the store's runs through `ui`'s link, not a bare `mlflow ui` (MLflow's GenAI page)
    assert "`python -m pipelines ui --tracking-uri sqlite:///m.db --experiment abl`" in text
    assert "| `broken-seed0` | train: RuntimeError: loss is nan at iteration 3 |" in text
