# Single writer of the MLflow store (a local rule: never many jobs writing one SQLite file),
# then a markdown report of the ablation.


localrules:
    ingest_results,
    write_report,


rule ingest_results:
    input:
        get_all_run_outputs,
    output:
        ingested=f"{RESULTS}/ingest/{ABLATION}/ingested.json",
    log:
        f"{RESULTS}/logs/{ABLATION}/ingest_results.log",
    params:
        ablation=ABLATION,
        results=lambda wildcards, output: Path(output[0]).parents[2],
        tracking_uri=config["mlflow"]["tracking_uri"],
        artifacts=config["mlflow"]["artifact_location"],
        description=config["description"],
        runs=lambda wildcards: [str(paths(r).run_json) for r in RUNS],
    conda:
        CONDA_ENV
    shell:
        "PYTHONWARNINGS=ignore python -m pipelines ingest --ablation {params.ablation:q} "
        "--results {params.results:q} "
        "--tracking-uri {params.tracking_uri:q} --artifact-location {params.artifacts:q} "
        "--description={params.description:q} --out {output.ingested:q} "
        "--runs {params.runs:q} > {log:q} 2>&1"


rule write_report:
    input:
        get_all_run_outputs,
    output:
        report=f"{RESULTS}/report/{ABLATION}/report.md",
    log:
        f"{RESULTS}/logs/{ABLATION}/write_report.log",
    params:
        ablation=ABLATION,
        results=lambda wildcards, output: Path(output[0]).parents[2],
        runs=lambda wildcards: [str(paths(r).run_json) for r in RUNS],
        tracking_uri=config["mlflow"]["tracking_uri"],
    conda:
        CONDA_ENV
    shell:
        "python -m pipelines report --ablation {params.ablation:q} --results {params.results:q} "
        "--out {output.report:q} --tracking-uri {params.tracking_uri:q} "
        "--runs {params.runs:q} > {log:q} 2>&1"
