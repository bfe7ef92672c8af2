"""A fifth method is its two files: a copy of the checkout gets a toy method as a model file, its
declaration file, a config and an ablation block only, and the real Snakefile takes it through the
grid, a tiny training, evaluation, FLOPs (with a GFLOPs part of its own), ingest, the figures
(with one of its own) and the reports, its label and style read from its declaration."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import run_file
from tests.workflow.conftest import BASELINE, tiny_ablation, write_config
from tests.workflow.test_recipe_identity import copy_repo, run_copy

pytestmark = pytest.mark.slow

TOY_MODEL = '''"""Token drop, a toy method: the pixel decoder's encoder sees its finest level (res3) pooled
by ``drop_stride``, so it drops ``1 - 1 / drop_stride**2`` of that level's tokens."""
from __future__ import annotations

import math

import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.layers import MSDeformAttnPixelDecoder
from mmdet.registry import MODELS

from pipelines.axes import Axis

AXES = {
    "drop_stride": Axis("model.decode_head.pixel_decoder.drop_stride", type="int", minimum=1,
                        id="ds{}", help="pooling stride of the finest encoder level"),
}


class TokenPool(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        h, w = x.shape[-2:]
        return F.adaptive_avg_pool2d(x, (math.ceil(h / self.stride), math.ceil(w / self.stride)))


@MODELS.register_module()
class TokenDropPixelDecoder(MSDeformAttnPixelDecoder):
    def __init__(self, *args, drop_stride: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.token_pool = TokenPool(drop_stride)

    def forward(self, feats):
        feats = list(feats)
        finest = self.num_input_levels - self.num_encoder_levels
        feats[finest] = self.token_pool(feats[finest])
        return super().forward(feats)


def fig_token_drop(a, plt):
    from pipelines.reports.figure_base import Skip

    settings = a.settings.dropna(subset=["drop_stride", "miou"]) if "drop_stride" in \\
        a.settings else a.settings.iloc[:0]
    if settings.empty:
        return Skip("no token drop runs yet")
    fig, ax = plt.subplots()
    ax.plot(settings["drop_stride"].astype(float), settings["miou"], marker="h")
    return fig


FIGURES = {"token_drop_miou": fig_token_drop}


def report_lines(run_id, metrics_json):
    return [f"- `{run_id}`: finest encoder level pooled"]
'''

TOY_DECLARATION = '''"""Token drop: what the pipeline knows of it (model: pipelines/models/token_drop.py)."""
from pipelines.methods import METHODS, Method


@METHODS.register_module(name="token_drop")
class TokenDropMethod(Method):
    label, color, marker = "Token drop", "#17becf", "h"
    parts = {"token_pool": "decode_head.pixel_decoder.token_pool"}
    figures = "pipelines.models.token_drop:FIGURES"
    report = "pipelines.models.token_drop:report_lines"
    report_title = "Token drop: pooled levels"
    axis_labels = {"drop_stride": "drop/{}"}
'''

TOY_CONFIG_NAME = "configs/models/mask2former_r18_tokendrop_synthetic-128x128.py"
TOY_CONFIG = '''_base_ = ['./mask2former_r18_synthetic-128x128.py']

model = dict(
    decode_head=dict(  # mmseg.Mask2FormerHead
        pixel_decoder=dict(  # pipelines.models.token_drop.TokenDropPixelDecoder
            type='mmdet.TokenDropPixelDecoder', drop_stride=2)))
'''
TOY_ID = "token_drop-ds2-seed0"


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """(results folder, snakemake output) of the copy with the toy method, run once."""
    root = tmp_path_factory.mktemp("fifth")
    repo = copy_repo(root / "repo")
    (repo / "pipelines" / "models" / "token_drop.py").write_text(TOY_MODEL)
    (repo / "pipelines" / "methods" / "token_drop.py").write_text(TOY_DECLARATION)
    (repo / TOY_CONFIG_NAME).write_text(TOY_CONFIG)
    config = tiny_ablation(root, iters=2, benchmark=False)
    config["grid"]["variants"] = {
        "baseline": {"config": BASELINE},
        "token_drop": {"config": TOY_CONFIG_NAME, "axes": {"drop_stride": [2]}},  # the block
    }
    proc, out = run_copy(repo, write_config(root / "abl.yaml", config))
    assert proc.returncode == 0, out[-4000:]
    return root / "results", out


def test_a_fifth_method_is_two_files(toy_run):
    results, _ = toy_run
    ids = {p.parent.parent.name for p in results.glob("evaluate/tiny/*/*/metrics.json")}
    assert ids == {"baseline-seed0", TOY_ID}
    # FLOPs: the method's own part is counted for it (0 for the baseline), and it saves
    gf = {i: json.loads(run_file(results, "flops", "tiny", i, "flops.json").read_text())["gflops"]
          for i in ids}
    assert gf[TOY_ID]["token_pool"] > 0 == gf["baseline-seed0"]["token_pool"]
    assert gf[TOY_ID]["encoder"] < gf["baseline-seed0"]["encoder"]
    # ingest: MLflow has its part as a metric, its axis as a param, its method as the role
    from pipelines.analysis.data import load_runs

    table = load_runs(f"sqlite:///{results / 'mlflow.db'}", "tiny").set_index("run_id")
    assert table.loc[TOY_ID, "gflops_token_pool"] > 0
    assert table.loc[TOY_ID, "methods"] == "token_drop"
    assert float(table.loc[TOY_ID, "drop_stride"]) == 2
    # figures: its own figure, its label and style, its axis in the points table
    figures = results / "figures" / "tiny"
    manifest = json.loads((figures / "figures.json").read_text())
    assert "token_drop_miou" in manifest["figures"], manifest["skipped"]
    assert (figures / "token_drop_miou.png").stat().st_size > 0
    points = pd.read_csv(figures / "points.csv")
    toy = points[points["run_id"] == TOY_ID].iloc[0]
    assert toy["series"] == "Token drop" and toy["drop_stride"] == 2
    series = pd.read_parquet(results / "analysis" / "tiny" / "series.parquet")
    row = series[series["variant"] == "token_drop"].iloc[0]
    assert (row["series"], row["color"], row["marker"]) == ("Token drop", "#17becf", "h")
    # the reports list it, its setting named by its label and its axis label
    report = (results / "report" / "tiny" / "report.md").read_text()
    assert TOY_ID in report and "| Token drop drop/2 |" in report
    html = (results / "report" / "tiny" / "html" / "index.html").read_text()
    assert "Token drop" in html


def test_its_report_section_is_its_own(toy_run):
    results, _ = toy_run
    report = (results / "report" / "tiny" / "report.md").read_text()
    assert "## Token drop: pooled levels" in report
    assert f"- `{TOY_ID}`: finest encoder level pooled" in report
