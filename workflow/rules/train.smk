# Per run: training (resumable, one per training recipe) and evaluation (each run's settings,
# run.json, are written by list_runs, report.smk). Every output lives in its recipe's folder
# (pipelines.grid.RunPaths): metrics.json in results/<stage>/<ablation>/<run-id>/<recipe>/. Checkpoints live in results/train/<ablation>/<train-id>/work-<train recipe>/ and
# are never declared outputs: a retry or `--rerun-incomplete` resumes from the last one. The
# recipe is content (resolved config, data, code: pipelines/grid/), so a changed config, base
# file or method file gives a new work folder and a new training, for the runs that use it only.
#
# Failures stay local (pipelines/stages/failures.py): on a job's last attempt (`last_attempt`), a
# failing train/evaluate writes its output as a failure record and exits 0, so the other runs
# are still ingested, reported and drawn; ingest records the run as FAILED with its reason.
# Every path is quoted ({x:q}): a results folder may hold spaces.



rule train_model:
    input:
        data=get_dataset_marker(),
    output:
        # the recipe's own folder (checkpoints beside, undeclared): a changed recipe is a new
        # output, so exactly the trainings whose content changed run again
        done=f"{RESULTS}/train/{ABLATION}/{{train_id}}/work-{{train_recipe}}/train_done.json",
    log:
        f"{RESULTS}/logs/{ABLATION}/{{train_id}}/train-{{train_recipe}}.log",
    params:
        config=get_config,
        work_dir=lambda wildcards, output: os.path.dirname(output.done),
        data_root=get_data_root,
        # one process per GPU of the job (torchrun, pipelines/stages/launch.py); 1 on CPU
        nproc=max(1, config["resources"]["train"]["gpus"]),
    threads: get_threads("train")
    resources:
        **stage_resources("train"),
    group: RUN_GROUP
    retries: config["retries"]
    # stdout (mmengine's log) goes to the log; stderr (the progress bar) to the log and the
    # terminal, so `make demo` shows training progress next to snakemake's own.
    shell:
        stage_shell(
            "train {params.config:q} --work-dir {params.work_dir:q} "
            "--data-root {params.data_root:q} --done-file {output.done:q} --nproc {params.nproc}",
            stderr_to_terminal=True,
        )


# A rung of a multi-fidelity search (pipelines/search/fidelity.py): the same training, in the
# same work folder, stopped after iteration {stop_at} of its own schedule at a checkpoint and
# validation iteration (`train --stop-at`); asked for by the search only. A later rung, or the
# training's own train_done.json, continues from that checkpoint: no iteration is repeated.
rule train_rung:
    input:
        data=get_dataset_marker(),
    output:
        done=f"{RESULTS}/train/{ABLATION}/{{train_id}}/work-{{train_recipe}}/rung-{{stop_at}}.json",
    wildcard_constraints:
        stop_at=r"\d+",
    log:
        f"{RESULTS}/logs/{ABLATION}/{{train_id}}/train-{{train_recipe}}-rung-{{stop_at}}.log",
    params:
        config=get_config,  # the training's rendered config
        work_dir=lambda wildcards, output: os.path.dirname(output.done),
        data_root=get_data_root,
        nproc=max(1, config["resources"]["train"]["gpus"]),
    threads: get_threads("train")
    resources:
        **stage_resources("train"),
    retries: config["retries"]
    shell:
        stage_shell(
            "train {params.config:q} --work-dir {params.work_dir:q} "
            "--data-root {params.data_root:q} --done-file {output.done:q} "
            "--stop-at {wildcards.stop_at} --nproc {params.nproc}",
            stderr_to_terminal=True,
        )


rule evaluate_model:
    input:
        done=get_train_done,
    output:
        metrics=f"{RESULTS}/evaluate/{ABLATION}/{{run_id}}/{{recipe}}/metrics.json",
    log:
        f"{RESULTS}/logs/{ABLATION}/{{run_id}}/evaluate-{{recipe}}.log",
    params:
        config=get_config,
        work_dir=lambda wildcards, output: os.path.join(os.path.dirname(output.metrics), "work"),
        data_root=config["data"]["root"],
    threads: get_threads("evaluate")
    resources:
        **stage_resources("evaluate"),
    group: RUN_GROUP
    retries: config["retries"]
    shell:
        stage_shell(
            "evaluate {params.config:q} --train-done {input.done:q} --out {output.metrics:q} "
            "--work-dir {params.work_dir:q} --data-root {params.data_root:q}"
        )
