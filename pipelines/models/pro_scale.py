"""PRO-SCALE: progressive token length scaling in the pixel decoder's encoder.

Paper: *Progressive Token Length Scaling in Transformer Encoders for Efficient Universal
Segmentation* (arXiv 2404.14657). Written from the method notes (``../shared/docs/methods.md``;
summarised in ``pipelines/models/README.md``), not from the public code.

The baseline encoder runs every layer over all tokens of the three coarse maps, ordered coarsest
first (res5 = 1/32, res4 = 1/16, res3 = 1/8). PRO-SCALE splits the layers into stages: stage ``s``
runs ``schedule[s - 1]`` layers over the tokens of the ``s`` coarsest maps only (``s``-level
deformable attention), and the next finer map joins before the next stage. Because the order is
coarsest first, a stage's tokens are a *prefix* of the baseline sequence, so positional + level
encodings and reference points are the baseline's, sliced. ``schedule=(0, 0, 6)`` is exactly the
baseline (``do_nothing``-style identity: the same layers in the same order over the same tokens).

Optional parts:

* **TRC** (token re-calibration): before stage 1 and before stage 2 the tokens of the map that
  joins there (res5, then res4) are multiplied by ``sigmoid(t * Linear(res3 resized))``, the
  1/8 features bilinearly resized to that map's size, one ``Linear(C -> 1)`` shared by both
  stages (C + 1 = 257 parameters). As released: the logit is *multiplied* by
  ``t = trc_temperature = 0.1`` (the release's ``EXCITE_TEMP``) and the Linear's weight is
  xavier-uniform (its bias PyTorch's default), so the gates start near 0.5.
  ``trc_mode='divide'`` with ``trc_init='normal'`` is this project's first form
  (``sigmoid(z / t)``, weight N(0, 0.01), bias 0: gates spread over about 0.2-0.8 at init). Tokens ``(B, L, C)`` become a map ``(B, C, H, W)`` through a
  ``transpose`` then ``reshape`` (:func:`tokens_to_map`). The public code ``view``\\ s ``(B, L, C)``
  straight to ``(B, C, H, W)``: that reinterprets memory, so channels and positions are mixed and
  the resize runs on a scrambled image. We implement the intended operation.
* **LPE** (light pixel embedding): the 3x3 conv of the 1/4-scale output conv becomes a 3x3
  max-pool (stride 1, padding 1), keeping the GroupNorm and ReLU. The pool is computed as
  separable shifted maxima (:func:`max_pool_3x3`), bit-identical to ``F.max_pool2d`` and ~10x
  faster on CPU.

Layout follows ToMe's ``merge.py``: pure tensor functions, a schedule parser, and one small
registered class that subclasses mmdet's ``MSDeformAttnPixelDecoder`` (upstream attribute names,
typos included: ``postional_encoding``).
"""
from __future__ import annotations

import copy
import functools
from numbers import Integral
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.layers import MSDeformAttnPixelDecoder
from mmdet.models.layers.transformer import DeformableDetrTransformerEncoderLayer
from mmdet.registry import MODELS
from mmengine.config import ConfigDict
from mmengine.model import ModuleList
from torch import Tensor

from pipelines.axes import Axis
from pipelines.models.deform_attn import tag_shapes

# Ablation axes (read by pipelines.axes without importing this module): alias -> config key.
AXES = {
    "schedule": Axis("model.decode_head.pixel_decoder.schedule", type="str",
                     pattern=r"\d+-\d+-[1-9]\d*", convert="dash_ints", id="s{}",
                     help="encoder layers per stage (res5, res4, res3), e.g. 3-3-3; the last "
                     "stage needs a layer; 0-0-6 is the baseline encoder"),
    "trc": Axis("model.decode_head.pixel_decoder.trc", type="bool", id="flag",
                help="token re-calibration on/off"),
    "trc_mode": Axis("model.decode_head.pixel_decoder.trc_mode", type="str",
                     choices=("multiply", "divide"), id="trc_{}",
                     help="TRC gate sigmoid(t*z) (multiply, as released) or sigmoid(z/t)"),
    "lpe": Axis("model.decode_head.pixel_decoder.lpe", type="bool", id="flag",
                help="light pixel embedding on/off"),
}


