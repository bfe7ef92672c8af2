# Validation of the ablation config and the small helpers the rules share.
# Grid expansion, run ids and the result layout live in pipelines/grid/ (unit-tested).
import functools
import json
import os
from pathlib import Path
import sys

sys.path.insert(0, workflow.basedir)
from pipelines.errors import UserError  # noqa: E402
from pipelines.snakemake_speed import fewer_gc_passes, read_signatures_once  # noqa: E402

read_signatures_once()  # Snakemake asks each rule function's signature once, not per job
fewer_gc_passes()  # the DAG's objects live as long as it does: fewer collector passes over them
from pipelines.grid import RunPaths, content_key, expand_grid, validate_ablation  # noqa: E402
from pipelines.grid.run import run_document  # noqa: E402


def refuse(err):
    """A bad ablation config: its one line on stderr and exit status 1 (a WorkflowError would
    add Snakemake's file and line of this file under it)."""
    print(f"error: invalid ablation config: {err}", file=sys.stderr)
    raise SystemExit(1)


# The schema (workflow/schemas/ablation.schema.yaml) through pipelines.grid, which fills the
# defaults in and names the offending key in one line ("ablation config key
# 'grid.variants.vit': unknown key") instead of a schema dump. (Snakemake's own validate of the
# same schema added nothing after it, on every ablation shipped, and cost every job's start
# 0.07 s.)
try:
    validate_ablation(config)
except UserError as err:
    refuse(err)

# The expanded grid is saved in .snakemake/pipelines-plans/ under a key of everything the
# expansion reads (pipelines/grid/plan_cache.py): on a cluster every job's own snakemake loads it
# instead of expanding the whole grid again; any change is a new expansion.
from pipelines.grid.plan_cache import cached_expand  # noqa: E402

def _many_output_files(runs):
    """The outputs of the jobs that write a file for every run (list_runs: each run.json;
    benchmark_ablation: each benchmark.json), saved with the runs: at 10,000 runs building
    these paths costs about a second per snakemake start."""
    files = {"run_json": [], "benchmark": []}
    for run in runs:
        run_paths = RunPaths.of(config["results"], config["name"], run)
        files["run_json"].append(str(run_paths.run_json))
        files["benchmark"].append(str(run_paths.benchmark))
    return files


try:
    (_runs, MANY_OUTPUTS), _ = cached_expand(
        config, workflow.basedir, Path(".snakemake") / "pipelines-plans", expand=expand_grid,
        derive=_many_output_files,
        code_files=[workflow.main_snakefile, *Path(workflow.basedir, "workflow", "rules")
                    .glob("*.smk")])
    RUNS = {run.run_id: run for run in _runs}
except UserError as err:
    refuse(err)


def _job_rules():
    """The rules a cluster job's own snakemake may run (the `--allowed-rules` its executor
    passes), or None: on the submitting machine, or when they cannot be told (Snakemake sets
    them after reading the Snakefile, so they are read from the command line)."""
    if not workflow.remote_exec or "--allowed-rules" not in sys.argv:
        return None
    names = []
    for arg in sys.argv[sys.argv.index("--allowed-rules") + 1:]:
        if arg.startswith("-"):
            break
        names += arg.split()
    return set(names) or None


JOB_RULES = _job_rules()


def many_outputs(rule_name, kind):
    """The per-run outputs (MANY_OUTPUTS[kind]) of rule `rule_name`, a job that writes one for
    every run; none in a cluster job's own snakemake that does not run that rule: Snakemake
    builds an object per declared file (about a second per start at 10,000 runs), and no job
    takes these files as input (ingest and the report read them through the manifest and
    paired.json)."""
    if JOB_RULES is not None and rule_name not in JOB_RULES:
        return []
    return MANY_OUTPUTS[kind]
# one training per training recipe: runs that differ only in axes of later stages (ECO-M2F's
# beta) share it (RUNS is sorted by run id, so the first run of a training is stable)
TRAININGS = {}
for _run in RUNS.values():
    TRAININGS.setdefault(_run.train_id, _run)
