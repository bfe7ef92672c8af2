"""A grid under fire: six tiny runs through the Snakefile while a driver SIGKILLs training,
evaluation and ingest processes at seeded random points, rerunning the DAG until it completes.

The same grid undisturbed is the reference: every run's final weights and metrics equal it; no
iteration is trained again beyond one checkpoint interval (each invocation's logged steps,
``<work>/<timestamp>/vis_data/scalars.json``); MLflow holds exactly one complete FINISHED child
per run, and no pending (half-written) child. No other slow test runs a grid of six, so the
reference is this test's own (its first DAG run).

Measured here (2026-12-07, a 2-core machine at load 17 from other jobs): 45 min wall (the
undisturbed grid 31 min, the grid under fire 14 min: 9 DAG runs, 15 kills of 29 job
processes), 8.6 CPU-minutes in all, so about 4 to 5 minutes on two idle cores.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.workflow.conftest import SNAKEMAKE, snakemake, tiny_ablation, write_config

pytestmark = pytest.mark.slow

ITERS, INTERVAL = 4, 2
SEED = 20261207
KINDS = ("train", "evaluate", "ingest")
MAX_ROUNDS = 12


def chaos_ablation(root: Path) -> dict:
    """Six runs: baseline and PRO-SCALE (3,3,3) x seeds 0..2, four iterations, a checkpoint every
    two; no FLOPs or latency jobs (nothing the kills aim at)."""
    config = tiny_ablation(root, name="chaos", iters=ITERS, benchmark=False)
    config["grid"]["seed"] = [0, 1, 2]
    config["stages"]["flops"] = False
    return config


def kind_of(proc) -> str | None:
    """``train``, ``evaluate`` or ``ingest`` for a ``python -m pipelines <stage>`` process."""
    try:
        cmd = proc.cmdline()
    except Exception:  # noqa: BLE001 - gone already
        return None
    if len(cmd) > 3 and cmd[1:3] == ["-m", "pipelines"] and cmd[3] in KINDS:
        return cmd[3]
    return None


def last_checkpoint(proc) -> int:
    """The iteration of the checkpoint a training process's work folder names last (0: none)."""
    try:
        cmd = proc.cmdline()
        marker = Path(cmd[cmd.index("--work-dir") + 1]) / "last_checkpoint"
        name = Path(marker.read_text().strip()).stem
    except (Exception, OSError):  # noqa: BLE001 - not there yet
        return 0
    return int(name.removeprefix("iter_")) if name.startswith("iter_") else 0


class Driver:
    """Watches a Snakemake head's job processes and SIGKILLs some of them (seeded): the first
    process of each kind, then each with probability ``p``; a training once its work folder
    names a chosen checkpoint (or at once), then after a random delay; others after a random
    delay."""

    def __init__(self, seed: int, p: float = 0.4):
        self.rng, self.p = random.Random(seed), p
        self.seen: dict[int, str] = {}     # pid -> kind, every job process met
        self.plans: dict[int, tuple] = {}  # pid -> (process, kind, checkpoint, delay, since)
        self.killed: list[tuple[str, str]] = []  # (kind, when)

    def plan(self, proc, kind: str) -> None:
        first = kind not in self.seen.values()
        self.seen[proc.pid] = kind
        if not (first or self.rng.random() < self.p):
            return
        checkpoint = self.rng.choice([0, INTERVAL, INTERVAL]) if kind == "train" else 0
        # the first of a kind within a second of its start (a process that ends sooner than
        # its kill, on a fast machine, must not leave a kind unkilled), others at any point
        delay = self.rng.uniform(0, 1.5 if checkpoint else 1.0 if first else 6.0)
        self.plans[proc.pid] = (proc, kind, checkpoint, delay, None)

    def step(self, head) -> None:
        import psutil

        try:
            children = psutil.Process(head.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        for proc in children:
            if proc.pid not in self.seen and (kind := kind_of(proc)):
                self.plan(proc, kind)
        now = time.monotonic()
        for pid, (proc, kind, checkpoint, delay, since) in list(self.plans.items()):
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                del self.plans[pid]  # it ended before its point
                continue
            if since is None and (kind != "train" or last_checkpoint(proc) >= checkpoint):
                self.plans[pid] = (proc, kind, checkpoint, delay, since := now)
            if since is not None and now - since >= delay:
                proc.send_signal(signal.SIGKILL)
                del self.plans[pid]
                self.killed.append((kind, f"checkpoint {checkpoint} + {delay:.1f} s"
                                    if kind == "train" else f"{delay:.1f} s"))

    def run(self, workdir: Path, configfile: Path) -> int:
        """One DAG run (the ingest as its target) under fire; its exit status."""
        cmd = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--configfile",
               str(configfile), "--directory", str(workdir), "--cores", "2",
               "--rerun-incomplete", "--keep-going", "ingest_results"]
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}"
                   f"{os.environ['PATH']}", PYTHONWARNINGS="ignore")
        with open(workdir / "snakemake.log", "a") as log:
            head = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + 3600
            while head.poll() is None:
                assert time.monotonic() < deadline, "a DAG run took over an hour"
                self.step(head)
                time.sleep(0.05)
        return head.returncode


