"""Analytic FLOPs of the Mask2Former pixel decoder (baseline and PRO-SCALE), from the architecture.

Same convention as :mod:`pipelines.stages.flops` (fvcore / ``mmengine.analysis``): one multiply-add is one
FLOP; Linear and conv without bias; GroupNorm / LayerNorm 5 FLOPs per element (affine); bilinear
resize 4 FLOPs per output element; element-wise ops, softmax, sigmoid and max-pool are free; the
deformable sampling kernel counts 4 FLOPs per sampled value per channel (bilinear) only when
``count_sampling``. The derivation is in ``pipelines/models/README.md``; ``tests/unit/test_flops.py``
holds these numbers equal to the traced ones. Batch size 1; results in FLOPs (not GFLOPs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

NORM = 5  # per element, GroupNorm / LayerNorm with affine parameters
RESIZE = 4  # per output element, bilinear


@dataclass(frozen=True)
class EncoderSpec:
    """The deformable encoder layer's sizes (mmdet's Mask2Former defaults)."""
    dims: int = 256
    heads: int = 8
    points: int = 4
    ffn: int = 1024


def encoder_layer_flops(tokens: int, levels: int, spec: EncoderSpec = EncoderSpec(),
                        count_sampling: bool = False) -> int:
    """One deformable self-attention encoder layer over ``tokens`` tokens and ``levels`` levels."""
    d, hlp = spec.dims, spec.heads * levels * spec.points
    attn = (tokens * d * d            # value_proj
            + tokens * d * hlp * 2    # sampling_offsets (x, y per head, level, point)
            + tokens * d * hlp        # attention_weights
            + tokens * d * d)         # output_proj
    ffn = 2 * tokens * d * spec.ffn
    norms = 2 * NORM * tokens * d
    sampling = RESIZE * tokens * d * levels * spec.points if count_sampling else 0
    return attn + ffn + norms + sampling


def level_shapes(image_hw: Tuple[int, int], strides: Sequence[int] = (32, 16, 8)):
    """Sizes ``(h, w)`` of the encoder's maps, coarsest first (ResNet: ceil at every stride)."""
    h, w = image_hw
    return [(-(-h // s), -(-w // s)) for s in strides]


def encoder_flops(shapes: Sequence[Tuple[int, int]], schedule: Sequence[int],
                  spec: EncoderSpec = EncoderSpec(), count_sampling: bool = False) -> int:
    """The (PRO-SCALE) encoder: stage ``s`` runs ``schedule[s-1]`` layers over the ``s`` coarsest
    maps. The baseline is ``schedule = (0, ..., 0, num_layers)``."""
    total = 0
    for stage, layers in enumerate(schedule):
        tokens = sum(h * w for h, w in shapes[:stage + 1])
        total += layers * encoder_layer_flops(tokens, stage + 1, spec, count_sampling)
    return total


def recalibration_flops(shapes: Sequence[Tuple[int, int]], stages: int, channels: int) -> int:
    """TRC before the first ``stages`` stages: res3 resized to that stage's map size, then
    ``Linear(C -> 1)`` per token."""
    return sum(RESIZE * channels * h * w + channels * h * w for h, w in shapes[:stages])


def pixel_decoder_flops(image_hw: Tuple[int, int], in_channels: Sequence[int],
                        schedule: Sequence[int] = (0, 0, 6), trc: bool = False, lpe: bool = False,
                        feat_channels: int = 256, out_channels: int = 256,
                        spec: EncoderSpec = EncoderSpec(), count_sampling: bool = False) -> dict:
    """FLOPs of the whole pixel decoder (4 input maps at strides 4, 8, 16, 32; the 3 coarsest
    enter the encoder). Returns ``{'encoder', 'input_proj', 'trc', 'fpn', 'pixel_decoder'}``."""
    c = feat_channels
    shapes = level_shapes(image_hw)  # res5, res4, res3
    (h4, w4), = level_shapes(image_hw, (4,))
    coarse_in = list(in_channels[1:])[::-1]  # res5, res4, res3 input channels
    input_proj = sum(cin * c * h * w + NORM * c * h * w
                     for cin, (h, w) in zip(coarse_in, shapes))
    trc_flops = recalibration_flops(shapes, len(schedule) - 1, c) if trc else 0
    enc = encoder_flops(shapes, schedule, spec, count_sampling)
    n4 = h4 * w4
    fpn = (in_channels[0] * c * n4 + NORM * c * n4   # lateral 1x1 conv + GN
           + RESIZE * c * n4                         # upsample res3 output to 1/4
           + (0 if lpe else 9 * c * c * n4)          # 3x3 output conv (LPE: free max-pool)
           + NORM * c * n4                           # its GN (kept by LPE)
           + c * out_channels * n4)                  # mask_feature 1x1 conv
    return dict(encoder=enc, input_proj=input_proj, trc=trc_flops, fpn=fpn,
                pixel_decoder=enc + input_proj + trc_flops + fpn)


def _spec_from_cfg(cfg) -> EncoderSpec:
    layer = cfg['encoder']['layer_cfg']
    levels = layer['self_attn_cfg'].get('num_levels', 3)
    if levels != 3:
        raise ValueError('the cost model assumes 3 encoder levels over 4 input maps')
    return EncoderSpec(dims=layer['self_attn_cfg'].get('embed_dims', 256),
                       heads=layer['self_attn_cfg'].get('num_heads', 8),
                       points=layer['self_attn_cfg'].get('num_points', 4),
                       ffn=layer['ffn_cfg'].get('feedforward_channels', 1024))


def _schedule_from_cfg(cfg) -> Tuple[int, ...]:
    if cfg.get('schedule') is not None:
        return tuple(cfg['schedule'])
    levels = cfg['encoder']['layer_cfg']['self_attn_cfg'].get('num_levels', 3)
    return (0,) * (levels - 1) + (cfg['encoder']['num_layers'],)


def pixel_decoder_flops_from_cfg(pixel_decoder_cfg, image_hw: Tuple[int, int],
                                 count_sampling: bool = False) -> dict:
    """:func:`pixel_decoder_flops` for a config dict of ``MSDeformAttnPixelDecoder`` or
    ``ProScalePixelDecoder`` (as found at ``model.decode_head.pixel_decoder``, with
    ``in_channels`` filled in by the head); a pixel decoder whose method declares a cost model of
    its own (:attr:`pipelines.methods.Method.cost_model`: ECO-M2F's fixed exit) is counted by
    that one."""
    from pipelines.methods import cost_model_of

    own = cost_model_of(str(pixel_decoder_cfg.get('type') or ''))
    if own is not None:
        return own(pixel_decoder_cfg, image_hw, count_sampling)
    return plain_pixel_decoder_flops_from_cfg(pixel_decoder_cfg, image_hw, count_sampling)


def plain_pixel_decoder_flops_from_cfg(pixel_decoder_cfg, image_hw: Tuple[int, int],
                                       count_sampling: bool = False) -> dict:
    """:func:`pixel_decoder_flops` of a pixel decoder config (no method's own cost model)."""
    cfg = pixel_decoder_cfg
    spec = _spec_from_cfg(cfg)
    return pixel_decoder_flops(image_hw, cfg['in_channels'], _schedule_from_cfg(cfg),
                               trc=bool(cfg.get('trc', False)), lpe=bool(cfg.get('lpe', False)),
                               feat_channels=cfg.get('feat_channels', 256),
                               out_channels=cfg.get('out_channels', 256), spec=spec,
                               count_sampling=count_sampling)


def early_exit_pixel_decoder_flops_from_cfg(pixel_decoder_cfg, image_hw: Tuple[int, int],
                                            count_sampling: bool = False) -> dict:
    """ECO-M2F's cost model (declared in ``pipelines/methods/early_exit.py``): with a fixed
    ``test_exit`` the layers after it are skipped (:func:`early_exit_pixel_decoder_flops`);
    without one, the plain count (every layer)."""
    cfg = pixel_decoder_cfg
    exit_layer = cfg.get('test_exit')
    if not isinstance(exit_layer, int) or isinstance(exit_layer, bool):
        return plain_pixel_decoder_flops_from_cfg(cfg, image_hw, count_sampling)
    return early_exit_pixel_decoder_flops(
        image_hw, cfg['in_channels'], exit_layer, _schedule_from_cfg(cfg),
        trc=bool(cfg.get('trc', False)), lpe=bool(cfg.get('lpe', False)),
        feat_channels=cfg.get('feat_channels', 256), out_channels=cfg.get('out_channels', 256),
        spec=_spec_from_cfg(cfg), count_sampling=count_sampling)


def exit_schedule(schedule: Sequence[int], exit_layer: int) -> Tuple[Tuple[int, ...], int]:
    """ECO-M2F: the layers per stage an image runs when it leaves after ``exit_layer`` layers,
    and how many stages it entered (a stage is entered when its first layer runs; at the last
    exit every stage is, as in the full encoder)."""
    total = sum(schedule)
    if not 1 <= exit_layer <= total:
        raise ValueError(f"exit {exit_layer} outside 1..{total}")
    run, left, entered = [], exit_layer, 0
    for stage, layers in enumerate(schedule):
        take = min(layers, left)
        run.append(take)
        left -= take
        if take:
            entered = stage + 1
    return tuple(run), (len(schedule) if exit_layer == total else entered)


def early_exit_pixel_decoder_flops(image_hw: Tuple[int, int], in_channels: Sequence[int],
                                   exit_layer: int, schedule: Sequence[int] = (0, 0, 6),
                                   trc: bool = False, lpe: bool = False,
                                   feat_channels: int = 256, out_channels: int = 256,
                                   spec: EncoderSpec = EncoderSpec(),
                                   count_sampling: bool = False) -> dict:
    """:func:`pixel_decoder_flops` of an image that leaves the encoder after ``exit_layer``
    layers: the later layers are skipped, and so is the TRC of a stage never entered (the maps
    of such stages enter the FPN as their input projection). Each exit step on the plain
    schedule removes one encoder layer's cost, the same at every depth."""
    run, entered = exit_schedule(schedule, exit_layer)
    out = pixel_decoder_flops(image_hw, in_channels, run, trc=False, lpe=lpe,
                              feat_channels=feat_channels, out_channels=out_channels, spec=spec,
                              count_sampling=count_sampling)
    if trc:
        out['trc'] = recalibration_flops(level_shapes(image_hw), min(entered, len(schedule) - 1),
                                         feat_channels)
        out['pixel_decoder'] += out['trc']
    return out
