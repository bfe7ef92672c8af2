# Paper figures, Pareto tables and the HTML report, redrawn from the MLflow store after ingest.
# Needs common.smk (RESULTS, ABLATION, CONDA_ENV) and report.smk (ingest_results) included first.
#
#   snakemake --cores 1 figures


localrules:
    plot_pareto,
    write_html_report,
    figures,


rule plot_pareto:
    input:
        ingested=INGESTED,
    output:
        manifest=f"{RESULTS}/figures/{ABLATION}/figures.json",
        table_md=f"{RESULTS}/figures/{ABLATION}/pareto_points.md",
        table_tex=f"{RESULTS}/figures/{ABLATION}/pareto_points.tex",
        points=f"{RESULTS}/figures/{ABLATION}/points.csv",
    log:
        f"{RESULTS}/logs/{ABLATION}/plot_pareto.log",
    params:
        tracking_uri=config["mlflow"]["tracking_uri"],
        ablation=ABLATION,
        out=lambda wildcards, output: Path(output.manifest).parent,
    resources:
        cpus=1,
        mem_mb=2000,
    conda:
        CONDA_ENV
    shell:
        "python -m pipelines figures --tracking-uri {params.tracking_uri:q} "
        "--experiment {params.ablation:q} --out {params.out:q} > {log:q} 2>&1"


rule write_html_report:
    input:
        ingested=INGESTED,
    output:
        page=f"{RESULTS}/report/{ABLATION}/html/index.html",
    log:
        f"{RESULTS}/logs/{ABLATION}/write_html_report.log",
    params:
        tracking_uri=config["mlflow"]["tracking_uri"],
        ablation=ABLATION,
        out=lambda wildcards, output: Path(output.page).parent,
    resources:
        cpus=1,
        mem_mb=2000,
    conda:
        CONDA_ENV
    shell:
        "python -m pipelines html-report --tracking-uri {params.tracking_uri:q} "
        "--experiment {params.ablation:q} --out {params.out:q} > {log:q} 2>&1"


rule figures:
    input:
        rules.plot_pareto.output,
        rules.write_html_report.output,
