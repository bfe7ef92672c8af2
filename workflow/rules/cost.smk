# Per run: cost of the model as configured (no trained weights needed, so these run beside
# training): GFLOPs per component and latency.


rule count_flops:
    input:
        run=f"{RESULTS}/runs/{ABLATION}/{{run_id}}/run.json",
    output:
        flops=f"{RESULTS}/flops/{ABLATION}/{{run_id}}/flops.json",
    log:
        f"{RESULTS}/logs/{ABLATION}/{{run_id}}/count_flops.log",
    params:
        config=lambda wildcards: get_run(wildcards).config,
        shape=config["flops"]["shape"],
        options=get_options,
    threads: get_threads("flops")
    resources:
        **get_resources("flops"),
    retries: config["retries"]
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} PYTHONWARNINGS=ignore "
        "python -m pipelines flops {params.config} --shape {params.shape} --json {output.flops} "
        "--cfg-options {params.options} > {log} 2>&1"


rule benchmark_model:
    input:
        run=f"{RESULTS}/runs/{ABLATION}/{{run_id}}/run.json",
    output:
        benchmark=f"{RESULTS}/benchmark/{ABLATION}/{{run_id}}/benchmark.json",
    log:
        f"{RESULTS}/logs/{ABLATION}/{{run_id}}/benchmark_model.log",
    params:
        config=lambda wildcards: get_run(wildcards).config,
        shape=config["benchmark"]["shape"],
        device=config["benchmark"]["device"],
        repeats=config["benchmark"]["repeats"],
        warmup=config["benchmark"]["warmup"],
        options=get_options,
    threads: get_threads("benchmark")
    resources:
        **get_resources("benchmark"),
    retries: config["retries"]
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} PYTHONWARNINGS=ignore "
        "python -m pipelines benchmark {params.config} --shape {params.shape} --device {params.device} "
        "--repeats {params.repeats} --warmup {params.warmup} "
        "--json {output.benchmark} --cfg-options {params.options} > {log} 2>&1"