# rule files of later stages add functions run -> [paths] here; their outputs join `rule all`
EXTRA_RUN_OUTPUTS = []

ABLATION = config["name"]
# the folder of pretrained checkpoints (ablation key `weights`, else $PIPELINES_WEIGHTS): every
# stage job gets it (pipelines/grid/weights.py); its files were checked by expand_grid above
from pipelines.grid.weights import folder_of as _weights_folder, shell_prefix  # noqa: E402

WEIGHTS_PREFIX = shell_prefix(_weights_folder(config))
RESULTS = config["results"]
# What the ablation-wide outputs depend on (every run's id and recipe, the tracking store, the
# baseline variant): the manifest, the paired benchmark and the ingest record live in a folder of
# this name, so a changed recipe, run set or baseline is a missing output under any rerun trigger,
# with or without .snakemake/. The baseline variant (grid.baseline, or the one variant without a
# method) is the ablation's, not a run's recipe (a run.json's own flag can be older): ingest and
# the paired benchmark are told it.
BASELINE = next((_run.variant for _run in RUNS.values() if _run.baseline), None)
BASELINE_ARGS = [f"--baseline-variant={BASELINE}"] if BASELINE else []
CONTENT = content_key(RUNS.values(), config["mlflow"]["tracking_uri"],
                      config["mlflow"]["artifact_location"], config["description"],
                      f"baseline={BASELINE}")
MANIFEST = f"{RESULTS}/runs/{ABLATION}/{CONTENT}/runs.txt"
INGESTED = f"{RESULTS}/ingest/{ABLATION}/{CONTENT}/ingested.json"
PAIRED = f"{RESULTS}/benchmark/{ABLATION}/{CONTENT}/paired.json"
# Rules name no conda environment (no `conda` directive). Jobs run in the environment snakemake
# itself runs in (the local .venv, or on a cluster the conda env built from environment.yml plus
# its one mmcv build step (workflow/README.md, "On a GPU cluster")). `--sdm conda` is not offered:
# mmcv 2.1.0 has no wheel for torch 2.13 and must be compiled against the installed torch and
# CUDA, which an environment Snakemake creates from environment.yml alone cannot do. (So `--lint`
# asks for a conda environment on every rule: the one accepted finding.)


# ids are checked by pipelines.grid; a generic pattern keeps the DAG build linear in runs
wildcard_constraints:
    run_id=r"[A-Za-z0-9_.\-]+",
    train_id=r"[A-Za-z0-9_.\-]+",
    train_recipe=r"[0-9a-f]+",
    recipe=r"[0-9a-f]+",


@functools.cache
def paths(run_id):
    """A run's output paths (made once per run: Snakemake asks for them job by job)."""
    return RunPaths.of(RESULTS, ABLATION, RUNS[run_id])


@functools.cache
def run_file(run_id, name):
    """One of a run's paths as text (``train_done``, ``config``...), made once per run."""
    return str(getattr(paths(run_id), name))


def get_run(wildcards):
    return RUNS[wildcards.run_id]


def get_training(wildcards):
    """The (first) run of a training, by its train id."""
    return TRAININGS[wildcards.train_id]


def get_train_done(wildcards):
    """The train_done.json of a run's training (in its recipe's work folder)."""
    return run_file(wildcards.run_id, "train_done")


def get_training_done(wildcards):
    """The train_done.json of a training, by its train id."""
    return run_file(get_training(wildcards).run_id, "train_done")


def get_config(wildcards):
    """A run's rendered config (its config.py beside its run.json), or a training's (the
    rendered config of its first run: runs that share a training share that text)."""
    run = get_run(wildcards) if "run_id" in wildcards.keys() else get_training(wildcards)
    return run_file(run.run_id, "config")


