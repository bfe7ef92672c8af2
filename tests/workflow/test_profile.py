"""`snakemake --profile slurm` from the repository root after the README's set-up."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

SCRIPT = REPO / "workflow" / "scripts" / "install_profile.sh"


def _env(tmp_path: Path) -> dict:
    return dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "config"),
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                PYTHONWARNINGS="ignore")


def test_profile_is_installed_once_and_snakemake_finds_it(tmp_path):
    env = _env(tmp_path)
    first = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    dest = tmp_path / "config" / "snakemake" / "slurm"
    assert dest.is_symlink() and dest.resolve() == (REPO / "workflow" / "profiles" / "slurm")
    again = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env)
    assert again.returncode == 0 and "(already)" in again.stdout
    # the command users type, from the repository root; its results and data folders moved to
    # tmp_path, so a demo already run in this checkout (`make demo` before `make test`) is
    # neither read nor written
    demo = yaml.safe_load((REPO / "configs" / "ablations" / "demo.yaml").read_text())
    data = {"root": str(tmp_path / "data"), "synthetic": demo["data"]["synthetic"]}
    proc = subprocess.run([str(Path(sys.executable).with_name("snakemake")), "-n", "--profile",
                           "slurm", "--config", f"results={tmp_path / 'results'}",
                           f"data={json.dumps(data)}"], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "train_model" in proc.stdout


def test_a_profile_of_the_users_own_is_never_replaced(tmp_path):
    env = _env(tmp_path)
    own = tmp_path / "config" / "snakemake" / "slurm"
    own.mkdir(parents=True)
    (own / "config.yaml").write_text("executor: slurm\njobs: 3\n")
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0
    assert proc.stderr.strip().count("\n") == 0 and "profile of your own" in proc.stderr
    assert (own / "config.yaml").read_text() == "executor: slurm\njobs: 3\n"
