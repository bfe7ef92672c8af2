# Per run: cost of the model as configured (no trained weights needed, so these run beside
# training): GFLOPs per component, and the paired latency of every run in one job.


rule count_flops:
    input:
        # nothing when each stage is its own cluster job; the training's train_done.json when
        # the stages of a training are one (common.smk: RUN_GROUP)
        get_flops_wait,
    output:
        flops=f"{RESULTS}/flops/{ABLATION}/{{run_id}}/{{recipe}}/flops.json",
    log:
        f"{RESULTS}/logs/{ABLATION}/{{run_id}}/count_flops-{{recipe}}.log",
    params:
        config=get_config,
        shape=config["flops"]["shape"],
    threads: get_threads("flops")
    resources:
        **stage_resources("flops"),
    group: RUN_GROUP
    retries: config["retries"]
    shell:
        stage_shell("flops {params.config:q} --shape {params.shape} --json {output.flops:q}")


rule benchmark_ablation:
    # Paired latency: one job measures every run's model (and the baseline's) interleaved in
    # one process on one node (pipelines/stages/benchmark.py); it writes each run's benchmark.json,
    # which ingest reads, and paired.json (host, CPU/GPU model, threads, library versions).
    input:
        # every run.json (written with the manifest by list_runs)
        manifest=MANIFEST,
    output:
        paired=PAIRED,
        runs=many_outputs("benchmark_ablation", "benchmark"),
    log:
        f"{RESULTS}/logs/{ABLATION}/benchmark_ablation.log",
    params:
        results=lambda wildcards, output: Path(output.paired).parents[3],
        ablation=ABLATION,
        shape=config["benchmark"]["shape"],
        device=config["benchmark"]["device"],
        repeats=config["benchmark"]["repeats"],
        warmup=config["benchmark"]["warmup"],
        # the ablation's baseline variant (common.smk: BASELINE), whatever its name
        baseline=BASELINE_ARGS,
        # GPU settings: throughput batch and precisions, when the config sets them
        settings=lambda wildcards: (
            (["--batch", str(config["benchmark"]["batch"])] if config["benchmark"].get("batch")
             else [])
            + (["--precisions", *config["benchmark"]["precisions"]]
               if config["benchmark"].get("precisions") else [])),
    threads: get_threads("benchmark")
    resources:
        **get_resources("benchmark"),
    retries: config["retries"]
    shell:
        "OMP_NUM_THREADS={threads} PYTHONWARNINGS=ignore "
        "python -m pipelines benchmark --runs @{input.manifest:q} --results {params.results:q} "
        "--ablation {params.ablation:q} --shape {params.shape} --device {params.device} "
        "--repeats {params.repeats} --warmup {params.warmup} {params.settings:q} {params.baseline:q} "
        "--json {output.paired:q} > {log:q} 2>&1"
