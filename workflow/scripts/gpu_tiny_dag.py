"""A tiny ablation through the whole Snakefile with ``resources.*.gpus: 1`` on a GPU node
(``workflow/scripts/gpu_check.sh run dag``): baseline R18 Mask2Former and PRO-SCALE (3,3,3), 4
iterations at 64x64 on the synthetic set, FLOPs, latency on the device, MLflow ingest, report.

    python workflow/scripts/gpu_tiny_dag.py --out DIR [--device cuda|cpu]

Prints each run's mIoU and latency and the report's path; exits with Snakemake's status. Where
MLflow is not installed (a bare GPU image), the ingest and the reports are left out.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "configs" / "models"
SIZE = ["model.data_preprocessor.size=(64,64)", "train_dataloader.dataset.pipeline.2.scale=(64,64)",
        "train_dataloader.dataset.pipeline.3.crop_size=(64,64)",
        "test_dataloader.dataset.pipeline.1.scale=(64,64)",
        "model.decode_head.train_cfg.num_points=1024", "default_hooks.checkpoint.interval=2"]


def ablation(out: Path, device: str) -> dict:
    gpus = 1 if device == "cuda" else 0
    return {
        "name": "gpu_tiny", "results": str(out / "results"),
        "data": {"root": str(out / "data"),
                 "synthetic": {"train": 8, "val": 2, "size": 64, "seed": 3}},
        "train": {"max_iters": 4, "cfg_options": SIZE},
        "grid": {"seed": [0], "variants": {
            "baseline": {"config": str(MODELS / "mask2former_r18_synthetic-128x128.py")},
            "pro_scale": {"config": str(MODELS / "mask2former_r18_proscale-333_synthetic-128x128.py"),
                          "axes": {"schedule": ["3-3-3"], "trc": [True], "lpe": [True]}}}},
        "stages": {"flops": True, "benchmark": True},
        "flops": {"shape": [64, 64]},
        "benchmark": {"shape": [64, 64], "device": device, "repeats": 5, "warmup": 2},
        "mlflow": {"tracking_uri": f"sqlite:///{out / 'results' / 'mlflow.db'}",
                   "artifact_location": str(out / "results" / "mlartifacts")},
        "resources": {stage: {"gpus": gpus, "cpus": 2, "mem_mb": 8000, "runtime": 30}
                      for stage in ("train", "evaluate", "flops", "benchmark")},
        "retries": 0,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="folder for the ablation's results")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    args = p.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = out / "gpu_tiny.yaml"
    config.write_text(yaml.safe_dump(ablation(out, args.device), sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(out), "--configfile", str(config), "--cores", "4",
           "--resources", "gpu=1", "--show-failed-logs"]
    if importlib.util.find_spec("mlflow") is None:
        # a GPU image without MLflow (the ingest and the reports run on the submitting node
        # on a cluster): every GPU stage still runs, the MLflow ingest and what reads it do not
        cmd += ["--omit-from", "ingest_results"]
        print("gpu_tiny_dag: no mlflow here: the ingest and the reports are left out",
              flush=True)
    print(" ".join(cmd), flush=True)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
    for path in sorted((out / "results").glob("evaluate/gpu_tiny/*/*/metrics.json")):
        print(f"{path.parts[-3]}: mIoU {json.loads(path.read_text()).get('miou')}")
    for path in sorted((out / "results").glob("benchmark/gpu_tiny/*/*/benchmark.json")):
        doc = json.loads(path.read_text())
        model = (doc.get("results") or {}).get("candidate", {}).get("model", {})
        print(f"{path.parts[-3]}: latency {model.get('median_ms')} ms on {doc.get('device')}")
    print(f"report: {out / 'results' / 'report' / 'gpu_tiny' / 'report.md'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
