"""The full-size ablations (configs/ablations/ade20k.yaml, cityscapes.yaml) through the whole DAG
on the CPU, on small folders in ADE20K's and Cityscapes' real layouts (file naming and label
encodings: ADE's raw 0..150 with reduce_zero_label, Cityscapes' *_gtFine_labelTrainIds.png), with
the R50 backbone's ImageNet weights read from a weights folder and the network switched off
(`unshare -n`): what a compute node without internet runs. Only size, iteration, grid-size and
device settings are overridden."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch
import yaml

from pipelines.data.layout import write_layout
from tests.conftest import REPO
from tests.unit import pretrained_layouts as layouts
from tests.workflow.conftest import snakemake, write_config

SIZE = [
    "model.data_preprocessor.size=(64,64)",
    "train_dataloader.dataset.pipeline.2.scales=[64,72]",
    "train_dataloader.dataset.pipeline.3.crop_size=(64,64)",
    "val_dataloader.dataset.pipeline.1.scale=(128,64)",
    "test_dataloader.dataset.pipeline.1.scale=(128,64)",
    "model.decode_head.train_cfg.num_points=1024",
    "default_hooks.checkpoint.interval=2",
]


def _offline() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-n", "true"], capture_output=True).returncode == 0


def small(ablation: str, tmp_path, data, weights) -> dict:
    config = yaml.safe_load((REPO / "configs" / "ablations" / ablation).read_text())
    config.update(results=str(tmp_path / "results"), weights=str(weights),
                  data={"root": str(data), "synthetic": None},
                  mlflow={"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                          "artifact_location": str(tmp_path / "mlartifacts")})
    config["train"]["max_iters"] = 2
    config["train"]["cfg_options"] = config["train"]["cfg_options"] + SIZE
    config["grid"]["seed"] = [0]
    for variant in config["grid"]["variants"].values():  # the test runs in its own folder
        variant["config"] = str(REPO / variant["config"])
    pro_scale = config["grid"]["variants"]["pro_scale"]["axes"]
    for axis in pro_scale:
        pro_scale[axis] = pro_scale[axis][:1]  # one setting: (3,3,3) with TRC and LPE
    config["flops"] = {"shape": [64, 64]}
    config["benchmark"] = {"shape": [64, 64], "device": "cpu", "repeats": 2, "warmup": 1}
    config["resources"] = {stage: {"gpus": 0, "cpus": 1, "mem_mb": 4000, "runtime": 30}
                           for stage in ("train", "evaluate", "flops", "benchmark")}
    config["retries"] = 0
    return config


@pytest.mark.slow
@pytest.mark.skipif(not _offline(), reason="needs `unshare -n` (a network namespace) to run "
                                           "without network")
@pytest.mark.parametrize("layout, ablation, full", [("ade20k", "ade20k.yaml", False),
                                                    ("cityscapes", "cityscapes.yaml", True)])
def test_real_layout_ablation_runs_offline_to_the_report(tmp_path, layout, ablation, full):
    """Cityscapes' ablation runs to its report; ADE20K's (the other label encoding) trains and
    evaluates its baseline (the stages after evaluation are the same code for both)."""
    data = write_layout(tmp_path / layout, layout, train=4, val=2, size=64)
    weights = tmp_path / "weights"
    weights.mkdir()
    config = small(ablation, tmp_path, data, weights)
    if not full:
        config["grid"]["variants"] = {"baseline": config["grid"]["variants"]["baseline"]}
    path = write_config(tmp_path / ablation, config)
    # a missing weights file is refused before any job, in one line
    proc = snakemake(tmp_path, path, "-n")
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and 'File "' not in out
    assert [line for line in out.splitlines() if "weights folder" in line] == [
        f"error: invalid ablation config: grid.variants.baseline.config: weights folder {weights} "
        f"has no resnet50-0676ba61.pth (needed for the pretrained checkpoint "
        f"torchvision://resnet50); download it once on a node with internet: curl -L -o "
        f"{weights / 'resnet50-0676ba61.pth'} "
        f"https://download.pytorch.org/models/resnet50-0676ba61.pth"]
    assert not (tmp_path / "results").exists()
    torch.save(layouts.torchvision_resnet50(), weights / "resnet50-0676ba61.pth")
    # the network is off for the whole DAG (a download would fail, not hang)
    probe = subprocess.run(["unshare", "-n", "python3", "-c",
                            "import socket; socket.create_connection(('1.1.1.1', 443), 3)"],
                           capture_output=True, text=True)
    assert probe.returncode != 0
    proc = subprocess.run(["unshare", "-n", str(REPO / ".venv/bin/snakemake"), "--snakefile",
                           str(REPO / "Snakefile"), "--directory", str(tmp_path),
                           "--configfile", str(path), "--cores", "2",
                           *([] if full else ["--until", "evaluate_model"])],
                          cwd=REPO, capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, PYTHONWARNINGS="ignore",
                                   PATH=f"{REPO / '.venv/bin'}:{os.environ['PATH']}"))
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    results = tmp_path / "results"
    metrics = sorted(results.glob(f"evaluate/{layout}/*/*/metrics.json"))
    assert len(metrics) == (2 if full else 1)  # baseline (+ PRO-SCALE (3,3,3))
    for metric in metrics:
        assert isinstance(json.loads(metric.read_text())["miou"], float)
    # the backbones started from the folder's file, not a download
    logs = "".join(p.read_text(errors="replace") for p in results.rglob("*.log"))
    assert str(weights / "resnet50-0676ba61.pth") in logs
    if not full:
        return
    assert (results / "report" / layout / "report.md").is_file()
    assert (results / "report" / layout / "html" / "index.html").is_file()