def write_rendered_configs():
    """Every run's rendered config, where it is missing (pipelines/grid/render.py): run by the
    Snakefile's onstart hook, before any job (a dry run writes nothing). The file is keyed by
    the recipe, which hashes its text: one that exists is the right one."""
    from pipelines.grid.render import render_run, write_configs

    written = write_configs(
        (paths(run.run_id).config, render_run(run, workflow.basedir))
        for run in RUNS.values()
        if not paths(run.run_id).config.is_file()
    )
    if written:
        print(f"rendered {written} run config(s) into {RESULTS}/runs/{ABLATION}/", file=sys.stderr)


def run_record(run):
    """A run's run.json document: its settings and the rendered config its stages read."""
    return run_document(run, RESULTS, ABLATION)


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


# One queue wait per training on a cluster (ablation key cluster.jobs, per_run by default): its
# training and the short stages of its runs (evaluation, FLOPs count, ECO-M2F's derive, gate and
# gated evaluation) form one Snakemake job group, which the SLURM executor submits as one job.
# A group is what the DAG connects, so the FLOPs count (which needs no weights) then waits for
# the training. Snakemake sizes a group job from its stages: the most memory and CPUs needed
# at once, the sum of the runtimes, and one GPU request (every stage of a group must ask for
# the same, so they all ask for the training's). Local runs ignore groups.
RUN_GROUP = "run" if config["cluster"]["jobs"] == "per_run" else None
GROUPED_STAGES = ("train", "evaluate", "flops")


def get_group_gpus():
    """The GPUs of a grouped stage: the most any grouped stage asks for."""
    return max(config["resources"][stage]["gpus"] for stage in GROUPED_STAGES)


def get_flops_wait(wildcards):
    """count_flops' input: its training's train_done.json when the stages of a training are one
    cluster job (so the DAG connects them), else nothing."""
    return get_train_done(wildcards) if RUN_GROUP else []


def get_resources(stage):
    """resources: for a stage; memory and runtime grow with each retry's attempt number."""
    res = config["resources"][stage]
    gpus = get_group_gpus() if RUN_GROUP and stage in GROUPED_STAGES else res["gpus"]
    gres = f"gpu:{gpus}" if gpus else ""
    return dict(
        mem_mb=lambda wildcards, attempt: res["mem_mb"] * attempt,
        runtime=lambda wildcards, attempt: res["runtime"] * attempt,
        gres=gres,
    )


def get_threads(stage):
    return config["resources"][stage]["cpus"]


def last_attempt(wildcards, attempt):
    """Resource: 1 on a job's last attempt, else 0 (a stage given
    `--record-failure 1` writes its output as a failure record instead of failing, so
    one failed run does not block the ablation's ingest, report and figures)."""
    return int(attempt > config["retries"])


# The per-run stage jobs (train_model, evaluate_model, count_flops and ECO-M2F's
# derive_exit_quality, train_gate, evaluate_gated) share one shape, built by the two helpers
# below: `resources: **stage_resources(stage)` (the stage's resources plus `last_attempt`) and
# `shell: stage_shell(...)`. (Snakemake's rule inheritance, `use rule` with a `with` block,
# cannot change a rule's shell, and the shell is what differs between them.)
def stage_resources(stage):
    """resources: of a per-run stage job: :func:`get_resources` plus `last_attempt`."""
    return dict(get_resources(stage), last_attempt=last_attempt)


def stage_shell(command, stderr_to_terminal=False):
    """shell: of a per-run stage job: `python -m pipelines <command>` with {threads} OpenMP
    threads, `--record-failure` on the last attempt (pipelines/stages/failures.py), and its output in
    the log (stderr also on the terminal with `stderr_to_terminal`). The command reads the run's
    rendered config ({params.config}); no option is applied on top of it. Every path is quoted
    ({x:q})."""
    return "".join((
        WEIGHTS_PREFIX,  # PIPELINES_WEIGHTS=<folder> when the ablation names one
        "OMP_NUM_THREADS={threads} PYTHONWARNINGS=ignore ",
        f"python -m pipelines {command} --record-failure {{resources.last_attempt}}",
        " > {log:q} 2> >(tee -a {log:q} >&2)" if stderr_to_terminal else " > {log:q} 2>&1",
    ))