# ----------------------------------------------------------------------------- pure functions
def parse_schedule(schedule, num_levels: int = 3) -> Tuple[int, ...]:
    """Check a schedule ``(p1, ..., pL)`` of encoder layers per stage and return it as a tuple.

    Raises:
        TypeError: not a sequence of ints (bools and floats are refused too).
        ValueError: wrong length, a negative entry, or no layer at all.
    """
    if isinstance(schedule, (str, bytes)) or not isinstance(schedule, Sequence):
        raise TypeError(f"PRO-SCALE schedule must be a sequence of {num_levels} ints, "
                        f"got {schedule!r}")
    if len(schedule) != num_levels:
        raise ValueError(f"PRO-SCALE schedule must have {num_levels} entries (one per encoder "
                         f"level), got {len(schedule)}: {tuple(schedule)!r}")
    for p in schedule:
        if isinstance(p, bool) or not isinstance(p, Integral):
            raise TypeError(f"PRO-SCALE schedule entries must be ints, got {p!r} in "
                            f"{tuple(schedule)!r}")
        if p < 0:
            raise ValueError(f"PRO-SCALE schedule entries must be >= 0, got {tuple(schedule)!r}")
    if sum(schedule) == 0:
        raise ValueError(f"PRO-SCALE schedule {tuple(schedule)!r} has no encoder layer; "
                         "the sum must be positive")
    return tuple(int(p) for p in schedule)


def stage_of_layers(schedule: Sequence[int]) -> List[int]:
    """Number of levels each encoder layer attends to: ``(2, 1, 3) -> [1, 1, 2, 3, 3, 3]``."""
    return [s + 1 for s, p in enumerate(schedule) for _ in range(p)]


