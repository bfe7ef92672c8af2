"""Record ``grid_tiny.csv``: a real grid of tiny trainings, run by the pipeline's own Snakefile.

The table is what ``pipelines/benchmarks/search_replay.py`` replays a search against: 25 settings
(the baseline and 24 PRO-SCALE settings: 6 schedules x TRC on/off x LPE on/off) of the tiny
R-18 Mask2Former at 64x64 on the synthetic set, each trained for ``--iters`` iterations from
random weights, evaluated (mIoU, percent) and traced (GFLOPs at 64x64) by the ``train``,
``evaluate`` and ``flops`` rules, exactly as a grid run does it.

Recorded with (from a clean snapshot of the repository, so that concurrent edits cannot leak
into the jobs; about 25 min of one CPU core)::

    nice -n 10 .venv/bin/python tests/data/record_grid_tiny.py --work /tmp/grid_tiny --cores 2

It writes ``tests/data/grid_tiny.csv`` (one row per run: run id, variant, axis values, mIoU,
GFLOPs) next to this file, and the ablation it ran as ``tests/data/grid_tiny.yaml``
(repository-relative paths; the base ablation of ``configs/search/grid_tiny.yaml``).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

SCHEDULES = ["1-1-1", "2-2-2", "3-3-3", "1-1-4", "2-3-4", "1-1-6"]
# 64x64 inputs (the model is fully convolutional + deformable attention); mmseg wants tuples
TINY_OPTIONS = [
    "model.data_preprocessor.size=(64,64)",
    "train_dataloader.dataset.pipeline.2.scale=(64,64)",
    "train_dataloader.dataset.pipeline.3.crop_size=(64,64)",
    "test_dataloader.dataset.pipeline.1.scale=(64,64)",
    "val_dataloader.dataset.pipeline.1.scale=(64,64)",
    "model.decode_head.train_cfg.num_points=1024",
]
COLUMNS = ("run_id", "variant", "schedule", "trc", "lpe", "seed", "max_iters", "miou",
           "gflops_total", "gflops_pixel_decoder", "gflops_encoder")


def ablation(work: Path, iters: int, portable: bool = False) -> dict:
    """The recorded grid as an ablation config (absolute paths: the DAG runs in ``work``;
    ``portable``: paths relative to the repository, as shipped in ``grid_tiny.yaml``)."""
    models = Path("configs/models") if portable else REPO / "configs" / "models"
    work = Path(".") if portable else work
    return {
        "name": "grid_tiny",
        "description": "tiny models at 64x64: baseline + 24 PRO-SCALE settings (search replay)",
        "results": str(work / "results"),
        "data": {"root": str(work / "data" / "ablations" / "grid_tiny" / "synthetic"),
                 "synthetic": {"train": 64, "val": 16, "size": 64, "seed": 0}},
        "train": {"max_iters": iters,
                  "cfg_options": TINY_OPTIONS + [f"default_hooks.checkpoint.interval={iters}",
                                                 "default_hooks.logger.interval=20"]},
        "grid": {"seed": [0], "variants": {
            "baseline": {"config": str(models / "mask2former_r18_synthetic-128x128.py")},
            "pro_scale": {"config": str(models / "mask2former_r18_proscale-333_synthetic-128x128.py"),
                          "axes": {"schedule": SCHEDULES, "trc": [False, True],
                                   "lpe": [False, True]}}}},
        "stages": {"flops": True, "benchmark": False},
        "flops": {"shape": [64, 64]},
        "mlflow": {"tracking_uri": f"sqlite:///{work / 'results' / 'mlflow.db'}",
                   "artifact_location": str(work / "results" / "mlartifacts")},
        "resources": {"train": {"gpus": 0, "cpus": 1, "mem_mb": 3000, "runtime": 30},
                      "evaluate": {"gpus": 0, "cpus": 1, "mem_mb": 3000, "runtime": 10},
                      "flops": {"gpus": 0, "cpus": 1, "mem_mb": 3000, "runtime": 10}},
        "retries": 0,
    }


def main(argv=None) -> int:
    import yaml

    from pipelines.grid import RunPaths, expand_grid

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the DAG")
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "grid_tiny.csv")
    parser.add_argument("--collect-only", action="store_true",
                        help="do not run the DAG; write the rows of the runs that finished")
    parser.add_argument("--yaml-only", action="store_true",
                        help="only write grid_tiny.yaml (the ablation, repo-relative paths)")
    args = parser.parse_args(argv)
    (HERE / "grid_tiny.yaml").write_text(
        "# The grid recorded in grid_tiny.csv (written by tests/data/record_grid_tiny.py)\n"
        + yaml.safe_dump(ablation(Path("."), args.iters, portable=True), sort_keys=False))
    if args.yaml_only:
        return 0
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    config = ablation(work, args.iters)
    configfile = work / "grid_tiny.yaml"
    if not args.collect_only:
        configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    runs = expand_grid(config, repo=REPO)
    targets = []
    for run in runs:
        p = RunPaths.of(config["results"], config["name"], run)
        targets += [str(p.metrics), str(p.flops)]
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
    start = time.monotonic()
    if not args.collect_only:  # rerunning the same command resumes: finished runs are kept
        subprocess.run([str(bin_dir / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
                        "--configfile", str(configfile), "--directory", str(work),
                        "--cores", str(args.cores), "--rerun-incomplete", *targets],
                       check=True, env=env)
    print(f"DAG finished in {time.monotonic() - start:.0f} s")
    rows = []
    # every finished run, read from the files its jobs wrote (run.json has the settings), so
    # that the table does not depend on how the grid spells run ids
    results = Path(config["results"])
    from pipelines.grid import RunPaths

    for run_json in sorted((results / "runs" / config["name"]).glob("*/*/run.json")):
        run = json.loads(run_json.read_text())
        run_id = run["run_id"]
        paths = RunPaths.of(str(results), config["name"], run)  # the recipe's own files
        metrics_path, flops_path = paths.metrics, paths.flops
        if not (metrics_path.is_file() and flops_path.is_file()):
            continue  # not finished (yet)
        metrics = json.loads(metrics_path.read_text())
        flops = json.loads(flops_path.read_text())["gflops"]
        s = run["settings"]
        rows.append(dict(run_id=run_id, variant=run["variant"], schedule=s.get("schedule") or "",
                         trc="" if s.get("trc") is None else str(bool(s["trc"])).lower(),
                         lpe="" if s.get("lpe") is None else str(bool(s["lpe"])).lower(),
                         seed=s.get("seed", 0), max_iters=run["max_iters"],
                         miou=round(float(metrics["miou"]), 4),
                         gflops_total=round(flops["total"], 6),
                         gflops_pixel_decoder=round(flops["pixel_decoder"], 6),
                         gflops_encoder=round(flops["encoder"], 6)))
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} of {len(runs)} runs finished -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
