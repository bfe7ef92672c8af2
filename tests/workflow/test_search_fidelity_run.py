"""A real multi-fidelity search of tiny trainings as Snakemake jobs: rungs of one schedule
(``train --stop-at``), the best setting promoted and continued from its checkpoint, the others
PRUNED with their rung results; SIGKILL the head during a job, start it again: it picks the study
up, no rung is trained twice, and the promoted training continues where it stopped."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from tests.conftest import REPO
from tests.workflow.test_search_resume import _space as _resume_space

pytestmark = pytest.mark.slow


def _space(root):
    """test_search_resume's tiny ablation, PRO-SCALE only, validated and checkpointed every 3
    of its 6 iterations (the rung)."""
    _resume_space(root)
    ablation = yaml.safe_load((root / "ablation.yaml").read_text())
    ablation["name"] = "tiny_fidelity"
    ablation["train"]["cfg_options"] = [
        o for o in ablation["train"]["cfg_options"] if "checkpoint.interval" not in o
    ] + ["train_cfg.val_interval=3", "default_hooks.checkpoint.interval=3"]
    ablation["grid"]["variants"] = {"pro_scale": ablation["grid"]["variants"]["pro_scale"]}
    (root / "ablation.yaml").write_text(yaml.safe_dump(ablation))
    space = {"name": "tiny_fidelity", "ablation": str(root / "ablation.yaml"),
             # four feasible settings (3-3-3 is over the budget): two to rung 3, the better
             # one on to 6, a third to rung 3: the 12 iterations are spent
             "budget": {"gflops_total": 0.65, "trials": 20, "trainings": 2}, "batch": 1,
             "sampler": {"name": "tpe", "seed": 1},
             "fidelity": {"rungs": [3], "eta": 2},
             "space": {"variants": {"pro_scale": {
                 "schedule": ["1-1-1", "2-2-2", "3-3-3"], "trc": [False],
                 "lpe": [False, True]}}}}
    (root / "space.yaml").write_text(yaml.safe_dump(space))
    return root / "space.yaml"


def test_rungs_promotion_and_a_killed_head(tmp_path):
    space = _space(tmp_path)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1",
               PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "pipelines", "search", str(space), "--storage", storage,
           "--cores", "1", "--no-report"]
    train = tmp_path / "results" / "train" / "tiny_fidelity"
    log = open(tmp_path / "first.log", "w")
    head = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 900
    try:  # kill the head once the second setting's rung is done and the promotion started
        while len(list(train.glob("*/work-*/rung-3.json"))) < 2 or not any(
                "training to iteration 6" in line
                for line in (tmp_path / "first.log").read_text().splitlines()):
            assert head.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no promotion after 900 s"
            time.sleep(0.3)
    finally:
        if head.poll() is None:
            os.kill(head.pid, signal.SIGKILL)
        head.wait(timeout=60)
    time.sleep(2)
    os.killpg(head.pid, signal.SIGKILL) if _alive_group(head.pid) else None
    rung_files = {p: p.stat().st_mtime_ns for p in train.glob("*/work-*/rung-3.json")}
    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-4000:]
    assert "resumed: 2 settings, 6 of 12 iterations spent" in out
    # no rung trained twice: the two rung files are the first head's
    assert {p: p.stat().st_mtime_ns for p in rung_files} == rung_files

    study = optuna.load_study(study_name="tiny_fidelity", storage=storage)
    trials = study.get_trials()
    assert not [t for t in trials if t.state.name == "RUNNING"]
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    pruned = [t for t in trials if t.user_attrs.get("status") == "stopped"]
    refused = [t for t in trials if t.user_attrs.get("status") == "infeasible"]
    assert len(complete) == 1 and len(pruned) == 2
    for t in refused:  # cost first: never trained
        assert t.state.name == "PRUNED" and t.user_attrs["gflops_total"] > 0.65
        assert "rungs" not in t.user_attrs
    assert "12 of 12 iterations spent; 1 settings trained to 6, 2 stopped early" in out
    (best,) = complete
    rungs = json.loads(best.user_attrs["rungs"])
    assert sorted(map(int, rungs)) == [3, 6]
    for t in pruned:  # stopped at rung 3, its result kept
        assert list(json.loads(t.user_attrs["rungs"])) == ["3"]
        assert t.user_attrs["rung_3"] == json.loads(t.user_attrs["rungs"])["3"]
    # the promoted setting continued from its checkpoint at rung 3: its work dir logged the
    # rung's iterations once (the killed continuation may have logged some of 4..6 before it
    # died; they are redone from that checkpoint)
    work = next(p.parent for p in train.glob("*/work-*/train_done.json"))
    steps = []
    for path in sorted(work.glob("*/vis_data/scalars.json")):
        steps += [json.loads(line)["step"] for line in path.read_text().splitlines()
                  if "loss" in json.loads(line)]
    assert sorted(s for s in steps if s <= 3) == [1, 2, 3]
    assert set(steps) == {1, 2, 3, 4, 5, 6}
    assert (work / "rung-3.json").is_file()
    report = (tmp_path / "results" / "search" / "tiny_fidelity" / "fidelity.md").read_text()
    assert "| iterations spent | training hours | hypervolume |" in report
    assert report.count("| stopped |") == 2 and report.count("| full |") == 1

    # MLflow: one run per trained setting with its learning curve, the stopped one too
    from mlflow.tracking import MlflowClient

    from pipelines.search.rungs import CURVE_METRIC, ROLE_STOPPED

    client = MlflowClient(f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny_fidelity").experiment_id
    runs = client.search_runs([experiment], "tags.`pipelines.search` = 'tiny_fidelity'")
    by_role = {}
    for run in runs:
        by_role.setdefault(run.data.tags.get("pipelines.role"), []).append(run)
    assert len(by_role["trial"]) == 1 and len(by_role[ROLE_STOPPED]) == 2
    for run, steps in ((by_role["trial"][0], [3, 6]), *((r, [3]) for r in by_role[ROLE_STOPPED])):
        history = client.get_metric_history(run.info.run_id, CURVE_METRIC)
        assert sorted(m.step for m in history) == steps
    assert ({r.data.tags["pipelines.run_id"] for r in by_role[ROLE_STOPPED]}
            == {t.user_attrs["run_id"] for t in pruned})


def _alive_group(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False
