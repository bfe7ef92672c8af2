# The dataset: the synthetic set is written by the workflow; a real one (ADE20K, Cityscapes)
# is given by the user in `data.root` and only checked by the stages that read it.
if config["data"]["synthetic"] is not None:
    from pipelines.grid import synthetic_generator_hash

    SYNTHETIC_GENERATOR = synthetic_generator_hash()

    rule generate_dataset:
        output:
            meta=f"{config['data']['root']}/meta.json",
        log:
            f"{RESULTS}/logs/{ABLATION}/generate_dataset.log",
        params:
            root=lambda wildcards, output: os.path.dirname(output.meta),
            spec=config["data"]["synthetic"],
            # the generator's code is part of the dataset's identity (as it is of every recipe):
            # a changed generator writes the set again (Snakemake's params trigger)
            generator=SYNTHETIC_GENERATOR,
        resources:
            mem_mb=2000,
            runtime=30,
        shell:
            "python -m pipelines data synthetic --out {params.root:q} --train {params.spec[train]} "
            "--val {params.spec[val]} --size {params.spec[size]} --seed {params.spec[seed]} "
            "--no-progress > {log:q} 2>&1"
