# ECO-M2F: train with exits once, derive once, then a gate and a gated evaluation per
# beta. A run is gated when its config builds the early_exit method and it has a `beta` setting
# (the gate-stage axis of pipelines/models/early_exit.py):
#
#   train_model (train.smk)  once per training: runs that differ only in beta share it
#   derive_exit_quality      per training: results/derive/<ablation>/<train-id>/<train recipe>/derive.json
#                            (+ quality.parquet, quality.features.parquet beside; beta-free)
#   train_gate               per run: results/gate/<ablation>/<run-id>/<recipe>/gate.json (+ gate.pth)
#   evaluate_gated           per run: the run's metrics.json (evaluate's names + mean_exit,
#                            exit_histogram, ladder, oracle) and its flops.json (mean GFLOPs per
#                            image at the gated exits), in place of evaluate_model / count_flops
#
# Adding or changing a beta is a new run id with the same train id: only its gate and gated
# evaluation run (and ingest/report after them). The JSON outputs may be failure records
# (pipelines/stages/failures.py); the Parquet tables and the gate weights are never declared, like
# checkpoints, so a retry overwrites them atomically instead of deleting them first.
from pipelines.eco_m2f.layout import id_pattern, is_gated, stage_files  # noqa: E402


# a gated run has an axis of a later stage (run.stages): without one no run is, and the method
# registry (which imports mmengine) is not read at every snakemake start
GATED_RUNS = {run_id: run for run_id, run in RUNS.items() if run.stages and is_gated(run)}
ECO_FILES = {run_id: stage_files(RESULTS, ABLATION, run) for run_id, run in GATED_RUNS.items()}
# train id -> the files of (any) one of its runs: the derive files are the training's
GATED_TRAININGS = {run.train_id: ECO_FILES[run_id] for run_id, run in GATED_RUNS.items()}
# a gated run's derive and gate summaries join `rule all` (its metrics/flops already do)
EXTRA_RUN_OUTPUTS.append(
    lambda run: (
        [ECO_FILES[run.run_id]["derive"], ECO_FILES[run.run_id]["gate"]]
        if run.run_id in GATED_RUNS
        else []
    )
)


# evaluate_gated writes a gated run's metrics.json and flops.json; the rules of every run match
# those paths too, so the gated one wins for the ids it is constrained to
ruleorder: evaluate_gated > evaluate_model
ruleorder: evaluate_gated > count_flops


rule derive_exit_quality:
    input:
        done=get_training_done,
    output:
        summary=f"{RESULTS}/derive/{ABLATION}/{{train_id}}/{{train_recipe}}/derive.json",
    log:
        f"{RESULTS}/logs/{ABLATION}/{{train_id}}/derive_exit_quality-{{train_recipe}}.log",
    wildcard_constraints:
        train_id=id_pattern(GATED_TRAININGS),
    params:
        config=get_config,
        table=lambda wildcards: GATED_TRAININGS[wildcards.train_id]["table"],
        data_root=config["data"]["root"],
    threads: get_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    group: RUN_GROUP
    retries: config["retries"]
    shell:
        stage_shell(
            "derive-exits {params.config:q} --train-done {input.done:q} --out {params.table:q} "
            "--summary {output.summary:q} --data-root {params.data_root:q}"
        )


rule train_gate:
    input:
        derived=lambda wildcards: ECO_FILES[wildcards.run_id]["derive"],
    output:
        summary=f"{RESULTS}/gate/{ABLATION}/{{run_id}}/{{recipe}}/gate.json",
    log:
        f"{RESULTS}/logs/{ABLATION}/{{run_id}}/train_gate-{{recipe}}.log",
    wildcard_constraints:
        run_id=id_pattern(GATED_RUNS),
    params:
        config=get_config,
        beta=lambda wildcards: get_run(wildcards).settings["beta"],
        table=lambda wildcards: ECO_FILES[wildcards.run_id]["table"],
        gate=lambda wildcards: ECO_FILES[wildcards.run_id]["gate_weights"],
    threads: 1
    resources:
        **stage_resources("evaluate"),
    group: RUN_GROUP
    retries: config["retries"]
    shell:
        stage_shell(
            "train-gate --table {params.table:q} --beta {params.beta} --config {params.config:q} "
            "--out {params.gate:q} --json {output.summary:q} --upstream {input.derived:q}"
        )


rule evaluate_gated:
    input:
        done=get_train_done,
        gate=f"{RESULTS}/gate/{ABLATION}/{{run_id}}/{{recipe}}/gate.json",
    output:
        metrics=f"{RESULTS}/evaluate/{ABLATION}/{{run_id}}/{{recipe}}/metrics.json",
        flops=f"{RESULTS}/flops/{ABLATION}/{{run_id}}/{{recipe}}/flops.json",
    log:
        f"{RESULTS}/logs/{ABLATION}/{{run_id}}/evaluate_gated-{{recipe}}.log",
    wildcard_constraints:
        run_id=id_pattern(GATED_RUNS),
    params:
        config=get_config,
        gate=lambda wildcards: ECO_FILES[wildcards.run_id]["gate_weights"],
        table=lambda wildcards: ECO_FILES[wildcards.run_id]["table"],
        data_root=config["data"]["root"],
    threads: get_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    group: RUN_GROUP
    retries: config["retries"]
    shell:
        stage_shell(
            "evaluate-gated {params.config:q} --train-done {input.done:q} --gate {params.gate:q} "
            "--table {params.table:q} --upstream {input.gate:q} --out {output.metrics:q} "
            "--flops-json {output.flops:q} --data-root {params.data_root:q}"
        )
