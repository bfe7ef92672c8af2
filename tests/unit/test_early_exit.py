"""ECO-M2F early-exit pixel decoder: exits, loss weights, gate, mixed-exit batches, configs."""
from __future__ import annotations

import pytest
import torch

import pipelines.registry  # noqa: F401  (registers EarlyExitPixelDecoder)
from pipelines.models.early_exit import (
    EarlyExitPixelDecoder,
    ExitGate,
    exit_loss_weight,
    exit_probabilities,
    exit_range,
    forced_exits,
    gate_labels,
)
from tests.conftest import REPO
from tests.unit.test_pro_scale import build, features

ECO_TINY = REPO / "configs/models/mask2former_r18_ecom2f_synthetic-128x128.py"
ECO_PROSCALE_TINY = REPO / "configs/models/mask2former_r18_proscale-333-ecom2f_synthetic-128x128.py"


def build_exit(**changes) -> EarlyExitPixelDecoder:
    return build(type='EarlyExitPixelDecoder', **changes)


# --------------------------------------------------------------------------- pure functions
def test_exit_range_and_refusals():
    assert exit_range(2, 6) == (2, 3, 4, 5, 6)
    assert exit_range(6, 6) == (6,)
    with pytest.raises(ValueError, match="above the encoder depth"):
        exit_range(7, 6)
    with pytest.raises(ValueError, match=">= 1"):
        exit_range(0, 6)
    with pytest.raises(TypeError, match="int"):
        exit_range(2.0, 6)


def test_exit_probabilities_and_normalised_weights():
    exits = (2, 3, 4, 5, 6)
    assert exit_probabilities('uniform', exits) == [0.2] * 5
    linear = exit_probabilities('linear', exits)
    assert linear == pytest.approx([k / 20 for k in exits])
    assert exit_probabilities([0, 0, 0, 0, 3], exits) == [0, 0, 0, 0, 1.0]
    for probs in ([0.2] * 5, linear):
        weights = [exit_loss_weight(k, exits, probs) for k in exits]
        assert sum(p * w for p, w in zip(probs, weights)) == pytest.approx(1.0)  # E[w] = 1
        assert weights == sorted(weights) and weights[-1] / weights[0] == pytest.approx(3.0)
    assert exit_loss_weight(6, exits, [0, 0, 0, 0, 1.0]) == 1.0  # only the last exit: baseline
    # the released code's factor: k + 2, unnormalised (4..8 at exits 2..6)
    assert [exit_loss_weight(k, exits, [0.2] * 5, 'release') for k in exits] == [4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="loss_weighting"):
        exit_loss_weight(2, exits, [0.2] * 5, 'k')
    for bad in ('normal', [1, 1], [1, -1, 1, 1, 1], [0] * 5):
        with pytest.raises(ValueError, match="exit_distribution"):
            exit_probabilities(bad, exits)


def test_gate_labels_trade_quality_for_depth():
    q = torch.tensor([[0.50, 0.60, 0.61, 0.61, 0.62],
                      [0.90, 0.90, 0.90, 0.90, 0.90],
                      [0.10, 0.20, 0.30, 0.40, 0.50]])
    exits = (2, 3, 4, 5, 6)
    assert gate_labels(q, exits, 0.0).tolist() == [4, 0, 4]  # ties: the shallowest
    assert gate_labels(q, exits, 0.05).tolist() == [1, 0, 4]
    assert gate_labels(q, exits, 0.2).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="beta"):
        gate_labels(q, exits, -0.1)


@pytest.mark.parametrize("changes, words", [
    (dict(min_layers=7), "above the encoder depth"),
    (dict(min_layers=0), ">= 1"),
    (dict(test_exit=1), "outside the exit range"),
    (dict(test_exit='deepest'), "test_exit"),
    (dict(exit_distribution=[1, 2]), "one weight per exit"),
])
def test_bad_settings_refused_at_build(changes, words):
    with pytest.raises((ValueError, TypeError), match=words):
        build_exit(**changes)


