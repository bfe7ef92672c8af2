"""Shell safety: every path a rule puts into a shell command is quoted, so a results folder
with a space works and one with `;`, `$(...)` or backticks is text, never executed."""
from __future__ import annotations

import json
import re

import pytest

from tests.conftest import REPO
from tests.workflow.conftest import snakemake, tiny_ablation, write_config

# params that are not paths: numbers, enums, or already shell-quoted one by one (options)
NOT_PATHS = {"threads", "resources.last_attempt", "params.options", "params.shape",
             "params.device", "params.repeats", "params.warmup", "params.nproc",
             "params.beta", "params.spec[train]", "params.spec[val]", "params.spec[size]", "params.spec[seed]"}
FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.\[\]]*)(:[^}]*)?\}")


def _shell_fields():
    """(file, field, format spec) of every {field} in the rules' shell strings."""
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        for block in re.findall(r"shell:\n((?:\s+\".*\"\n)+)", text):
            block = block.replace("{{", "").replace("}}", "")  # literal braces
            for field, spec in FIELD.findall(block):
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
    target = f"{evil}/results/disk/tiny/estimate.json"  # describe_run + check_disk jobs
    result = snakemake(tmp_path, configfile, target)
    assert result.returncode == 0, result.stderr[-4000:]
    estimate = json.loads((evil / "results" / "disk" / "tiny" / "estimate.json").read_text())
    assert estimate["trainings"]["baseline-seed0"]["params"] > 0
    assert (evil / "results" / "runs" / "tiny" / "baseline-seed0" / "run.json").is_file()
    for name in ("PWNED", "PWNED2", "PWNED3"):
        assert not list(tmp_path.rglob(name)) and not (REPO / name).exists(), name
