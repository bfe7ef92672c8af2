"""Record a grid of real tiny trainings as a replay table, run by the pipeline's own Snakefile.

``grid_lr.csv`` (the benchmark a search must beat chance on; ``grid_medium.csv`` the same
way) is recorded with::

    git worktree add /tmp/grid_snapshot HEAD     # a clean snapshot: edits cannot leak into jobs
    .venv/bin/python /tmp/grid_snapshot/tests/data/record_grid.py \\
        tests/data/grid_lr.yaml --work /tmp/grid_lr --cores 2 \\
        --out tests/data/grid_lr.csv

The ablation (``grid_lr.yaml``, repository-relative paths) is run with its results, data and
MLflow store moved into ``--work``; only the ``train``, ``evaluate`` and ``flops`` rules of each
run are asked for (the reports are not needed for a table). Running the same command again
resumes: finished runs are kept. ``--collect-only`` writes the rows of the runs finished so far.
``--by seed`` runs the DAG once per value of that axis, in the grid's order (every setting's
seed 0 first), so a recording stopped early holds whole seeds; ``--chunk N`` runs each such
group N runs at a time in a shuffled order (fixed seed 0), so a recording stopped early holds a
random subset of the settings rather than the first ones of the grid's order.

The table has one row per run (seeds are separate rows; the replay pools them): run id,
variant, seed, iterations, mIoU (percent), GFLOPs (total, pixel decoder, encoder), then one
column per axis of the grid, named as the ablation names it, each value a YAML scalar
(``true``, ``0.0001``, ``1-1-1``; empty where a variant has no such axis).
``pipelines.benchmarks.search_replay.load_table`` reads it back for any axes.

A grid that validates during training (``train_cfg.val_interval`` below ``max_iters``, as
``grid_curves.yaml``) also gets its learning curves: ``<out>.rungs.csv`` (``grid_curves.csv``
-> ``grid_curves.rungs.csv``), one row per run and validation: run id, iteration, val mIoU
(percent), read from the ``scalars.json`` mmengine wrote in the training's work folder.
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

RUNG_FIELDS = ("run_id", "iteration", "miou")
FIXED = ("run_id", "variant", "seed", "max_iters", "miou", "gflops_total",
         "gflops_pixel_decoder", "gflops_encoder")


def in_work(ablation: dict, work: Path) -> dict:
    """The ablation with its results, data and MLflow store under ``work`` and model configs
    absolute (the DAG runs with ``work`` as its directory)."""
    config = json.loads(json.dumps(ablation))
    config["results"] = str(work / "results")
    config["data"]["root"] = str(work / config["data"]["root"])
    config["mlflow"] = {"tracking_uri": f"sqlite:///{work / 'results' / 'mlflow.db'}",
                        "artifact_location": str(work / "results" / "mlartifacts")}
    for variant in config["grid"]["variants"].values():
        variant["config"] = str(REPO / variant["config"])
    return config


def scalar(value) -> str:
    """An axis value as the YAML scalar the table stores (read back with ``yaml.safe_load``)."""
    import yaml

    if value is None:
        return ""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def collect(config: dict) -> tuple[list[dict], list[str]]:
    """Rows of every finished run (read from the files its jobs wrote) and the axis columns.
    The runs come from the grid's own expansion (the DAG is asked for the runs' metrics and
    FLOPs only, so no run.json is written)."""
    from pipelines.grid import RunPaths, expand_grid

    rows, axes = [], []
    for run in sorted(expand_grid(config, repo=REPO), key=lambda r: r.run_id):
        paths = RunPaths.of(config["results"], config["name"], run)  # the recipe's own files
        if not (paths.metrics.is_file() and paths.flops.is_file()):
            continue  # not finished (yet)
        metrics = json.loads(paths.metrics.read_text())
        flops = json.loads(paths.flops.read_text())["gflops"]
        settings = dict(run.settings)
        row = dict(run_id=run.run_id, variant=run.variant, seed=settings.pop("seed", 0),
                   max_iters=run.max_iters, miou=round(float(metrics["miou"]), 4),
                   gflops_total=round(flops["total"], 6),
                   gflops_pixel_decoder=round(flops["pixel_decoder"], 6),
                   gflops_encoder=round(flops["encoder"], 6))
        for axis, value in settings.items():
            if axis not in axes:
                axes.append(axis)
            row[axis] = scalar(value)
        rows.append(row)
    return rows, axes


def curve(work_dir: Path) -> dict[int, float]:
    """Iteration -> val mIoU (percent) logged by the training in ``work_dir`` (every start of
    it: a resumed training validates its resume point again, with the same result)."""
    out: dict[int, float] = {}
    for path in sorted(work_dir.glob("*/vis_data/scalars.json")):
        for line in path.read_text().splitlines():
            values = json.loads(line)
            if "mIoU" in values:
                out[int(values["step"])] = round(float(values["mIoU"]), 4)
    return dict(sorted(out.items()))


def collect_rungs(config: dict) -> list[dict]:
    """One row per finished run and validation of its training (run id, iteration, mIoU)."""
    from pipelines.grid import RunPaths, expand_grid

    rows = []
    for run in sorted(expand_grid(config, repo=REPO), key=lambda r: r.run_id):
        paths = RunPaths.of(config["results"], config["name"], run)
        if not (paths.metrics.is_file() and paths.flops.is_file()):
            continue
        for iteration, miou in curve(paths.train_done.parent).items():
            rows.append(dict(run_id=run.run_id, iteration=iteration, miou=miou))
    return rows


def rungs_path(out: Path) -> Path:
    """``grid.csv`` -> ``grid.rungs.csv``."""
    return out.with_name(out.stem + ".rungs" + out.suffix)


def main(argv=None) -> int:
    import yaml

    from pipelines.grid import RunPaths, expand_grid

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ablation", type=Path, help="the grid (repository-relative paths)")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for the DAG")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="the table (.csv) to write")
    parser.add_argument("--collect-only", action="store_true",
                        help="do not run the DAG; write the rows of the runs that finished")
    parser.add_argument("--by", metavar="AXIS",
                        help="run the DAG once per value of this axis, in order (seed: every "
                             "setting's first seed before any second)")
    parser.add_argument("--chunk", type=int, metavar="N",
                        help="run each group N runs at a time, in a shuffled order (seed 0)")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    config = in_work(yaml.safe_load(args.ablation.read_text()), work)
    configfile = work / args.ablation.name
    runs = expand_grid(config, repo=REPO)
    start = time.monotonic()
    if not args.collect_only:  # rerunning the same command resumes: finished runs are kept
        configfile.write_text(yaml.safe_dump(config, sort_keys=False))
        groups: dict = {}
        for run in runs:
            key = scalar(run.settings.get(args.by)) if args.by else ""
            p = RunPaths.of(config["results"], config["name"], run)
            groups.setdefault(key, []).extend([str(p.metrics), str(p.flops)])
        bin_dir = Path(sys.executable).parent
        env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
                   PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore")
        chunks = []
        for key, targets in groups.items():
            pairs = [targets[i:i + 2] for i in range(0, len(targets), 2)]  # metrics, flops
            if args.chunk:
                import random

                random.Random(0).shuffle(pairs)
            size = args.chunk or len(pairs)
            chunks += [(key, sum(pairs[i:i + size], [])) for i in range(0, len(pairs), size)]
        for key, targets in chunks:
            if args.by or args.chunk:
                print(f"{args.by or 'runs'} = {key}: {len(targets) // 2} runs", flush=True)
            subprocess.run([str(bin_dir / "snakemake"), "--snakefile", str(REPO / "Snakefile"),
                            "--configfile", str(configfile), "--directory", str(work),
                            "--cores", str(args.cores), "--rerun-incomplete", "--keep-going",
                            *targets], check=True, env=env)
        print(f"DAG finished in {time.monotonic() - start:.0f} s", flush=True)
    rows, axes = collect(config)
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*FIXED, *axes], restval="")
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} of {len(runs)} runs finished -> {args.out}")
    rung_rows = collect_rungs(config)
    max_iters = {row["run_id"]: int(row["max_iters"]) for row in rows}
    if any(row["iteration"] < max_iters[row["run_id"]] for row in rung_rows):  # has curves
        with open(rungs_path(args.out), "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(RUNG_FIELDS))
            writer.writeheader()
            writer.writerows(rung_rows)
        print(f"{len(rung_rows)} validations of {len(rows)} runs -> {rungs_path(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
