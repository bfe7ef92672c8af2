# The analysis (runs loaded once -> settings -> fronts -> verdicts, saved), then the paper
# figures, Pareto tables and the HTML report, all read from that saved analysis.
# Needs common.smk (RESULTS, ABLATION, INGESTED) included first.
#
#   snakemake --cores 1 figures


localrules:
    analyse_runs,
    plot_pareto,
    write_html_report,
    figures,


rule analyse_runs:
    input:
        ingested=INGESTED,
    output:
        analysis=ANALYSIS,
    log:
        f"{RESULTS}/logs/{ABLATION}/analyse_runs.log",
    params:
        tracking_uri=config["mlflow"]["tracking_uri"],
        ablation=ABLATION,
        out=lambda wildcards, output: Path(output.analysis).parent,
    resources:
        cpus=1,
        mem_mb=2000,
    shell:
        "python -m pipelines analyse --tracking-uri {params.tracking_uri:q} "
        "--experiment {params.ablation:q} --out {params.out:q} > {log:q} 2>&1"


rule plot_pareto:
    input:
        analysis=ANALYSIS,
    output:
        manifest=f"{RESULTS}/figures/{ABLATION}/figures.json",
        table_md=f"{RESULTS}/figures/{ABLATION}/pareto_points.md",
        table_tex=f"{RESULTS}/figures/{ABLATION}/pareto_points.tex",
        points=f"{RESULTS}/figures/{ABLATION}/points.csv",
    log:
        f"{RESULTS}/logs/{ABLATION}/plot_pareto.log",
    params:
        analysis=lambda wildcards, input: Path(input.analysis).parent,
        out=lambda wildcards, output: Path(output.manifest).parent,
    resources:
        cpus=1,
        mem_mb=2000,
    shell:
        "python -m pipelines figures --analysis {params.analysis:q} --out {params.out:q} "
        "> {log:q} 2>&1"


rule write_html_report:
    # links the figures plot_pareto drew (a relative path), draws none
    input:
        analysis=ANALYSIS,
        figures=rules.plot_pareto.output.manifest,
    output:
        page=f"{RESULTS}/report/{ABLATION}/html/index.html",
    log:
        f"{RESULTS}/logs/{ABLATION}/write_html_report.log",
    params:
        analysis=lambda wildcards, input: Path(input.analysis).parent,
        figures=lambda wildcards, input: Path(input.figures).parent,
        ui=(f"--mlflow-ui {shlex.quote(config['mlflow']['ui'])}"
            if config["mlflow"].get("ui") else ""),
        out=lambda wildcards, output: Path(output.page).parent,
    resources:
        cpus=1,
        mem_mb=2000,
    shell:
        "python -m pipelines html-report --analysis {params.analysis:q} "
        "--figures {params.figures:q} {params.ui} --out {params.out:q} > {log:q} 2>&1"


rule figures:
    input:
        rules.plot_pareto.output,
        rules.write_html_report.output,