def weights(checkpoint: str):
    import torch

    from pipelines import compat

    compat.apply()
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def finals(results: Path) -> dict[str, tuple[dict, dict]]:
    """run id -> (its final weights, its metrics less the checkpoint and config paths)."""
    out = {}
    for metrics_file in sorted((results / "evaluate" / "chaos").glob("*/*/metrics.json")):
        metrics = json.loads(metrics_file.read_text())
        assert metrics.get("status") != "failed", metrics
        (done,) = (results / "train" / "chaos" / metrics_file.parent.parent.name).glob(
            "work-*/train_done.json")
        checkpoint = json.loads(done.read_text())["checkpoint"]
        metrics.pop("checkpoint", None)
        metrics.pop("config", None)  # the run's rendered config, in each grid's own folder
        out[metrics_file.parent.parent.name] = (weights(checkpoint), metrics)
    return out


def invocations(work: Path) -> list[list[int]]:
    """The training steps each invocation in ``work`` logged (every one: logger interval 1), in
    the order they ran; validation entries (``mIoU``) are not training."""
    out = []
    for scalars in sorted(work.glob("*/vis_data/scalars.json")):
        entries = [json.loads(line) for line in scalars.read_text().splitlines()]
        out.append(sorted({e["step"] for e in entries if "mIoU" not in e}))
    return out


def mlflow_children(uri: str) -> list:
    from pipelines import contract as c
    from pipelines.tracking import store as tracking

    client = tracking.open_client(uri)
    exp = client.get_experiment_by_name("chaos")
    return [r for r in tracking.search_all(client, exp.experiment_id)
            if c.PARENT_TAG in r.data.tags]


def test_sigkilled_grid_reruns_to_the_undisturbed_results(tmp_path):
    import torch

    from pipelines import contract as c
    from pipelines.tracking import children as tracking_children

    calm_dir, chaos_dir = tmp_path / "calm", tmp_path / "chaos"
    calm_dir.mkdir(), chaos_dir.mkdir()
    started = time.monotonic()
    calm_config = chaos_ablation(calm_dir)
    calm = snakemake(calm_dir, write_config(calm_dir / "chaos.yaml", calm_config),
                     "ingest_results", timeout=3600)
    assert calm.returncode == 0, calm.stderr[-3000:]
    calm_s = time.monotonic() - started

    config = chaos_ablation(chaos_dir)
    configfile = write_config(chaos_dir / "chaos.yaml", config)
    driver = Driver(SEED)
    statuses = []
    for _ in range(MAX_ROUNDS):
        statuses.append(driver.run(chaos_dir, configfile))
        if statuses[-1] == 0:
            break
    log = (chaos_dir / "snakemake.log").read_text()
    assert statuses[-1] == 0, (statuses, driver.killed, log[-4000:])
    print(f"undisturbed: {calm_s:.0f} s; under fire: {time.monotonic() - started - calm_s:.0f}"
          f" s, {len(statuses)} DAG runs, {len(driver.killed)} kills of {len(driver.seen)} "
          f"job processes: {driver.killed}")
    # at least one kill in five jobs, of every kind
    assert 5 * len(driver.killed) >= len(driver.seen), (driver.killed, driver.seen)
    assert {kind for kind, _ in driver.killed} == set(KINDS), driver.killed
    assert len(statuses) > 1  # the kills failed a DAG run, which a rerun completed

    # every run's final weights and metrics equal the undisturbed run's
    want, got = finals(calm_dir / "results"), finals(chaos_dir / "results")
    assert len(want) == 6 and sorted(got) == sorted(want)
    for run_id, (w, metrics) in want.items():
        g, got_metrics = got[run_id]
        assert w.keys() == g.keys()
        differ = [k for k in w if not torch.equal(w[k], g[k])]
        assert differ == [], f"{run_id}: weights differ: {differ[:5]}"
        assert got_metrics == metrics, run_id

    # no iteration trained again beyond the last checkpoint interval: each invocation after the
    # first starts right after a checkpoint, at most one interval before the last step logged
    resumed = 0
    for work in sorted((chaos_dir / "results" / "train" / "chaos").glob("*/work-*")):
        runs = [steps for steps in invocations(work) if steps]
        assert sorted(set().union(*runs)) == list(range(1, ITERS + 1)), (work, runs)
        for before, after in zip(runs, runs[1:]):
            start = after[0] - 1  # the checkpoint it resumed from
            assert start % INTERVAL == 0, (work, runs)
            assert max(before) - start <= INTERVAL, (work, runs)
            resumed += 1
    assert resumed >= 1  # a killed training resumed from a checkpoint

    # MLflow: one complete FINISHED child per run, nothing pending or half-written
    children = mlflow_children(config["mlflow"]["tracking_uri"])
    by_run: dict[str, list] = {}
    for run in children:
        by_run.setdefault(run.data.tags.get(c.RUN_ID_TAG), []).append(run)
    assert sorted(by_run) == sorted(want), sorted(by_run)
    for run_id, runs in by_run.items():
        assert len(runs) == 1, (run_id, [(r.info.status, r.data.tags.get(c.ROLE_TAG))
                                         for r in runs])
        (run,) = runs
        assert run.info.status == "FINISHED" and tracking_children.is_complete(run), run_id
        assert run.data.tags[c.ROLE_TAG] == c.ROLE_RUN
        assert run.data.metrics["miou"] == pytest.approx(want[run_id][1]["miou"])
    assert not list((chaos_dir / "results").rglob(".*.tmp"))  # no half-written file left