# --------------------------------------------------------------------------- equivalence
def test_last_exit_is_exactly_the_baseline():
    """Exit fixed at layer 6 with the baseline's weights: the baseline's outputs."""
    torch.manual_seed(0)
    base = build()  # mmdet.MSDeformAttnPixelDecoder
    new = build_exit(min_layers=6)
    result = new.load_state_dict(base.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    feats = features(size=96)
    with torch.no_grad():
        mask_a, multi_a = base(feats)
        new.train()  # training draws from the single exit 6
        mask_b, multi_b = new(feats)
        assert new.last_exits == [6, 6] and new.loss_weight(6) == 1.0
    torch.testing.assert_close(mask_b, mask_a, rtol=1e-6, atol=1e-6)
    for a, b in zip(multi_a, multi_b):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)


def test_early_exit_differs_and_matches_a_truncated_encoder():
    """Exit k equals a baseline encoder of k layers (the first k layers' weights)."""
    torch.manual_seed(0)
    model = build_exit()
    feats = features()
    with torch.no_grad():
        full = model(feats)[0]
        with forced_exits(model, 3):
            early = model(feats)[0]
    assert not torch.allclose(full, early, atol=1e-4)
    short = build(encoder=dict(num_layers=3))
    short.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not any(f'encoder.layers.{i}.' in k for i in (3, 4, 5))})
    with torch.no_grad():
        torch.testing.assert_close(short(feats)[0], early, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("schedule, exits", [
    (None, [2, 6, 4, 2]),
    ((3, 3, 3), [2, 9, 5, 7]),  # stage 1, 3, 2, 3: early exits skip the finer maps
    ((2, 0, 2), [4, 2, 3, 2]),
])
def test_mixed_exits_in_a_batch_equal_each_image_alone(schedule, exits):
    torch.manual_seed(1)
    model = build_exit(schedule=schedule, trc=schedule is not None, lpe=schedule is not None)
    feats = features(size=64, batch=len(exits), seed=2)
    with torch.no_grad():
        with forced_exits(model, exits):
            mask, multi = model(feats)
        assert model.last_exits == exits
        for b, k in enumerate(exits):
            with forced_exits(model, k):
                alone_mask, alone_multi = model([f[b:b + 1] for f in feats])
            torch.testing.assert_close(mask[b:b + 1], alone_mask, rtol=1e-5, atol=1e-5)
            for x, y in zip(multi, alone_multi):
                torch.testing.assert_close(x[b:b + 1], y, rtol=1e-5, atol=1e-5)


def test_mixed_batch_runs_each_layer_once_over_the_active_images():
    model = build_exit()
    seen = []
    for i, layer in enumerate(model.encoder.layers):
        layer.register_forward_pre_hook(
            lambda m, args, kwargs, i=i: seen.append((i, kwargs['query'].shape[0])),
            with_kwargs=True)
    with torch.no_grad(), forced_exits(model, [2, 6, 4, 2]):
        model(features(batch=4))
    assert seen == [(0, 4), (1, 4), (2, 2), (3, 2), (4, 1), (5, 1)]


def test_proscale_early_exit_passes_unentered_maps_through():
    """(3, 3, 3), exit 2: only res5 was encoded; res4 / res3 leave as their input projection."""
    model = build_exit(schedule=(3, 3, 3))
    feats = features()
    with torch.no_grad():
        tokens, *_ = model._encoder_tokens(feats)
        outs = model.forward_encoder(feats, exits=2)
        proj = [t.transpose(1, 2).reshape(o.shape) for t, o in zip(tokens, outs)]
    assert not torch.allclose(outs[0], proj[0])
    torch.testing.assert_close(outs[1], proj[1], rtol=0, atol=0)
    torch.testing.assert_close(outs[2], proj[2], rtol=0, atol=0)


# --------------------------------------------------------------------------- gate
def test_gate_picks_exits_per_image_from_the_res5_tokens():
    torch.manual_seed(0)
    model = build_exit(test_exit='gate')
    assert isinstance(model.gate, ExitGate) and model.gate.fc.out_features == 5
    assert sum(p.numel() for p in model.gate.parameters()) == 256 * 5 + 5
    feats = features(batch=4, seed=5)
    with torch.no_grad():
        tokens, *_ = model._encoder_tokens(feats)
        model.gate.fc.weight.zero_()
        model.gate.fc.bias.copy_(torch.tensor([0., 0., 5., 0., 0.]))  # always exit 4
        model(feats)
        assert model.last_exits == [4] * 4
        # a gate that reads the pooled tokens: a different exit per image
        pooled = ExitGate.pool(tokens[0])
        model.gate.fc.weight.copy_(torch.randn(5, 256))
        model.gate.fc.bias.zero_()
        expected = [model.exits[i] for i in model.gate.fc(pooled).argmax(1).tolist()]
        model(feats)
    assert model.last_exits == expected and len(set(expected)) > 1


def test_training_draws_exits_and_weights_the_head_losses():
    from mmengine.config import Config
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    cfg = Config.fromfile(str(ECO_TINY))
    head_cfg = cfg.model.decode_head
    head_cfg.train_cfg.num_points = 256
    head = MODELS.build(head_cfg)
    head.init_weights()
    head.train()
    torch.manual_seed(0)
    feats = features(size=64, batch=2)
    samples = []
    for i in range(2):
        s = SegDataSample(metainfo=dict(img_shape=(64, 64), pad_shape=(64, 64)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 8, (1, 64, 64)))
        samples.append(s)
    drawn = []
    losses = {}
    for seed in range(12):
        torch.manual_seed(seed)
        losses = head.loss(feats, samples, head_cfg.train_cfg)
        drawn.append(head.pixel_decoder.last_exits[0])
    assert set(drawn) <= {2, 3, 4, 5, 6} and len(set(drawn)) >= 3
    # the same forward with the exit weight undone is the unweighted loss
    torch.manual_seed(11)
    pd = head.pixel_decoder
    weight = pd.loss_weight(drawn[-1])
    plain = super(type(head), head).loss(feats, samples, head_cfg.train_cfg)
    assert pd.last_exits[0] == drawn[-1] and weight != 1.0
    torch.testing.assert_close(losses['loss_cls'], plain['loss_cls'] * weight)
    torch.testing.assert_close(losses['d0.loss_dice'], plain['d0.loss_dice'] * weight)


def test_configs_state_only_their_difference():
    from mmengine.config import Config

    eco = Config.fromfile(str(ECO_TINY))
    pd = eco.model.decode_head.pixel_decoder
    assert pd.type == 'mmdet.EarlyExitPixelDecoder' and pd.min_layers == 2
    assert eco.exit_gate.beta == 0.005
    both = Config.fromfile(str(ECO_PROSCALE_TINY)).model.decode_head.pixel_decoder
    assert both.schedule == (3, 3, 3) and both.type == 'mmdet.EarlyExitPixelDecoder'
    model = build_exit(schedule=(3, 3, 3), trc=True, lpe=True)
    assert model.exits == tuple(range(2, 10))


# --------------------------------------------------------------------------- cost
def test_exit_schedule():
    from pipelines.stages.cost_model import exit_schedule

    assert exit_schedule((0, 0, 6), 2) == ((0, 0, 2), 3)
    assert exit_schedule((3, 3, 3), 2) == ((2, 0, 0), 1)
    assert exit_schedule((3, 3, 3), 5) == ((3, 2, 0), 2)
    assert exit_schedule((2, 0, 0), 2) == ((2, 0, 0), 3)  # the last exit enters every stage
    with pytest.raises(ValueError):
        exit_schedule((0, 0, 6), 7)


@pytest.mark.parametrize("exit_layer", [2])
def test_traced_exit_gflops_equal_the_analytic_count(exit_layer):
    """PRO-SCALE (3, 3, 3) + TRC + LPE with exits in stage 1 and 2 (TRC of stage 2 skipped)."""
    from pipelines.config import load_config
    from pipelines.stages.flops import flops_report

    cfg = load_config(ECO_PROSCALE_TINY, [f"model.decode_head.pixel_decoder.test_exit="
                                          f"{exit_layer}"])
    rep = flops_report(cfg, (64, 64))
    for part in ("encoder", "pixel_decoder"):
        assert rep["gflops"][part] == pytest.approx(rep["analytic_gflops"][part], rel=1e-12)
