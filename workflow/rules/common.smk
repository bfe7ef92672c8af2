# Validation of the ablation config and the small helpers the rules share.
# Grid expansion, run ids and the result layout live in pipelines/grid.py (unit-tested).
import json
import os
import re
from pathlib import Path
import shlex
import sys

from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
from pipelines.errors import UserError  # noqa: E402
from pipelines.grid import RunPaths, expand_grid, validate_ablation  # noqa: E402


# First the same schema through pipelines.grid, which names the offending key in one line
# ("ablation config key 'grid.variants.vit': unknown key") instead of a schema dump; then
# snakemake's own validate (fills the defaults in).
try:
    validate_ablation(config)
except UserError as err:
    raise WorkflowError(f"invalid ablation config: {err}") from None
validate(config, schema="../schemas/ablation.schema.yaml", set_default=True)

try:
    RUNS = {run.run_id: run for run in expand_grid(config, repo=workflow.basedir)}
except UserError as err:
    raise WorkflowError(f"invalid ablation config: {err}") from None

ABLATION = config["name"]
RESULTS = config["results"]
# every rule runs in this environment (`--sdm conda` on a cluster; the local .venv otherwise)
# (None until the repository's environment.yml exists: Snakemake records the file's hash)
CONDA_ENV = (
    "../../environment.yml"
    if os.path.isfile(os.path.join(workflow.basedir, "environment.yml"))
    else None
)


wildcard_constraints:
    run_id="|".join(re.escape(run_id) for run_id in sorted(RUNS)),


def paths(run_id):
    return RunPaths(RESULTS, ABLATION, run_id)


def get_run(wildcards):
    return RUNS[wildcards.run_id]


def get_options(wildcards):
    """Every --cfg-options of a run, shell-quoted one by one."""
    return " ".join(shlex.quote(opt) for opt in get_run(wildcards).cfg_options)


def get_dataset_marker():
    """The dataset rule's output when the workflow writes the set, else nothing to wait for."""
    if config["data"]["synthetic"] is not None:
        return f"{config['data']['root']}/meta.json"
    return []


def get_data_root(wildcards, input):
    """The dataset folder: where the dataset rule wrote it, or the user's `data.root`."""
    if input.get("data"):
        return os.path.dirname(input.data)
    return config["data"]["root"]


def get_resources(stage):
    """resources: for a stage; memory and runtime grow with each retry's attempt number."""
    res = config["resources"][stage]
    gres = f"gpu:{res['gpus']}" if res["gpus"] else ""
    return dict(
        mem_mb=lambda wildcards, attempt: res["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: res["runtime"] * attempt,
        gres=gres,
    )


def get_threads(stage):
    return config["resources"][stage]["cpus"]


def get_run_outputs(run_id):
    p = paths(run_id)
    out = [p.run_json, p.train_done, p.metrics]
    if config["stages"]["flops"]:
        out.append(p.flops)
    if config["stages"]["benchmark"]:
        out.append(p.benchmark)
    return [str(o) for o in out]


def get_all_run_outputs(wildcards=None):
    return [o for run_id in RUNS for o in get_run_outputs(run_id)]


def get_final_outputs():
    return [
        f"{RESULTS}/ingest/{ABLATION}/ingested.json",
        f"{RESULTS}/report/{ABLATION}/report.md",
        # figures.smk: Pareto figures + tables and the HTML report, from the MLflow store
        f"{RESULTS}/figures/{ABLATION}/figures.json",
        f"{RESULTS}/report/{ABLATION}/html/index.html",
    ]
