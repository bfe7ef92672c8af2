"""PRO-SCALE pixel decoder: schedule parsing, baseline equivalence, TRC, LPE, configs."""
from __future__ import annotations

import copy

import pytest
import torch

import pipelines.registry  # noqa: F401  (registers ProScalePixelDecoder)
from pipelines.models.pro_scale import (
    map_to_tokens,
    parse_schedule,
    recalibrate_tokens,
    stage_of_layers,
    tokens_to_map,
    trc_gate,
)
from tests.conftest import REPO, TINY_CONFIG

IN_CHANNELS = [64, 128, 256, 512]
PROSCALE_TINY = REPO / "configs/models/mask2former_r18_proscale-333_synthetic-128x128.py"
PROSCALE_R50 = REPO / "configs/models/mask2former_r50_proscale-333_ade20k-512x512.py"


def pixel_decoder_cfg(**changes):
    """The tiny config's pixel decoder, as Mask2FormerHead hands it over."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(TINY_CONFIG)).model.decode_head.pixel_decoder
    cfg = copy.deepcopy(cfg)
    cfg.update(in_channels=IN_CHANNELS, strides=[4, 8, 16, 32], feat_channels=256,
               out_channels=256, **changes)
    return cfg


def build(**changes):
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope

    # other tests leave mmseg as the process-wide default scope; these names are mmdet's
    with DefaultScope.overwrite_default_scope("mmdet"):
        model = MODELS.build(pixel_decoder_cfg(**changes))
    model.init_weights()
    return model.eval()


def features(size=64, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, size // s, size // s, generator=g)
            for c, s in zip(IN_CHANNELS, (4, 8, 16, 32))]


# --------------------------------------------------------------------------- schedule parser
@pytest.mark.parametrize("schedule", [(3, 3, 3), (0, 0, 6), [1, 0, 0], (0, 5, 1), (2, 2, 2)])
def test_parse_schedule_accepts(schedule):
    assert parse_schedule(schedule) == tuple(schedule)


@pytest.mark.parametrize("schedule, error, words", [
    ((0, 0, 0), ValueError, "no encoder layer"),
    ((3, -1, 3), ValueError, ">= 0"),
    ((3, 3), ValueError, "3 entries"),
    ((1, 1, 1, 1), ValueError, "3 entries"),
    ((3.0, 3, 3), TypeError, "ints"),
    ((True, 1, 1), TypeError, "ints"),
    ("333", TypeError, "sequence"),
    (3, TypeError, "sequence"),
])
def test_parse_schedule_refuses(schedule, error, words):
    with pytest.raises(error, match=words):
        parse_schedule(schedule)


def test_stage_of_layers():
    assert stage_of_layers((2, 1, 3)) == [1, 1, 2, 3, 3, 3]
    assert stage_of_layers((0, 0, 6)) == [3] * 6


@pytest.mark.parametrize("schedule", [(0, 0, 0), (-1, 3, 3), (3, 3)])
def test_bad_schedule_refused_at_build(schedule):
    with pytest.raises((ValueError, TypeError), match="schedule"):
        build(type='ProScalePixelDecoder', schedule=schedule)


# --------------------------------------------------------------------------- equivalence
def test_schedule_006_equals_baseline():
    """(0, 0, 6) without TRC / LPE, with the baseline's weights, gives the baseline's outputs."""
    torch.manual_seed(0)
    base = build()  # mmdet.MSDeformAttnPixelDecoder
    new = build(type='ProScalePixelDecoder', schedule=(0, 0, 6))
    assert type(base).__name__ == 'MSDeformAttnPixelDecoder'
    missing = new.load_state_dict(base.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    feats = features(size=96)
    with torch.no_grad():
        mask_a, multi_a = base(feats)
        mask_b, multi_b = new(feats)
    torch.testing.assert_close(mask_b, mask_a, rtol=1e-6, atol=1e-6)
    assert len(multi_a) == len(multi_b) == 3
    for a, b in zip(multi_a, multi_b):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


def test_other_schedule_differs_from_baseline():
    """Sanity check that the equivalence test can fail: (0, 3, 3) with the same first-3 / last-3
    weights is not the baseline."""
    torch.manual_seed(0)
    base = build()
    new = build(type='ProScalePixelDecoder', schedule=(0, 0, 5))
    new.load_state_dict({k: v for k, v in base.state_dict().items()
                         if 'encoder.layers.5.' not in k}, strict=True)
    feats = features()
    with torch.no_grad():
        assert not torch.allclose(base(feats)[0], new(feats)[0], atol=1e-4)


# --------------------------------------------------------------------------- structure
@pytest.mark.parametrize("schedule", [(3, 3, 3), (1, 0, 2), (0, 4, 0), (2, 0, 0)])
def test_schedules_run_with_levels_per_stage(schedule):
    model = build(type='ProScalePixelDecoder', schedule=schedule, trc=True, lpe=True)
    assert len(model.encoder.layers) == sum(schedule)
    heads, points = 8, 4
    for layer, levels in zip(model.encoder.layers, stage_of_layers(schedule)):
        assert layer.self_attn.num_levels == levels
        assert layer.self_attn.sampling_offsets.out_features == heads * levels * points * 2
    feats = features(size=64)
    mask, multi = model(feats)
    assert mask.shape == (2, 256, 16, 16)
    assert [tuple(m.shape[-2:]) for m in multi] == [(2, 2), (4, 4), (8, 8)]
    mask.mean().backward()  # trainable end to end
    assert model.encoder.layers[0].self_attn.value_proj.weight.grad is not None
    assert model.trc.weight.grad is not None


def test_trc_adds_257_parameters_and_lpe_drops_the_3x3_conv():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    plain = build(type='ProScalePixelDecoder', schedule=(3, 3, 3))
    trc = build(type='ProScalePixelDecoder', schedule=(3, 3, 3), trc=True)
    lpe = build(type='ProScalePixelDecoder', schedule=(3, 3, 3), lpe=True)
    assert count(trc) - count(plain) == 257
    assert count(plain) - count(lpe) == 256 * 256 * 9  # the 3x3 conv had no bias (GN follows)
    assert isinstance(lpe.output_convs[0].conv, torch.nn.MaxPool2d)
    assert hasattr(lpe.output_convs[0], 'gn') and lpe.output_convs[0].with_activation


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 4, 1, 1), (1, 2, 8, 3)])
def test_max_pool_3x3_equals_torch(shape):
    from pipelines.models.pro_scale import max_pool_3x3

    x = torch.randn(*shape)
    assert torch.equal(max_pool_3x3(x), torch.nn.functional.max_pool2d(x, 3, 1, 1))
    x = -torch.rand(*shape) - 1  # all negative: the border must act as -inf, not 0
    assert torch.equal(max_pool_3x3(x), torch.nn.functional.max_pool2d(x, 3, 1, 1))


def test_lpe_output_conv_is_maxpool_norm_relu():
    model = build(type='ProScalePixelDecoder', schedule=(1, 1, 1), lpe=True)
    conv = model.output_convs[0]
    x = torch.randn(1, 256, 8, 8)
    expected = torch.relu(conv.gn(torch.nn.functional.max_pool2d(x, 3, 1, 1)))
    torch.testing.assert_close(conv(x), expected)


# --------------------------------------------------------------------------- TRC
def test_tokens_to_map_permutes_before_reshape():
    x = torch.randn(2, 5, 3, 4)
    tokens = map_to_tokens(x)
    assert tokens.shape == (2, 12, 5)
    torch.testing.assert_close(tokens_to_map(tokens, (3, 4)), x)
    # the public code's raw view scrambles channels and positions
    assert not torch.equal(tokens.reshape(2, 5, 3, 4), x)


def test_recalibrate_tokens_gates_each_token():
    torch.manual_seed(0)
    proj = torch.nn.Linear(8, 1)
    coarse = torch.randn(1, 4, 8)                # a 2x2 map
    fine_map = torch.randn(1, 8, 8, 8)           # an 8x8 map
    out = recalibrate_tokens(coarse, (2, 2), map_to_tokens(fine_map), (8, 8), proj, 0.1)
    resized = torch.nn.functional.interpolate(fine_map, size=(2, 2), mode='bilinear',
                                              align_corners=False)
    gate = torch.sigmoid(0.1 * proj(map_to_tokens(resized)))  # as released: t multiplies
    torch.testing.assert_close(out, coarse * gate)
    assert gate.shape == (1, 4, 1)
    old = recalibrate_tokens(coarse, (2, 2), map_to_tokens(fine_map), (8, 8), proj, 0.1,
                             mode='divide')
    torch.testing.assert_close(old, coarse * torch.sigmoid(proj(map_to_tokens(resized)) / 0.1))


def init_gates(**changes):
    """TRC gates of res5 and res4 of a freshly initialised decoder on random features."""
    torch.manual_seed(0)
    pd = build(type='ProScalePixelDecoder', schedule=(1, 1, 1), trc=True, **changes)
    with torch.no_grad():
        tokens, _, _, shapes = pd._encoder_tokens(features(size=128, batch=2))
        return torch.cat([trc_gate(tokens[-1], shapes[-1], shapes[s], pd.trc,
                                   pd.trc_temperature, pd.trc_mode).flatten()
                          for s in (0, 1)])


def test_trc_gates_start_near_one_half_as_released():
    gates = init_gates()
    assert abs(float(gates.mean()) - 0.5) < 0.02 and float(gates.std()) < 0.05
    assert 0.35 < float(gates.min()) and float(gates.max()) < 0.65
    # the project's first form (sigmoid(z / 0.1), weight N(0, 0.01)) starts spread out
    old = init_gates(trc_mode='divide', trc_init='normal')
    assert float(old.std()) > 2 * float(gates.std())


def test_trc_with_every_gate_at_one_is_no_trc():
    torch.manual_seed(0)
    a = build(type='ProScalePixelDecoder', schedule=(1, 1, 1))
    b = build(type='ProScalePixelDecoder', schedule=(1, 1, 1), trc=True)
    b.load_state_dict(a.state_dict(), strict=False)
    with torch.no_grad():
        b.trc.weight.zero_()
        b.trc.bias.fill_(1e3)  # sigmoid(0.1 * 1000) == 1.0 exactly in float32
        feats = features()
        out_a, out_b = a(feats), b(feats)
    torch.testing.assert_close(out_b[0], out_a[0], rtol=0, atol=0)
    for x, y in zip(out_b[1], out_a[1]):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("changes, words", [(dict(trc_mode='times'), 'trc_mode'),
                                            (dict(trc_init='zeros'), 'trc_init')])
def test_bad_trc_options_refused(changes, words):
    with pytest.raises(ValueError, match=words):
        build(type='ProScalePixelDecoder', schedule=(1, 1, 1), trc=True, **changes)


def test_trc_changes_outputs_only_when_on():
    torch.manual_seed(0)
    a = build(type='ProScalePixelDecoder', schedule=(1, 1, 1))
    b = build(type='ProScalePixelDecoder', schedule=(1, 1, 1), trc=True)
    b.load_state_dict(a.state_dict(), strict=False)
    torch.nn.init.normal_(b.trc.weight, std=1.0)
    feats = features()
    with torch.no_grad():
        assert not torch.allclose(a(feats)[0], b(feats)[0])


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize("path, in_channels", [(PROSCALE_TINY, 64), (PROSCALE_R50, 256)])
def test_configs_build_the_proscale_decoder(path, in_channels):
    from pipelines.config import load_config
    from pipelines.registry import build_model

    cfg = load_config(path)
    pd = cfg.model.decode_head.pixel_decoder
    assert pd.type == 'mmdet.ProScalePixelDecoder'
    assert tuple(pd.schedule) == (3, 3, 3) and pd.trc and pd.lpe and pd.trc_temperature == 0.1
    if path == PROSCALE_TINY:
        model = build_model(cfg)
        decoder = model.decode_head.pixel_decoder
        assert type(decoder).__name__ == 'ProScalePixelDecoder'
        assert decoder.input_convs[2].conv.in_channels == 128
        assert decoder.lateral_convs[0].conv.in_channels == in_channels
