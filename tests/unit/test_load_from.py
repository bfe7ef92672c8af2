"""Fine-tuning a method from a baseline Mask2Former checkpoint (``load_from``): which tensors
load as they are, which are sliced, which are new (and which of the baseline's are dropped)."""
from __future__ import annotations

import pytest
import torch
from mmengine.runner import load_checkpoint

import pipelines.registry  # noqa: F401
from pipelines.models.pro_scale import baseline_layer_map, slice_levels
from tests.conftest import REPO

MODELS_DIR = REPO / "configs" / "models"
PD = "decode_head.pixel_decoder."
ENC = PD + "encoder.layers."


def build(name: str, seed: int = 0):
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    torch.manual_seed(seed)
    model = MODELS.build(Config.fromfile(str(MODELS_DIR / name)).model)
    model.init_weights()
    return model.eval()


def transfer(baseline_name: str, method_name: str, tmp_path):
    """Save a baseline's weights as a checkpoint and load it into the method the way the runner's
    ``load_from`` does; returns (baseline state, method before, method after, method)."""
    baseline = build(baseline_name, seed=1).state_dict()
    path = tmp_path / "baseline.pth"
    torch.save({"state_dict": baseline, "meta": {}}, path)
    method = build(method_name, seed=2)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    load_checkpoint(method, str(path), map_location="cpu", strict=False)
    return baseline, before, method.state_dict(), method


def test_baseline_layer_map():
    assert baseline_layer_map((3, 3, 3), 6) == [0, 1, 2, 3, 4, 5, 3, 4, 5]
    assert baseline_layer_map((0, 0, 6), 6) == list(range(6))
    assert baseline_layer_map((1, 1, 1), 6) == [0, 1, 5]
    assert baseline_layer_map((4, 4, 1), 6) == [0, 1, 2, 3, 4, 5, 0, 1, 5]
    assert baseline_layer_map((0, 0, 8), 6) == [0, 0, 0, 1, 2, 3, 4, 5]


def test_slice_levels_keeps_the_coarsest_levels_of_every_head():
    heads, levels, points = 2, 3, 4
    w = torch.arange(heads * levels * points * 2 * 5.0).reshape(-1, 5)  # offsets: (h, L, P, 2)
    got = slice_levels(w, heads, levels, 1).reshape(heads, 1, points * 2, 5)
    torch.testing.assert_close(got, w.reshape(heads, levels, points * 2, 5)[:, :1])
    b = torch.arange(heads * levels * points * 1.0)  # attention weights bias: (h, L, P)
    torch.testing.assert_close(slice_levels(b, heads, levels, 2),
                               b.reshape(heads, levels, points)[:, :2].reshape(-1))


def test_proscale_from_the_baseline_loads_slices_and_adds(tmp_path):
    base, before, after, model = transfer("mask2former_r18_synthetic-128x128.py",
                                          "mask2former_r18_proscale-333_synthetic-128x128.py",
                                          tmp_path)
    pd = model.decode_head.pixel_decoder
    levels = [1, 1, 1, 2, 2, 2, 3, 3, 3]
    source = [0, 1, 2, 3, 4, 5, 3, 4, 5]
    sliced = {f"{ENC}{j}.self_attn.{m}.{p}" for j in range(6)
              for m in ("sampling_offsets", "attention_weights") for p in ("weight", "bias")}
    assert set(pd.sliced_from_baseline) == sliced  # checkpoint keys, full names
    new = set(after) - set(base)
    assert new == ({f"{ENC}{j}.{k}" for j in range(6, 9) for k in
                    {k[len(ENC + "0."):] for k in base if k.startswith(ENC + "0.")}}
                   | {PD + "trc.weight", PD + "trc.bias"})
    # new only by name: encoder layers 6..8 are the baseline's 3..5 whole; TRC is really new
    dropped = set(base) - set(after)
    assert dropped == {PD + "output_convs.0.conv.weight"}  # LPE: no 3x3 conv
    heads = pd.encoder.layers[0].self_attn.num_heads
    for key in after:
        if key.startswith(ENC):
            j, _, name = key[len(ENC):].partition(".")
            src = base[f"{ENC}{source[int(j)]}.{name}"]
            if key in sliced:
                src = slice_levels(src, heads, 3, levels[int(j)])
            assert torch.equal(after[key], src), key
        elif key in base:
            assert torch.equal(after[key], base[key]), key
        else:  # TRC keeps its own initialisation
            assert torch.equal(after[key], before[key]), key


def test_proscale_checkpoint_reloads_unchanged(tmp_path):
    model = build("mask2former_r18_proscale-333_synthetic-128x128.py", seed=3)
    state = model.state_dict()
    path = tmp_path / "proscale.pth"
    torch.save({"state_dict": state}, path)
    other = build("mask2former_r18_proscale-333_synthetic-128x128.py", seed=4)
    load_checkpoint(other, str(path), map_location="cpu", strict=True)
    assert other.decode_head.pixel_decoder.sliced_from_baseline == []
    assert all(torch.equal(v, state[k]) for k, v in other.state_dict().items())


@pytest.mark.parametrize("method", ["mask2former_vit-tiny-ats_synthetic-128x128.py",
                                    "mask2former_vit-tiny-cluster_synthetic-128x128.py"])
def test_ats_and_ailurus_from_the_plain_vit_load_everything(method, tmp_path):
    base, _, after, _ = transfer("mask2former_vit-tiny_synthetic-128x128.py", method, tmp_path)
    assert set(after) == set(base)  # nothing new, nothing dropped, nothing sliced
    assert all(torch.equal(after[k], base[k]) for k in base)