def get_run_outputs(run_id):
    """Every file a run's stages write (its failure records are read from these)."""
    p = paths(run_id)
    out = [p.run_json, p.train_done, p.metrics]
    if config["stages"]["flops"]:
        out.append(p.flops)
    if config["stages"]["benchmark"]:
        out.append(p.benchmark)
    for extra in EXTRA_RUN_OUTPUTS:
        out.extend(extra(RUNS[run_id]))
    return [str(o) for o in out]


def get_ingest_inputs(wildcards=None):
    """What ingest waits for: every run's own outputs (each in its recipe's folder: a changed
    recipe is a missing input, so it is built whatever the rerun triggers). The files one job
    writes for every run come through one file of that job instead of one by one: the run.json
    files through the manifest (list_runs, which ingest takes anyway), the per-run latency
    files through paired.json. Asking a job for each of its thousands of outputs costs
    Snakemake a scan of that job's files per file: the DAG build grew with the square of the
    runs."""
    many = set(MANY_OUTPUTS["run_json"])
    if config["stages"]["benchmark"]:
        many |= set(MANY_OUTPUTS["benchmark"])
    out = [o for run_id in RUNS for o in get_run_outputs(run_id) if o not in many]
    return out + ([PAIRED] if config["stages"]["benchmark"] else [])


def get_final_outputs():
    """The targets of the default target (all): the ingest record (in the content key's folder,
    so a changed recipe or run set is a missing target; ingest waits for every run's outputs),
    the report, the figures and the HTML report."""
    return [
        INGESTED,
        f"{RESULTS}/report/{ABLATION}/report.md",
        # figures.smk: Pareto figures + tables and the HTML report, from the MLflow store
        f"{RESULTS}/figures/{ABLATION}/figures.json",
        f"{RESULTS}/report/{ABLATION}/html/index.html",
    ]


def check_disk_before_training(cores):
    """The checkpoint disk every training of the ablation keeps, against the results folder's
    free space (``python -m pipelines disk``, in its own process: it builds each model). Run by
    the Snakefile's ``onstart`` hook; exits the workflow with the one-line reason."""
    import subprocess

    folder = Path(RESULTS) / "disk" / ABLATION
    folder.mkdir(parents=True, exist_ok=True)
    runs = folder / f"runs-{os.getpid()}.json"  # one per head: search workers share a folder
    # trainings running at once, each with its resume checkpoints until it finishes
    jobs = min(len(TRAININGS), max(1, int(cores or 1) // max(1, get_threads("train"))))
    runs.write_text(json.dumps([run_record(r) for r in TRAININGS.values()], sort_keys=True))
    try:
        done = subprocess.run([sys.executable, "-m", "pipelines", "disk", "--runs", str(runs),
                               "--results", str(RESULTS), "--ablation", ABLATION,
                               "--out", str(folder / "estimate.json"), "--jobs", str(jobs)],
                              env=dict(os.environ, PYTHONWARNINGS="ignore"))  # as the rules
    finally:
        runs.unlink(missing_ok=True)
    if done.returncode:
        raise SystemExit(done.returncode)


def hold_results_lock():
    """One writer per results folder (pipelines/lock.py): this head's exclusive lock, taken in
    the onstart hook (a dry run takes none); a second head is refused in one line."""
    from pipelines.lock import hold

    try:
        hold(RESULTS, what=f"snakemake on ablation {ABLATION!r}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def report_failed_runs():
    """At the end of a run: every failed run with its stage and reason, and exit status 3 when
    there is one (pipelines/stages/failures.py), after the others were ingested and reported."""
    from pipelines.stages.failures import SOME_RUNS_FAILED, failed_runs, summary_lines

    failed = failed_runs({run_id: get_run_outputs(run_id) for run_id in RUNS})
    for line in summary_lines(failed, len(RUNS)):
        print(line, file=sys.stderr)
    if failed:
        raise SystemExit(SOME_RUNS_FAILED)