def tokens_to_map(tokens: Tensor, hw: Tuple[int, int]) -> Tensor:
    """``(B, H*W, C)`` -> ``(B, C, H, W)``: permute first, then reshape (never a raw view)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *hw)


def map_to_tokens(x: Tensor) -> Tensor:
    """``(B, C, H, W)`` -> ``(B, H*W, C)``."""
    return x.flatten(2).transpose(1, 2)


TRC_MODES = ('multiply', 'divide')
TRC_INITS = ('xavier', 'normal')


def trc_gate(fine: Tensor, fine_hw: Tuple[int, int], hw: Tuple[int, int], proj: nn.Linear,
             temperature: float, mode: str = 'multiply') -> Tensor:
    """The TRC gate ``(B, h*w, 1)`` of the map of size ``hw``: ``sigmoid(t * z)`` (``mode=
    'multiply'``, the release) or ``sigmoid(z / t)`` (``'divide'``), ``z = proj(fine resized)``."""
    fine_map = tokens_to_map(fine, fine_hw)
    resized = F.interpolate(fine_map, size=hw, mode='bilinear', align_corners=False)
    logit = proj(map_to_tokens(resized))
    if mode == 'multiply':
        return torch.sigmoid(temperature * logit)
    if mode == 'divide':
        return torch.sigmoid(logit / temperature)
    raise ValueError(f"trc_mode must be one of {TRC_MODES}, got {mode!r}")


def recalibrate_tokens(tokens: Tensor, hw: Tuple[int, int], fine: Tensor,
                       fine_hw: Tuple[int, int], proj: nn.Linear,
                       temperature: float, mode: str = 'multiply') -> Tensor:
    """TRC: gate ``tokens`` (``(B, h*w, C)``) per token with :func:`trc_gate`.

    Args:
        tokens: the coarse tokens joining a stage.
        hw: their map size ``(h, w)``.
        fine: the res3 (1/8) tokens ``(B, H*W, C)``.
        fine_hw: their map size ``(H, W)``.
        proj: the shared ``Linear(C, 1)``.
        temperature: multiplies (``mode='multiply'``, the release) or divides the logit.
    """
    return tokens * trc_gate(fine, fine_hw, hw, proj, temperature, mode)


def max_pool_3x3(x: Tensor) -> Tensor:
    """3x3 max-pool, stride 1, padding 1 (``-inf`` border), as row maxima then column maxima.

    Bit-identical to ``F.max_pool2d(x, 3, 1, 1)`` (max is exact and separable) and about 10x
    faster on CPU for NCHW maps (PyTorch's CPU kernel computes ``argmax`` indices it discards;
    measured 96 ms vs 9 ms at 1x256x128x128). Free in FLOPs either way (fvcore convention).
    """
    p = F.pad(x, (1, 1, 1, 1), value=float('-inf'))
    rows = torch.maximum(torch.maximum(p[..., :-2], p[..., 1:-1]), p[..., 2:])
    return torch.maximum(torch.maximum(rows[..., :-2, :], rows[..., 1:-1, :]), rows[..., 2:, :])


class MaxPool3x3(nn.MaxPool2d):
    """``nn.MaxPool2d(3, stride=1, padding=1)`` computed by :func:`max_pool_3x3` (LPE)."""

    def __init__(self) -> None:
        super().__init__(kernel_size=3, stride=1, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return max_pool_3x3(x)


@functools.lru_cache(maxsize=64)
def level_tensors(shapes: Tuple[Tuple[int, int], ...], device: torch.device
                  ) -> Tuple[Tensor, Tensor]:
    """``(spatial_shapes, level_start_index)`` of ``shapes``, built once per input size and
    device (no host-to-device copy per layer), ``spatial_shapes`` tagged with the sizes as ints
    (:func:`~pipelines.models.deform_attn.tag_shapes`: the deformable layers read no tensor
    back). Shared: never modify them in place. Built outside inference mode, so that a later
    training step may save them for its backward."""
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    with torch.inference_mode(False):
        spatial_shapes = torch.tensor(shapes, dtype=torch.long, device=device)
        return tag_shapes(spatial_shapes, shapes), torch.tensor(starts, dtype=torch.long,
                                                                device=device)


def stage_inputs(num_levels: int, shapes: Sequence[Tuple[int, int]], pos: Tensor,
                 ref: Tensor, device) -> dict:
    """Keyword arguments of an encoder layer that attends to the ``num_levels`` coarsest maps.

    ``pos`` (``(B, N, C)``) and ``ref`` (``(N, 2)``) are the baseline's, over all levels; they are
    sliced to the prefix of tokens the stage sees.
    """
    shapes = tuple((int(h), int(w)) for h, w in shapes[:num_levels])
    n = sum(h * w for h, w in shapes)
    batch = pos.shape[0]
    spatial_shapes, level_start_index = level_tensors(shapes, torch.device(device))
    reference_points = ref[None, :n, None].expand(batch, n, num_levels, 2)
    return dict(query_pos=pos[:, :n], key_padding_mask=None, spatial_shapes=spatial_shapes,
                level_start_index=level_start_index, reference_points=reference_points,
                valid_ratios=pos.new_ones((batch, num_levels, 2)))


def baseline_layer_map(schedule: Sequence[int], depth: int) -> List[int]:
    """The layer of a ``depth``-layer baseline encoder each PRO-SCALE layer starts from
    (fine-tuning from a baseline checkpoint): the last stage's ``p_L`` layers take the baseline's
    last ``p_L`` layers in order (so ``(0, 0, depth)`` is the identity; layer 0 repeats when
    ``p_L > depth``), the earlier stages' layers the baseline's first layers in order (wrapping
    around past ``depth``). ``(3, 3, 3)`` from 6 layers: ``[0, 1, 2, 3, 4, 5, 3, 4, 5]``."""
    early, last = sum(schedule[:-1]), schedule[-1]
    return ([i % depth for i in range(early)]
            + [max(0, depth - last + j) for j in range(last)])


LEVEL_SLICED = {  # per-level outputs of a deformable layer: (name, values per level and head)
    'self_attn.sampling_offsets.weight': 'offsets', 'self_attn.sampling_offsets.bias': 'offsets',
    'self_attn.attention_weights.weight': 'weights', 'self_attn.attention_weights.bias': 'weights',
}


def slice_levels(tensor: Tensor, heads: int, levels_from: int, levels_to: int) -> Tensor:
    """The rows of a 3-level ``sampling_offsets`` / ``attention_weights`` Linear (weight or bias)
    that a ``levels_to``-level layer has: mmcv orders the outputs ``(heads, levels, points[, 2])``,
    levels coarsest first in the pixel decoder, so the coarsest ``levels_to`` of every head."""
    rows = tensor.shape[0]
    per_level = rows // (heads * levels_from)
    out = tensor.reshape(heads, levels_from, per_level, *tensor.shape[1:])[:, :levels_to]
    return out.reshape(heads * levels_to * per_level, *tensor.shape[1:]).clone()


# ----------------------------------------------------------------------------- module
@MODELS.register_module()
class ProScalePixelDecoder(MSDeformAttnPixelDecoder):
    """``MSDeformAttnPixelDecoder`` whose encoder grows its token set stage by stage.

    Args:
        schedule (tuple[int]): encoder layers per stage, one entry per encoder level, coarsest
            stage first. ``(3, 3, 3)`` in the paper's configs; ``(0, 0, 6)`` is the baseline.
            It replaces ``encoder.num_layers``.
        trc (bool): token re-calibration of the res5 / res4 tokens from the res3 features.
        trc_temperature (float): the TRC logit scale ``t`` (the release's ``EXCITE_TEMP``, 0.1 in
            its configs).
        trc_mode (str): ``'multiply'``: ``sigmoid(t * z)`` as released; ``'divide'``:
            ``sigmoid(z / t)``, this project's first form.
        trc_init (str): ``'xavier'``: xavier-uniform weight, default bias, as released;
            ``'normal'``: weight N(0, 0.01), bias 0 (the first form).
        lpe (bool): light pixel embedding (3x3 max-pool instead of the 3x3 output conv).
        **kwargs: everything ``mmdet.MSDeformAttnPixelDecoder`` takes (``encoder``, ...).
    """

    def __init__(self, *, schedule: Sequence[int] = (3, 3, 3), trc: bool = False,
                 trc_temperature: float = 0.1, trc_mode: str = 'multiply',
                 trc_init: str = 'xavier', lpe: bool = False, **kwargs) -> None:
        encoder = ConfigDict(copy.deepcopy(kwargs.pop('encoder')))  # upstream reads attributes
        num_levels = encoder['layer_cfg']['self_attn_cfg']['num_levels']
        self.schedule = parse_schedule(schedule, num_levels)
        if not float(trc_temperature) > 0:
            raise ValueError(f"trc_temperature must be > 0, got {trc_temperature!r}")
        if trc_mode not in TRC_MODES:
            raise ValueError(f"trc_mode must be one of {TRC_MODES}, got {trc_mode!r}")
        if trc_init not in TRC_INITS:
            raise ValueError(f"trc_init must be one of {TRC_INITS}, got {trc_init!r}")
        encoder['num_layers'] = sum(self.schedule)
        super().__init__(encoder=encoder, **kwargs)
        # layers of the early stages attend to fewer levels (their offsets / weights are smaller)
        layers = []
        for i, levels in enumerate(stage_of_layers(self.schedule)):
            if levels == num_levels:
                layers.append(self.encoder.layers[i])
                continue
            layer_cfg = copy.deepcopy(encoder['layer_cfg'])
            layer_cfg['self_attn_cfg']['num_levels'] = levels
            layers.append(DeformableDetrTransformerEncoderLayer(**layer_cfg))
        self.encoder.layers = ModuleList(layers)
        self.trc_temperature = float(trc_temperature)
        self.trc_mode = trc_mode
        self.trc_init = trc_init
        self.sliced_from_baseline: List[str] = []  # set by a load (see _load_from_state_dict)
        feat_channels = self.level_encoding.embedding_dim
        self.trc = nn.Linear(feat_channels, 1) if trc else None
        self.lpe = bool(lpe)
        if lpe:  # ConvModule keeps its norm and activation; only the 3x3 conv is swapped
            for output_conv in self.output_convs:
                output_conv.conv = MaxPool3x3()

    def init_weights(self) -> None:
        super().init_weights()  # caffe2_xavier_init skips a max-pool (it has no weight)
        if self.trc is None:
            return
        if self.trc_init == 'xavier':  # as released: xavier weight, nn.Linear's own bias init
            self.trc.reset_parameters()
            nn.init.xavier_uniform_(self.trc.weight)
        else:
            nn.init.normal_(self.trc.weight, std=0.01)
            nn.init.zeros_(self.trc.bias)

    def recalibrate(self, tokens: Tensor, hw: Tuple[int, int], fine: Tensor,
                    fine_hw: Tuple[int, int]) -> Tensor:
        """TRC of the tokens of the map joining a stage, with this decoder's settings."""
        return recalibrate_tokens(tokens, hw, fine, fine_hw, self.trc, self.trc_temperature,
                                  self.trc_mode)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Loading a *baseline* checkpoint (every encoder layer over all levels; ``load_from``
        of a Mask2Former baseline) into another schedule: each layer takes the baseline layer
        :func:`baseline_layer_map` names, the 1- and 2-level layers the matching level slices of
        its ``sampling_offsets`` / ``attention_weights`` (:func:`slice_levels`). A checkpoint of
        this same schedule loads unchanged. What was sliced: :attr:`sliced_from_baseline`."""
        self.sliced_from_baseline = adapt_baseline_encoder(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _encoder_tokens(self, feats: List[Tensor]):
        """Project the coarse maps; tokens, positional + level encodings and reference points
        per level, coarsest first (exactly as the upstream forward builds them)."""
        batch = feats[0].shape[0]
        tokens, pos, ref, shapes = [], [], [], []
        for i in range(self.num_encoder_levels):
            level_idx = self.num_input_levels - i - 1
            feat = feats[level_idx]
            hw = tuple(int(s) for s in feat.shape[-2:])
            mask = feat.new_zeros((batch,) + hw, dtype=torch.bool)
            level_pos = self.level_encoding.weight[i].view(1, -1, 1, 1) + \
                self.postional_encoding(mask)
            points = self.point_generator.single_level_grid_priors(hw, level_idx,
                                                                   device=feat.device)
            factor = feat.new_tensor([hw[1], hw[0]]) * self.strides[level_idx]
            tokens.append(map_to_tokens(self.input_convs[i](feat)))
            pos.append(map_to_tokens(level_pos))
            ref.append(points / factor)
            shapes.append(hw)
        return tokens, torch.cat(pos, 1), torch.cat(ref, 0), shapes

    def forward_encoder(self, feats: List[Tensor]) -> List[Tensor]:
        """The progressive encoder; returns the encoded maps ``(B, C, h, w)``, coarsest first."""
        tokens, pos, ref, shapes = self._encoder_tokens(feats)
        fine, fine_hw = tokens[-1], shapes[-1]
        layers = iter(self.encoder.layers)
        for stage, num_layers in enumerate(self.schedule):
            joining = tokens[stage]
            if self.trc is not None and stage < len(self.schedule) - 1:
                joining = self.recalibrate(joining, shapes[stage], fine, fine_hw)
            query = torch.cat((query, joining), 1) if stage else joining
            if num_layers == 0:
                continue
            kwargs = stage_inputs(stage + 1, shapes, pos, ref, query.device)
            for _ in range(num_layers):
                query = next(layers)(query=query, **kwargs)
        sizes = [h * w for h, w in shapes]
        return [tokens_to_map(x, hw) for x, hw in zip(query.split(sizes, 1), shapes)]

    def forward(self, feats: List[Tensor]) -> Tuple[Tensor, List[Tensor]]:
        """Same contract as ``MSDeformAttnPixelDecoder.forward``: ``(mask_feature, multi-scale
        features)``; the FPN tail is upstream's."""
        outs = self.forward_encoder(feats)
        for i in range(self.num_input_levels - self.num_encoder_levels - 1, -1, -1):
            cur_feat = self.lateral_convs[i](feats[i])
            y = cur_feat + F.interpolate(outs[-1], size=cur_feat.shape[-2:], mode='bilinear',
                                         align_corners=False)
            outs.append(self.output_convs[i](y))
        return self.mask_feature(outs[-1]), outs[:self.num_outs]


