"""Recipes are content, for real: a copy of the repository runs a tiny grid with a config-key
axis end to end, then edits to a method file or a base config make `snakemake -n` list exactly
the runs that use them, and a path spelled differently changes nothing."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_file
from tests.workflow.conftest import SNAKEMAKE, tiny_ablation, write_config
from tests.workflow.test_dry_run import job_counts

pytestmark = pytest.mark.slow

PRO = "configs/models/mask2former_r18_proscale-333_synthetic-128x128.py"
BASE = "configs/models/mask2former_r18_synthetic-128x128.py"


def copy_repo(dest: Path) -> Path:
    """The tracked (and not ignored) files of the checkout, so edits never touch the real one."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def run_copy(repo: Path, configfile: Path, *args: str):
    """The copy's own Snakefile (so the grid hashes the copy's code), run from the copy."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}"
               f"{os.environ.get('PATH', '')}", PYTHONWARNINGS="ignore")
    proc = subprocess.run([str(SNAKEMAKE), "--snakefile", str(repo / "Snakefile"),
                           "--configfile", str(configfile), "--directory", str(repo),
                           "--cores", "2", *args], cwd=repo, capture_output=True, text=True,
                          timeout=1800, env=env)
    return proc, proc.stdout + proc.stderr


def trained(stdout: str) -> set[str]:
    return {Path(t).parent.parent.name
            for t in re.findall(r"output: (\S+/train_done\.json)", stdout)}


def test_new_axis_end_to_end_and_reruns_follow_content(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    config = tiny_ablation(tmp_path, iters=2, benchmark=False)
    config["stages"] = {"flops": True, "benchmark": False}
    config["grid"]["variants"]["baseline"]["config"] = BASE
    config["grid"]["variants"]["pro_scale"]["config"] = PRO
    config["grid"]["variants"]["pro_scale"]["axes"]["model.decode_head.num_queries"] = [10, 20]
    configfile = write_config(tmp_path / "abl.yaml", config)
    proc, out = run_copy(repo, configfile)
    assert proc.returncode == 0, out[-4000:]
    results = tmp_path / "results"
    ids = {p.parent.parent.name for p in results.glob("evaluate/tiny/*/*/metrics.json")}
    assert ids == {"baseline-seed0", "pro_scale-s3-3-3-trc-lpe-num_queries10-seed0",
                   "pro_scale-s3-3-3-trc-lpe-num_queries20-seed0"}
    # the axis reached the model: the transformer decoder's cost follows the query count
    gf = {i: json.loads(run_file(results, "flops", "tiny", i, "flops.json").read_text())["gflops"]
          for i in ids}
    assert gf["pro_scale-s3-3-3-trc-lpe-num_queries10-seed0"]["transformer_decoder"] < \
        gf["pro_scale-s3-3-3-trc-lpe-num_queries20-seed0"]["transformer_decoder"]
    # and MLflow carries it by its name
    from pipelines.analysis.data import load_runs

    table = load_runs(config["mlflow"]["tracking_uri"], "tiny")
    assert sorted(table["model.decode_head.num_queries"].dropna().tolist()) == [10, 20]

    # nothing to do again; `./configs/x.py` for `configs/x.py` changes nothing
    config["grid"]["variants"]["pro_scale"]["config"] = "./" + PRO
    proc, out = run_copy(repo, write_config(configfile, config), "-n")
    assert proc.returncode == 0 and "Nothing to be done" in out, out[-3000:]

    # a method file edited: exactly the runs that build PRO-SCALE train again, under the rerun
    # trigger Snakemake itself suggests (mtime only: no params or code metadata consulted)
    method = repo / "pipelines" / "models" / "pro_scale.py"
    method.write_text(method.read_text() + "\n# an edit\n")
    proc, out = run_copy(repo, configfile, "-n", "--rerun-triggers", "mtime")
    assert proc.returncode == 0, out[-3000:]
    assert trained(out) == ids - {"baseline-seed0"}
    assert job_counts(proc.stdout)["evaluate_model"] == 2
    assert job_counts(proc.stdout)["count_flops"] == 2
    before = _ingested(results)
    proc, out = run_copy(repo, configfile, "--rerun-triggers", "mtime")
    assert proc.returncode == 0, out[-4000:]
    _assert_mlflow_holds_current(config, results, ids)
    after = _ingested(results)
    assert after != before  # a new record; the other key's record is retired
    assert [p.parent.name for p in (results / "ingest" / "tiny").glob("*/ingested.json")] == [
        after.parent.name]

    # a base config edited in a checkout without .snakemake/ (a new clone, a copied results
    # folder): every run that inherits it trains and evaluates again
    shutil.rmtree(repo / ".snakemake")
    base = repo / BASE
    base.write_text(base.read_text().replace("max_keep_ckpts=2", "max_keep_ckpts=3"))
    proc, out = run_copy(repo, configfile, "-n")
    assert trained(out) == ids
    assert job_counts(proc.stdout)["evaluate_model"] == 3
    proc, out = run_copy(repo, configfile)
    assert proc.returncode == 0, out[-4000:]
    _assert_mlflow_holds_current(config, results, ids)

    # another baseline declared (grid.baseline): no run's recipe changes, so nothing trains,
    # but the ablation's records follow it under mtime triggers too (the baseline is part of
    # the content key, and ingest is told it rather than trusting run.json's older flag)
    config["grid"]["baseline"] = "pro_scale"
    proc, out = run_copy(repo, write_config(configfile, config), "--rerun-triggers", "mtime")
    assert proc.returncode == 0, out[-4000:]
    assert trained(out) == set() and "evaluate_model" not in job_counts(proc.stdout)
    table = load_runs(config["mlflow"]["tracking_uri"], "tiny").set_index("run_id")
    assert {i for i in ids if table.loc[i, "baseline"]} == ids - {"baseline-seed0"}


def _ingested(results: Path) -> Path:
    (found,) = (results / "ingest" / "tiny").glob("*/ingested.json")
    return found


def _assert_mlflow_holds_current(config: dict, results: Path, ids: set[str]) -> None:
    """Each run's MLflow point carries its newest run.json's recipe and that recipe's mIoU."""
    from pipelines.analysis.data import load_runs
    from pipelines.grid import RunPaths

    table = load_runs(config["mlflow"]["tracking_uri"], "tiny").set_index("run_id")
    for run_id in ids:
        newest = max((results / "runs" / "tiny" / run_id).glob("*/run.json"),
                     key=lambda p: p.stat().st_mtime_ns)
        run = json.loads(newest.read_text())
        metrics = json.loads(RunPaths.of(str(results), "tiny", run).metrics.read_text())
        assert table.loc[run_id, "recipe"] == run["recipe"], run_id
        assert table.loc[run_id, "miou"] == pytest.approx(metrics["miou"]), run_id
