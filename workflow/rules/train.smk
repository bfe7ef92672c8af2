# Per run: its resolved settings (run.json), training (resumable), evaluation.
# Checkpoints live in results/train/<ablation>/<run-id>/work-<recipe hash>/ and are never
# declared outputs: a retry or `--rerun-incomplete` resumes from the last one.


localrules:
    describe_run,


rule describe_run:
    output:
        run=f"{RESULTS}/runs/{ABLATION}/{{run_id}}/run.json",
    log:
        f"{RESULTS}/logs/{ABLATION}/{{run_id}}/describe_run.log",
    params:
        run=lambda wildcards: json.dumps(get_run(wildcards).to_dict(), sort_keys=True),
    conda:
        CONDA_ENV
    shell:
        "python -m pipelines grid --run {params.run:q} --out {output.run} > {log} 2>&1"


rule train_model:
    input:
        run=f"{RESULTS}/runs/{ABLATION}/{{run_id}}/run.json",
        data=get_dataset_marker(),
    output:
        done=f"{RESULTS}/train/{ABLATION}/{{run_id}}/train_done.json",
    log:
        f"{RESULTS}/logs/{ABLATION}/{{run_id}}/train.log",
    params:
        config=lambda wildcards: get_run(wildcards).config,
        work_dir=lambda wildcards: paths(wildcards.run_id).work_dir(
            get_run(wildcards).recipe_hash
        ),
        data_root=get_data_root,
        options=get_options,
    threads: get_threads("train")
    resources:
        **get_resources("train"),
    retries: config["retries"]
    # stdout (mmengine's log) goes to the log; stderr (the progress bar) to the log and the
    # terminal, so `make demo` shows training progress next to snakemake's own.
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} PYTHONWARNINGS=ignore "
        "python -m pipelines train {params.config} --work-dir {params.work_dir} "
        "--data-root {params.data_root} --done-file {output.done} "
        "--cfg-options {params.options} > {log} 2> >(tee -a {log} >&2)"


rule evaluate_model:
    input:
        done=f"{RESULTS}/train/{ABLATION}/{{run_id}}/train_done.json",
    output:
        metrics=f"{RESULTS}/evaluate/{ABLATION}/{{run_id}}/metrics.json",
    log:
        f"{RESULTS}/logs/{ABLATION}/{{run_id}}/evaluate.log",
    params:
        config=lambda wildcards: get_run(wildcards).config,
        work_dir=f"{RESULTS}/evaluate/{ABLATION}/{{run_id}}/work",
        data_root=config["data"]["root"],
        options=get_options,
    threads: get_threads("evaluate")
    resources:
        **get_resources("evaluate"),
    retries: config["retries"]
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} PYTHONWARNINGS=ignore "
        "python -m pipelines evaluate {params.config} "
        "$(python -m pipelines grid --checkpoint-of {input.done}) "
        "--out {output.metrics} --work-dir {params.work_dir} --data-root {params.data_root} "
        "--cfg-options {params.options} > {log} 2>&1"
