"""Shell safety: every path a rule puts into a shell command is quoted, so a results folder
with a space works and one with `;`, `$(...)` or backticks is text, never executed."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.workflow.conftest import snakemake, tiny_ablation, write_config

# params that are not paths: numbers and enums
NOT_PATHS = {"threads", "resources.last_attempt", "params.shape",
             "params.device", "params.repeats", "params.warmup", "params.nproc",
             "params.beta", "params.spec[train]", "params.spec[val]", "params.spec[size]", "params.spec[seed]",
             "params.ui",  # `--mlflow-ui URL`, the URL shell-quoted (figures.smk)
             "wildcards.stop_at"}  # a rung: digits only (its wildcard constraint, train.smk)
FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.\[\]]*)(:[^}]*)?\}")


STRING = re.compile(r'"((?:[^"\\\n]|\\.)*)"')


def _shell_fields():
    """(file, field, format spec) of every {field} in the rules' shell strings: the string
    literals of each ``shell:`` block (plain strings, or the arguments of ``stage_shell(...)``),
    and the strings ``stage_shell`` itself adds (common.smk)."""
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for block in re.findall(r"shell:\n((?:(?:        .*)?\n)+)", text):
            for string in STRING.findall(block):
                string = string.replace("{{", "").replace("}}", "")  # literal braces
                for field, spec in FIELD.findall(string):
                    yield smk.name, field, spec
        helper = re.search(r"\ndef stage_shell\(.*?\n(?=\S)", text, re.S)
        if helper:  # an f-string: {{x}} is the rule's field x, {command} the helper's argument
            for string in STRING.findall(helper.group(0).split('"""')[-1]):
                for field, spec in FIELD.findall(string):
                    if field != "command":
                        yield smk.name, field, spec


def test_every_path_in_a_rule_is_quoted():
    fields = list(_shell_fields())
    assert any(f == "output.done" for _, f, _ in fields)  # the scan sees the rules
    unquoted = [(name, field) for name, field, spec in fields
                if field not in NOT_PATHS and not spec.endswith("q")]
    assert not unquoted, f"unquoted in a shell command: {unquoted}"


@pytest.mark.slow
def test_semicolon_and_command_substitution_in_results_are_not_executed(tmp_path):
    evil = tmp_path / "res; touch PWNED; $(touch PWNED2) `touch PWNED3` #"
    config = tiny_ablation(evil)
    config["grid"]["variants"] = {"baseline": config["grid"]["variants"]["baseline"]}
    configfile = write_config(tmp_path / "evil.yaml", config)
    # describe_run's job, and the disk check of the onstart hook (trainings are pending)
    from pipelines.grid import RunPaths, expand_grid

    target = str(RunPaths.of(config["results"], "tiny", expand_grid(config, repo=REPO)[0]).run_json)
    result = snakemake(tmp_path, configfile, target)
    assert result.returncode == 0, result.stderr[-4000:]
    estimate = json.loads((evil / "results" / "disk" / "tiny" / "estimate.json").read_text())
    assert estimate["trainings"]["baseline-seed0"]["params"] > 0
    assert Path(target).is_file()
    for name in ("PWNED", "PWNED2", "PWNED3"):
        assert not list(tmp_path.rglob(name)) and not (REPO / name).exists(), name


# ----------------------------------------------------------------------------- a clean host
SHIMS = {
    # every package missing: the install path runs
    "dpkg-query": "exit 1",
    # Debian's postinst starts and enables every daemon it installs
    "apt-get": 'echo "apt-get $*" >> "$STATE/calls"\n'
               'if [ "$1" = install ] || [ "$3" = install ] || [[ " $* " == *" install "* ]]; then\n'
               '  for s in slurmctld slurmd munge postgresql; do\n'
               '    echo active > "$STATE/$s.active"; echo enabled > "$STATE/$s.enabled"; done\n'
               'fi',
    "systemctl": 'echo "systemctl $*" >> "$STATE/calls"\n'
                 'case "$1" in\n'
                 '  is-active) v=$(cat "$STATE/$2.active" 2>/dev/null || echo inactive); echo $v;'
                 ' [ "$v" = active ];;\n'
                 '  is-enabled) v=$(cat "$STATE/$2.enabled" 2>/dev/null || echo disabled); echo $v;'
                 ' [ "$v" = enabled ];;\n'
                 '  stop) echo inactive > "$STATE/$2.active";;\n'
                 '  disable) echo disabled > "$STATE/$2.enabled";;\n'
                 'esac',
    "sudo": 'exec "$@"',
}


def test_install_services_leaves_what_the_host_ran_alone(tmp_path):
    """The script's own logic, with the package manager and systemctl replaced by recorders
    (no systemd runs here): PostgreSQL, already running and enabled on the host, is neither
    stopped nor disabled; what the package install started is stopped again."""
    import os
    import shutil
    import subprocess

    tree = tmp_path / "repo" / "workflow" / "scripts"
    tree.mkdir(parents=True)
    shutil.copy(REPO / "workflow" / "scripts" / "install_services.sh", tree)
    bin_dir, state, run_dir = tmp_path / "bin", tmp_path / "state", tmp_path / "systemd"
    for d in (bin_dir, state, run_dir):
        d.mkdir()
    for name, body in SHIMS.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    (state / "postgresql.active").write_text("active\n")  # the host's own database
    (state / "postgresql.enabled").write_text("enabled\n")
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", STATE=str(state),
               SYSTEMD_RUN_DIR=str(run_dir))
    proc = subprocess.run(["bash", str(tree / "install_services.sh")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = (state / "calls").read_text().splitlines()
    assert any(c.startswith("apt-get") and "install" in c for c in calls)
    assert "systemctl stop postgresql" not in calls
    assert "systemctl disable postgresql" not in calls
    assert (state / "postgresql.active").read_text().strip() == "active"
    for svc in ("slurmctld", "slurmd", "munge"):
        assert f"systemctl stop {svc}" in calls and f"systemctl disable {svc}" in calls
        assert (state / f"{svc}.active").read_text().strip() == "inactive"
