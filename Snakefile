# The ablation DAG: dataset -> train -> evaluate, flops, benchmark -> ingest (MLflow) -> report.
#
#   snakemake --cores 2                                   (demo grid, local, CPU)
#   snakemake --cores 2 --configfile configs/ablations/ade20k.yaml --config data='{root: /data/ade}'
#   snakemake --profile slurm --configfile configs/ablations/ade20k.yaml     (see workflow/README.md)
#
# Everything worth testing lives in pipelines/ (grid expansion: pipelines/grid/); the rules
# only call `python -m pipelines <stage>`.
from snakemake.utils import min_version

min_version("9.0")


# The demo ablation by default. An ablation given with --configfile replaces it instead of being
# merged into it (Snakemake's default merge would leak the demo's variants and settings).
if not workflow.overwrite_configfiles:

    configfile: "configs/ablations/demo.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/cost.smk"
include: "workflow/rules/eco_m2f.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/figures.smk"


rule all:
    input:
        get_final_outputs(),
    default_target: True


# Before any job: this head's lock on the results folder (one writer per folder,
# pipelines/lock.py); each run's config rendered once into its recipe's folder; how many
# trainings and jobs will run, and about how long
# (pipelines/analysis/budget.py); with trainings pending, the checkpoint disk they keep, and
# no job at all when the results folder cannot hold it (pipelines/stages/disk.py, which says why this
# is not a job the trainings depend on).
onstart:
    from pipelines.analysis.budget import print_plan

    hold_results_lock()
    # every run's rendered config (its config.py beside its run.json), which its stages read
    write_rendered_configs()

    cores = getattr(workflow, "cores", None) or workflow.resource_settings.cores
    # the DAG's own count of the other jobs (the `all` target included, as Snakemake counts)
    other = sum(1 for job in workflow.dag.needrun_jobs() if job.rule.name != "train_model")
    plan = print_plan(config, TRAININGS, get_final_outputs(), cores, other_jobs=other)
    if plan.trainings_pending:
        check_disk_before_training(cores)


# After the last job: the failed runs, each with its stage and reason, and exit status 3 when
# there is one (the others are ingested and reported all the same).
onsuccess:
    report_failed_runs()
