"""Rungs of a multi-fidelity search are one training: ``train --stop-at`` stops the schedule of
``max_iters`` at a checkpoint, a later call continues from it without repeating an iteration,
and the result equals an uninterrupted training bit for bit (pipelines/stages/resume.py), one that
validated only at its end: validating at the rungs changes nothing either."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import REPO
from tests.workflow.test_train_resume import _checkpoint, _logged, _train_cmd

pytestmark = pytest.mark.slow

ITERS = 6


def _train(work, root, *extra, val_interval=2):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(_train_cmd(work, root, *extra, max_iters=ITERS,
                                     val_interval=val_interval),
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=1800)


def test_rungs_continue_and_equal_an_uninterrupted_training(tmp_path, synthetic_root):
    import torch

    straight, rungs = tmp_path / "straight", tmp_path / "rungs"
    done = _train(straight, synthetic_root, val_interval=ITERS)  # validates at its end only
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    steps_of_call = []
    for stop_at in (2, 4, None):
        before = set(_logged(rungs))
        extra = ("--done-file", str(tmp_path / f"done-{stop_at}.json"))
        if stop_at is not None:
            extra = (*extra, "--stop-at", str(stop_at))
        call = _train(rungs, synthetic_root, *extra)
        assert call.returncode == 0, call.stdout[-3000:] + call.stderr[-3000:]
        steps_of_call.append(sorted(s for s, kind in set(_logged(rungs)) - before
                                    if kind == "train"))
        record = json.loads((tmp_path / f"done-{stop_at}.json").read_text())
        assert record["iters"] == (stop_at or ITERS) and record["max_iters"] == ITERS
        assert record["stopped"] is (stop_at is not None)
        if stop_at is not None:  # the resume checkpoint is kept, optimizer and random states
            kept = _checkpoint(rungs / f"iter_{stop_at}.pth")
            assert {"optimizer", "param_schedulers", "rng_state"} <= set(kept)
            assert record["checkpoint"] == str(rungs / f"iter_{stop_at}.pth")
    # each call trained only its own iterations: none repeated
    assert steps_of_call == [[1, 2], [3, 4], [5, 6]]

    want, got = _logged(straight), _logged(rungs)
    assert sorted(k for k in got if k[1] == "val") == [(2, "val"), (4, "val"), (6, "val")]
    assert sorted(want) == sorted(k for k in got if k[1] == "train" or k[0] == ITERS)
    assert {k: v[0] for k, v in want.items()} == {k: got[k][0] for k in want}
    assert all(v == [v[0]] * len(v) for v in got.values())
    a, b = (_checkpoint(w / f"iter_{ITERS}.pth")["state_dict"] for w in (straight, rungs))
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []

    # a rung below where the training is trains nothing; a rung that is not a checkpoint
    # iteration is refused in one line
    again = _train(rungs, synthetic_root, "--stop-at", "2")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Iter(train)" not in again.stdout + again.stderr
    odd = _train(tmp_path / "odd", synthetic_root, "--stop-at", "3")
    assert odd.returncode == 2, odd.stdout[-3000:] + odd.stderr[-3000:]
    assert "--stop-at 3: not a checkpoint and validation iteration" in odd.stderr
    assert len(odd.stderr.strip().splitlines()) == 1
