"""FLOPs: the traced count (mmengine FlopAnalyzer on the real model) equals the analytic model."""
from __future__ import annotations

import json

import pytest

import pipelines.registry  # noqa: F401
from pipelines.stages.cost_model import (
    EncoderSpec,
    encoder_flops,
    encoder_layer_flops,
    level_shapes,
    pixel_decoder_flops,
)
from tests.conftest import REPO, TINY_CONFIG, run_cli

PROSCALE_TINY = REPO / "configs/models/mask2former_r18_proscale-333_synthetic-128x128.py"
R18_CHANNELS = [64, 128, 256, 512]


# --------------------------------------------------------------------------- analytic model
def test_encoder_layer_flops_by_hand():
    # 10 tokens, 1 level, d=256, 8 heads, 4 points, FFN 1024
    n, d = 10, 256
    value_out = 2 * n * d * d                 # value_proj + output_proj
    offsets_weights = n * d * (8 * 1 * 4) * 3  # offsets (x, y) + attention weights
    ffn = 2 * n * d * 1024
    norms = 2 * 5 * n * d
    assert encoder_layer_flops(n, 1) == value_out + offsets_weights + ffn + norms
    assert encoder_layer_flops(n, 1, count_sampling=True) - encoder_layer_flops(n, 1) == \
        4 * n * d * 1 * 4


def test_encoder_flops_baseline_512():
    shapes = level_shapes((512, 512))
    assert shapes == [(16, 16), (32, 32), (64, 64)]
    tokens = 256 + 1024 + 4096  # 5376, as in methods.md
    assert encoder_flops(shapes, (0, 0, 6)) == 6 * encoder_layer_flops(tokens, 3)
    # the (3, 3, 3) encoder: 3 layers on 256 tokens, 3 on 1280, 3 on 5376
    assert encoder_flops(shapes, (3, 3, 3)) == 3 * (
        encoder_layer_flops(256, 1) + encoder_layer_flops(1280, 2) + encoder_layer_flops(tokens, 3))


def test_lpe_and_trc_terms():
    base = pixel_decoder_flops((512, 512), [256, 512, 1024, 2048], (3, 3, 3))
    lpe = pixel_decoder_flops((512, 512), [256, 512, 1024, 2048], (3, 3, 3), lpe=True)
    trc = pixel_decoder_flops((512, 512), [256, 512, 1024, 2048], (3, 3, 3), trc=True)
    assert base["pixel_decoder"] - lpe["pixel_decoder"] == 9 * 256 * 256 * 128 * 128
    # TRC: resize res3 to 16x16 and 32x32 (4 per output element) + Linear(256 -> 1) per token
    assert trc["trc"] == (4 * 256 + 256) * (256 + 1024)


def test_r50_reductions_follow_from_architecture():
    """(3,3,3)+TRC+LPE vs the R50 baseline at 512x512: about half the pixel decoder (paper ~52%)."""
    ch = [256, 512, 1024, 2048]
    base = pixel_decoder_flops((512, 512), ch)
    ps = pixel_decoder_flops((512, 512), ch, (3, 3, 3), trc=True, lpe=True)
    pd_red = 1 - ps["pixel_decoder"] / base["pixel_decoder"]
    enc_red = 1 - ps["encoder"] / base["encoder"]
    assert 0.48 < pd_red < 0.54
    assert 0.34 < enc_red < 0.38


# --------------------------------------------------------------------------- traced == analytic
@pytest.fixture(scope="module")
def tiny_cfgs():
    from pipelines.config import load_config

    return {"baseline": load_config(TINY_CONFIG), "proscale": load_config(PROSCALE_TINY)}


def _report(cfg, shape, schedule=None, count_sampling=False, **changes):
    import copy

    from pipelines.stages.flops import flops_report

    cfg = copy.deepcopy(cfg)
    if schedule is not None:
        cfg.model.decode_head.pixel_decoder.schedule = schedule
    cfg.model.decode_head.pixel_decoder.update(changes)
    return flops_report(cfg, shape, count_sampling)


@pytest.mark.parametrize("name, shape, schedule, sampling", [
    ("baseline", (64, 64), None, False),
    ("baseline", (64, 96), None, True),
    ("proscale", (64, 64), (3, 3, 3), False),
    ("proscale", (96, 64), (1, 0, 2), False),
    ("proscale", (64, 128), (2, 2, 2), True),
    ("proscale", (128, 96), (0, 0, 6), False),
])
def test_traced_equals_analytic(tiny_cfgs, name, shape, schedule, sampling):
    report = _report(tiny_cfgs[name], shape, schedule, sampling)
    g, a = report["gflops"], report["analytic_gflops"]
    for part in ("encoder", "pixel_decoder"):
        assert g[part] == pytest.approx(a[part], rel=1e-3), part
    assert g["encoder"] > 0
    assert g["pixel_decoder"] > g["encoder"]
    assert g["total"] > g["backbone"] + g["pixel_decoder"] + g["transformer_decoder"] * 0.999
    assert report["count_sampling"] is sampling


def test_sampling_switch_counts_exactly_the_kernel(tiny_cfgs):
    off = _report(tiny_cfgs["baseline"], (64, 64))["gflops"]
    on = _report(tiny_cfgs["baseline"], (64, 64), count_sampling=True)["gflops"]
    tokens = 2 * 2 + 4 * 4 + 8 * 8
    expected = 6 * 4 * tokens * 256 * 3 * 4 / 1e9  # 6 layers, 4 per value, 3 levels, 4 points
    assert on["encoder"] - off["encoder"] == pytest.approx(expected, rel=1e-9)
    assert on["backbone"] == off["backbone"]