def adapt_baseline_encoder(decoder: ProScalePixelDecoder, state_dict: dict,
                           prefix: str) -> List[str]:
    """Rewrite, in place, the encoder layers of a baseline checkpoint in ``state_dict`` (keys
    under ``prefix``) into ``decoder``'s schedule; returns the keys that were sliced. Does nothing
    when the checkpoint's layers already fit (same count and shapes) or are not all full-level."""
    head = prefix + 'encoder.layers.'
    source = {}
    for key in state_dict:
        if key.startswith(head):
            index, _, name = key[len(head):].partition('.')
            source.setdefault(int(index), {})[name] = key
    if not source:
        return []
    ours = decoder.encoder.layers
    full = decoder.num_encoder_levels
    offsets = 'self_attn.sampling_offsets.weight'
    if len(source) == len(ours) and all(
            offsets in source[i] and state_dict[source[i][offsets]].shape
            == ours[i].self_attn.sampling_offsets.weight.shape for i in range(len(ours))):
        return []  # a checkpoint of this schedule
    layer0 = ours[-1].self_attn  # a full-level layer of this decoder
    if sorted(source) != list(range(len(source))) or any(
            offsets not in names or state_dict[names[offsets]].shape
            != layer0.sampling_offsets.weight.shape for names in source.values()):
        return []  # not a baseline encoder: leave the mismatch to the loader's report
    tensors = {i: {name: state_dict.pop(key) for name, key in names.items()}
               for i, names in source.items()}
    sliced = []
    for j, (src, levels) in enumerate(zip(baseline_layer_map(decoder.schedule, len(source)),
                                          stage_of_layers(decoder.schedule))):
        for name, value in tensors[src].items():
            key = f'{head}{j}.{name}'
            if name in LEVEL_SLICED and levels < full:
                value = slice_levels(value, layer0.num_heads, full, levels)
                sliced.append(key)
            state_dict[key] = value
    return sliced
