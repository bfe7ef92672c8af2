# Single writer of the MLflow store (a local rule: never many jobs writing one SQLite file),
# then a markdown report of the ablation.

# the saved analysis of the ingested runs (figures.smk: analyse_runs), read by every report
ANALYSIS = f"{RESULTS}/analysis/{ABLATION}/analysis.json"


localrules:
    list_runs,
    ingest_results,
    write_report,


rule list_runs:
    # Every run's settings (its run.json, in its recipe's folder) and the manifest that lists
    # them, one per line: the stages that read all runs take `--runs @FILE`, since thousands of
    # paths do not fit one command line. The manifest is in the folder of the ablation's content
    # key (common.smk: CONTENT), so a changed run set or recipe is a new file. One local job
    # writes them all (a job per run.json cost a Python start each); the run.json files are
    # outputs that no rule asks for one by one, which would cost Snakemake a scan of this
    # job's outputs per file.
    output:
        manifest=MANIFEST,
        runs=many_outputs("list_runs", "run_json"),
    log:
        f"{RESULTS}/logs/{ABLATION}/list_runs.log",
    run:
        from pipelines.grid import write_runs

        write_runs(RUNS.values(), RESULTS, ABLATION, output.manifest, log=log[0])


rule ingest_results:
    # The record of this content key (common.smk: INGESTED); once it is written, the records of
    # other keys are retired, so going back to an earlier setting ingests again.
    input:
        get_ingest_inputs,
        manifest=MANIFEST,
    output:
        ingested=INGESTED,
    log:
        f"{RESULTS}/logs/{ABLATION}/ingest_results.log",
    params:
        ablation=ABLATION,
        results=lambda wildcards, output: Path(output.ingested).parents[3],
        tracking_uri=config["mlflow"]["tracking_uri"],
        artifacts=config["mlflow"]["artifact_location"],
        description=config["description"],
        records=lambda wildcards, output: Path(output.ingested).parent.parent,
        key=CONTENT,
        baseline=BASELINE_ARGS,
    shell:
        "PYTHONWARNINGS=ignore python -m pipelines ingest --ablation {params.ablation:q} "
        "--results {params.results:q} "
        "--tracking-uri {params.tracking_uri:q} --artifact-location {params.artifacts:q} "
        "--description={params.description:q} {params.baseline:q} --out {output.ingested:q} "
        "--runs @{input.manifest:q} > {log:q} 2>&1 && "
        "find {params.records:q} -mindepth 1 -maxdepth 1 -type d ! -name {params.key:q} "
        "-exec rm -rf {{}} +"


rule write_report:
    # every run's outputs through the ingest record (whose rule waits for them all)
    input:
        manifest=MANIFEST,
        ingested=INGESTED,
        analysis=ANALYSIS,
    output:
        report=f"{RESULTS}/report/{ABLATION}/report.md",
    log:
        f"{RESULTS}/logs/{ABLATION}/write_report.log",
    params:
        ablation=ABLATION,
        results=lambda wildcards, output: Path(output.report).parents[2],
        tracking_uri=config["mlflow"]["tracking_uri"],
        analysis=lambda wildcards, input: Path(input.analysis).parent,
    shell:
        "python -m pipelines report --ablation {params.ablation:q} --results {params.results:q} "
        "--out {output.report:q} --tracking-uri {params.tracking_uri:q} "
        "--analysis {params.analysis:q} --runs @{input.manifest:q} > {log:q} 2>&1"