def test_trc_and_lpe_traced(tiny_cfgs):
    """Switching TRC / LPE moves the traced count by exactly the analytic amount."""
    plain = _report(tiny_cfgs["proscale"], (64, 64), trc=False, lpe=False)
    both = _report(tiny_cfgs["proscale"], (64, 64), trc=True, lpe=True)
    delta = (plain["gflops"]["pixel_decoder"] - both["gflops"]["pixel_decoder"]) * 1e9
    n4 = 16 * 16
    trc = (4 * 256 + 256) * (2 * 2 + 4 * 4)
    assert delta == pytest.approx(9 * 256 * 256 * n4 - trc, rel=1e-9)
    assert both["params"]["pixel_decoder"] - plain["params"]["pixel_decoder"] == 257 - 9 * 256 * 256


def test_params_are_counted(tiny_cfgs):
    report = _report(tiny_cfgs["baseline"], (64, 64))
    p = report["params"]
    assert p["backbone"] == 11_176_512  # ResNet-18 without its fc layer
    assert p["pixel_decoder"] > p["encoder"] > 0
    assert p["total"] > p["backbone"] + p["pixel_decoder"] + p["transformer_decoder"]


def test_spec_is_read_from_config():
    from pipelines.config import load_config
    from pipelines.stages.cost_model import pixel_decoder_flops_from_cfg

    cfg = load_config(TINY_CONFIG).model.decode_head.pixel_decoder
    cfg = dict(cfg, in_channels=R18_CHANNELS)
    assert pixel_decoder_flops_from_cfg(cfg, (64, 64))["encoder"] == \
        encoder_flops(level_shapes((64, 64)), (0, 0, 6), EncoderSpec())


# --------------------------------------------------------------------------- CLI
def test_cli_flops_json(tmp_path):
    out = tmp_path / "flops.json"
    proc = run_cli("flops", str(PROSCALE_TINY), "--shape", "64", "64", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["gflops"]) == {"backbone", "cluster", "encoder", "pixel_decoder",
                                  "transformer_decoder", "total"}
    assert doc["gflops"]["cluster"] == 0  # no clustering step in this model
    assert set(doc["params"]) == set(doc["gflops"])
    assert doc["gflops"]["encoder"] == pytest.approx(doc["analytic_gflops"]["encoder"], rel=1e-3)
    assert "encoder" in proc.stdout and "ProScalePixelDecoder" in proc.stdout


@pytest.mark.parametrize("args, words", [
    (["flops", str(TINY_CONFIG), "--shape", "64", "70"], "multiple of 32"),
    (["flops", "configs/models/nope.py"], "config file not found"),
    (["flops", str(TINY_CONFIG), "--cfg-options",
      "model.decode_head.pixel_decoder.type=mmdet.NoSuchPixelDecoder"], "NoSuchPixelDecoder"),
    (["flops", str(PROSCALE_TINY), "--shape", "64", "64", "--cfg-options",
      "model.decode_head.pixel_decoder.schedule=(0,0,0)"], "schedule"),
    (["flops", str(PROSCALE_TINY), "--shape", "64", "64", "--cfg-options",
      "model.decode_head.pixel_decoder.schedule=(3,-1,3)"], "schedule"),
])
def test_cli_flops_bad_input_is_one_line(args, words):
    proc = run_cli(*args)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: ") and words in lines[0]


@pytest.mark.parametrize("name, schedule", [("proscale", (3, 3, 3)), ("proscale", (1, 0, 2)),
                                            ("baseline", None)])
def test_encoder_stages_traced_equal_analytic(tiny_cfgs, name, schedule):
    from pipelines.stages.cost_model import encoder_layer_flops, level_shapes

    shape = (64, 96)
    report = _report(tiny_cfgs[name], shape, schedule)
    stages = report["encoder_stages_gflops"]
    assert sum(stages.values()) == pytest.approx(report["gflops"]["encoder"], rel=1e-9)
    schedule = schedule or (0, 0, 6)
    shapes = level_shapes(shape)
    expected = {f"stage{k + 1}": n * encoder_layer_flops(sum(h * w for h, w in shapes[:k + 1]),
                                                          k + 1) / 1e9
                for k, n in enumerate(schedule) if n}
    assert stages == pytest.approx(expected, rel=1e-3)


def test_a_failed_count_is_recorded_on_the_last_attempt(tmp_path):
    """The workflow's last attempt (--record-failure 1) leaves a failure record that ingest and
    the report read, so one model that does not build blocks nothing else; earlier attempts
    fail as usual, in one line."""
    from pipelines.stages.failures import read_failure

    out = tmp_path / "flops.json"
    args = ("flops", str(TINY_CONFIG), "--shape", "64", "64", "--json", str(out),
            "--cfg-options", "model.decode_head.type=NoSuchHead")
    proc = run_cli(*args, "--record-failure", "0")
    assert proc.returncode != 0 and not out.exists()
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli(*args, "--record-failure", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = read_failure(out)
    assert record["stage"] == "flops" and "NoSuchHead" in record["reason"]
