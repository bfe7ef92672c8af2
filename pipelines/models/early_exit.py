"""ECO-M2F: early exit from the pixel decoder's encoder, the exit chosen per image by a gate.

Paper: *Efficient Transformer Encoders for Mask2Former-style models* (arXiv 2404.15244). Written
from the method notes (``../shared/docs/methods.md``; summarised in
``pipelines/models/README.md``), not from the public code, which cannot run as shipped (see below).

The encoder may stop after layer ``k`` for ``k`` in ``min_layers..depth`` (the *exits*; the
released configs use 2..6 of a 6-layer encoder, five exits). The recipe has three steps, and only
the last two depend on the trade-off ``beta``:

1. **Train with exits.** Every training iteration draws one exit ``k`` (``exit_distribution``:
   uniform by default) and the decoder runs once on the encoder output after layer ``k``. The
   losses are multiplied by ``w_k = k / E_p[k]`` (:func:`exit_loss_weight`): proportional to the
   depth, normalised so that the expected weight under the exit distribution is 1 (the loss scale
   of the baseline). The released code has no such step: its training forward takes the gate's own
   argmax exit and multiplies every loss, the deep-supervision copies included, by ``k + 2``
   unnormalised (its model file adds 2 to the encoder's exit index, which already counts the
   first two layers). ``loss_weighting='release'`` gives that ``k + 2`` weight with our random
   exit draw; the default ``'normalised'`` keeps ``k / E_p[k]``, which keeps the loss scale of
   the baseline (the release's factor is 4..8 at exits 2..6, an effective learning-rate change).
   With a single exit at the last layer ``w = 1`` and the model is exactly the
   baseline (tested with the baseline's weights).
2. **Derived dataset** (:mod:`pipelines.eco_m2f`): per-image quality ``q_k`` of every exit.
3. **Gate** (:class:`ExitGate`): average-pooled res5 (1/32) tokens right after the input
   projection (1x1 conv + GN; no positional or level encoding, no encoder layer) ->
   ``Linear(C -> number of exits)``, trained with cross-entropy on the hard labels
   ``argmax_k (q_k - beta * k)`` (:func:`gate_labels`). The released gate loss takes a softmax over
   the *batch* axis and its argmax runs over the flattened ``(B, exits)`` tensor (right only at
   batch size 1); here the exit is picked per image, and a batch with mixed exits runs each
   encoder layer once over the images still active at that depth (no padding to the deepest
   exit). Data-dependent choices are Python ints, so ``torch.jit.trace`` records each image's path.

Composes with PRO-SCALE (neither paper does it): :class:`EarlyExitPixelDecoder` subclasses
:class:`~pipelines.models.pro_scale.ProScalePixelDecoder` (itself mmdet's
``MSDeformAttnPixelDecoder``); with ``schedule=None`` the schedule is ``(0, 0, depth)``, the plain
baseline encoder. With a progressive schedule the exits sit at its layer boundaries, so an early
exit also skips the finer stages: a map whose stage was never entered leaves the encoder as its
input projection.
"""
from __future__ import annotations

from contextlib import contextmanager
from numbers import Integral, Real
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmdet.registry import MODELS
from mmseg.models.decode_heads import Mask2FormerHead
from mmseg.registry import MODELS as SEG_MODELS
from torch import Tensor

from pipelines.models.pro_scale import ProScalePixelDecoder, stage_inputs, tokens_to_map

from pipelines.axes import Axis

AXES = {
    "min_layers": Axis("model.decode_head.pixel_decoder.min_layers", type="int", minimum=1,
                       id="min{}", help="shallowest exit: exits are min_layers..encoder depth",
                       # the encoder's depth: a PRO-SCALE schedule's sum, else num_layers
                       maximum_key=("model.decode_head.pixel_decoder.schedule",
                                    "model.decode_head.pixel_decoder.encoder.num_layers")),
    "exit_weighting": Axis("model.decode_head.pixel_decoder.loss_weighting", type="str",
                           choices=("normalised", "release"), id="w_{}",
                           help="exit loss weight k / E[k] (normalised) or k + 2 (release)"),
    "exit_dist": Axis("model.decode_head.pixel_decoder.exit_distribution", type="str",
                      choices=("uniform", "linear"), id="exit_{}",
                      help="distribution of the exit drawn per training iteration "
                           "(linear: p proportional to k)"),
    # a gate-stage option (`train-gate --beta`): changing it retrains only the gate
    "beta": Axis("beta", type="float", minimum=0, id="beta{}", stage="gate",
                 help="gate trade-off: label = argmax_k (q_k - beta k)"),
}

ExitChoice = Union[None, int, str, Sequence[int]]


# ----------------------------------------------------------------------------- pure functions
def exit_range(min_layers, depth: int) -> Tuple[int, ...]:
    """The exits ``min_layers..depth`` (encoder layers run before leaving), checked.

    Raises:
        TypeError: ``min_layers`` is not an int.
        ValueError: ``min_layers`` below 1 or above the encoder depth (an empty exit range).
    """
    if isinstance(min_layers, bool) or not isinstance(min_layers, Integral):
        raise TypeError(f"min_layers must be an int, got {min_layers!r}")
    if min_layers < 1:
        raise ValueError(f"min_layers must be >= 1 (an exit runs at least one encoder layer), "
                         f"got {min_layers}")
    if min_layers > depth:
        raise ValueError(f"min_layers={min_layers} is above the encoder depth {depth}: the exit "
                         "range is empty")
    return tuple(range(int(min_layers), depth + 1))


def exit_probabilities(distribution, exits: Sequence[int]) -> List[float]:
    """Probabilities of drawing each exit during training.

    Args:
        distribution: ``'uniform'``, ``'linear'`` (``p_k`` proportional to ``k``) or a sequence
            of non-negative weights, one per exit (normalised here).
        exits: the exit depths.
    """
    if isinstance(distribution, str):
        if distribution == 'uniform':
            weights = [1.0] * len(exits)
        elif distribution == 'linear':
            weights = [float(k) for k in exits]
        else:
            raise ValueError(f"exit_distribution must be 'uniform', 'linear' or a list of "
                             f"weights, got {distribution!r}")
    else:
        if not isinstance(distribution, Sequence) or len(distribution) != len(exits):
            raise ValueError(f"exit_distribution needs one weight per exit {tuple(exits)}, "
                             f"got {distribution!r}")
        if any(isinstance(w, bool) or not isinstance(w, Real) or w < 0 for w in distribution):
            raise ValueError(f"exit_distribution weights must be numbers >= 0, got "
                             f"{distribution!r}")
        weights = [float(w) for w in distribution]
    total = sum(weights)
    if not total > 0:
        raise ValueError(f"exit_distribution {distribution!r} gives every exit weight 0")
    return [w / total for w in weights]


LOSS_WEIGHTINGS = ('normalised', 'release')


def exit_loss_weight(k: int, exits: Sequence[int], probs: Sequence[float],
                     weighting: str = 'normalised') -> float:
    """``w_k = k / E_p[k]`` (``'normalised'``: proportional to the depth, expected value 1 under
    ``probs``) or ``k + 2`` (``'release'``: the released code's unnormalised factor)."""
    if weighting == 'release':
        return float(k + 2)
    if weighting != 'normalised':
        raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")
    return float(k) / sum(p * e for p, e in zip(probs, exits))


def gate_labels(quality: Tensor, exits: Sequence[int], beta: float) -> Tensor:
    """Hard gate labels ``argmax_k (q_k - beta * k)`` (indices into ``exits``).

    Args:
        quality: ``(N, len(exits))`` per-image quality in ``[0, 1]``, one column per exit.
        exits: the exit depths (``k``; a constant shift of ``k`` does not change the argmax).
        beta: the trade-off, ``>= 0``; ties go to the shallowest exit.
    """
    if not beta >= 0:
        raise ValueError(f"beta must be >= 0, got {beta!r}")
    k = torch.as_tensor(list(exits), dtype=quality.dtype, device=quality.device)
    return (quality - beta * k).argmax(1)


def choose_exits(exits: ExitChoice, allowed: Sequence[int], batch: int) -> List[int]:
    """One exit per image from ``None`` (the deepest), an int (all images) or a sequence."""
    if exits is None:
        return [allowed[-1]] * batch
    if isinstance(exits, Integral) and not isinstance(exits, bool):
        exits = [int(exits)] * batch
    exits = [int(e) for e in exits]
    if len(exits) != batch:
        raise ValueError(f"{len(exits)} exits for a batch of {batch} images")
    bad = sorted(set(exits) - set(allowed))
    if bad:
        raise ValueError(f"exit(s) {bad} outside the exit range {tuple(allowed)}")
    return exits


# ----------------------------------------------------------------------------- modules
@MODELS.register_module()
class ExitGate(nn.Module):
    """The ECO-M2F gate: mean of the projected res5 tokens -> ``Linear(C -> num_exits)``.

    Args:
        in_channels (int): token width (the pixel decoder's ``feat_channels``, 256).
        num_exits (int): number of exits (logits).
    """

    def __init__(self, *, in_channels: int = 256, num_exits: int = 5) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_exits)

    @staticmethod
    def pool(tokens: Tensor) -> Tensor:
        """``(B, N, C)`` res5 tokens -> ``(B, C)`` (average pooling)."""
        return tokens.mean(1)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``(B, num_exits)`` from the projected res5 tokens ``(B, N, C)``."""
        return self.fc(self.pool(tokens))


@MODELS.register_module()
class EarlyExitPixelDecoder(ProScalePixelDecoder):
    """A pixel decoder whose encoder can stop after any layer of ``min_layers..depth``.

    Args:
        min_layers (int): the shallowest exit (released: 2). ``depth`` is the number of encoder
            layers (``encoder.num_layers``, or the sum of ``schedule``).
        exit_distribution (str | list[float]): how training draws the exit of an iteration:
            ``'uniform'``, ``'linear'`` (``p`` proportional to ``k``) or weights per exit.
        test_exit (None | int | str): the exit outside training: ``None`` the deepest, an int a
            fixed exit, ``'gate'`` chosen per image by :attr:`gate` (built with random weights;
            load a trained one).
        schedule (tuple[int] | None): a PRO-SCALE schedule; ``None`` is ``(0, 0, depth)``, the
            baseline encoder.
        loss_weighting (str): ``'normalised'`` (``k / E_p[k]``) or ``'release'`` (``k + 2``,
            the released code's factor).
        **kwargs: ``trc``, ``trc_temperature``, ``trc_mode``, ``trc_init``, ``lpe`` of ``ProScalePixelDecoder`` and everything
            ``mmdet.MSDeformAttnPixelDecoder`` takes.
    """

    def __init__(self, *, min_layers: int = 2, exit_distribution='uniform',
                 test_exit: ExitChoice = None, schedule: Optional[Sequence[int]] = None,
                 loss_weighting: str = 'normalised', **kwargs) -> None:
        encoder = kwargs['encoder']
        if schedule is None:
            levels = encoder['layer_cfg']['self_attn_cfg']['num_levels']
            schedule = (0,) * (levels - 1) + (encoder['num_layers'],)
        super().__init__(schedule=schedule, **kwargs)
        self.exits = exit_range(min_layers, sum(self.schedule))
        self.exit_probs = exit_probabilities(exit_distribution, self.exits)
        exit_loss_weight(self.exits[-1], self.exits, self.exit_probs, loss_weighting)  # checks
        self.loss_weighting = loss_weighting
        if isinstance(test_exit, str) and test_exit != 'gate':
            raise ValueError(f"test_exit must be None, an exit or 'gate', got {test_exit!r}")
        if test_exit != 'gate':
            choose_exits(test_exit, self.exits, 1)
        self.test_exit = test_exit
        self.gate = (ExitGate(in_channels=self.level_encoding.embedding_dim,
                              num_exits=len(self.exits)) if test_exit == 'gate' else None)
        self.last_exits: List[int] = []

    @property
    def depth(self) -> int:
        return self.exits[-1]

    def loss_weight(self, k: int) -> float:
        """The loss weight of a training iteration that exited after layer ``k``."""
        return exit_loss_weight(k, self.exits, self.exit_probs, self.loss_weighting)

    def draw_exit(self) -> int:
        """One exit from ``exit_distribution`` (torch's global generator: seeded by mmengine)."""
        probs = torch.tensor(self.exit_probs)
        return self.exits[int(torch.multinomial(probs, 1))]

    def _pick_exits(self, exits: ExitChoice, res5: Tensor) -> List[int]:
        batch = res5.shape[0]
        if exits is None:
            if self.training:
                return [self.draw_exit()] * batch
            exits = self.test_exit
        if isinstance(exits, str):  # 'gate'
            if self.gate is None:
                raise ValueError("test_exit='gate' but the pixel decoder has no gate")
            choice = self.gate(res5).argmax(1).tolist()
            return [self.exits[c] for c in choice]
        return choose_exits(exits, self.exits, batch)

    def forward_encoder(self, feats: List[Tensor], exits: ExitChoice = None) -> List[Tensor]:
        """The encoder with one exit per image; returns the maps ``(B, C, h, w)``, coarsest first.

        Each layer runs once over the images whose exit is at least that deep. A map whose stage
        an image never entered is its input projection.
        """
        tokens, pos, ref, shapes = self._encoder_tokens(feats)
        batch = tokens[0].shape[0]
        exits = self._pick_exits(exits, tokens[0])
        self.last_exits = exits
        fine, fine_hw = tokens[-1], shapes[-1]
        active = list(range(batch))
        done = []  # (image indices, encoded tokens of the first `levels` maps, levels)
        query, depth, layer = None, 0, iter(self.encoder.layers)

        def subset(t: Tensor) -> Tensor:
            return t if len(active) == batch else t[active]

        for stage, num_layers in enumerate(self.schedule):
            if not active:
                break
            joining = subset(tokens[stage])
            if self.trc is not None and stage < len(self.schedule) - 1:
                joining = self.recalibrate(joining, shapes[stage], subset(fine), fine_hw)
            query = torch.cat((query, joining), 1) if stage else joining
            if num_layers == 0:
                continue
            kwargs = stage_inputs(stage + 1, shapes, subset(pos), ref, query.device)
            for _ in range(num_layers):
                query = next(layer)(query=query, **kwargs)
                depth += 1
                leaving = [i for i, b in enumerate(active) if exits[b] == depth]
                if not leaving or depth == self.depth:
                    continue
                staying = [i for i, b in enumerate(active) if exits[b] != depth]
                done.append(([active[i] for i in leaving], query[leaving], stage + 1))
                active = [active[i] for i in staying]
                if not active:
                    break
                query = query[staying]
                kwargs = stage_inputs(stage + 1, shapes, subset(pos), ref, query.device)
        if active:
            done.append((active, query, len(self.schedule)))
        return self._assemble(tokens, shapes, done, batch)

    @staticmethod
    def _assemble(tokens: List[Tensor], shapes, done, batch: int) -> List[Tensor]:
        """Per-level maps of the whole batch from the groups of images that left together."""
        sizes = [h * w for h, w in shapes]
        outs = []
        for level, (x, hw) in enumerate(zip(tokens, shapes)):
            for images, query, levels in done:
                if level >= levels:
                    continue  # never entered: keep the input projection
                chunk = query[:, sum(sizes[:level]):sum(sizes[:level + 1])]
                if len(images) == batch:
                    x = chunk
                else:
                    index = torch.tensor(images, dtype=torch.long, device=x.device)
                    x = x.index_copy(0, index, chunk)
            outs.append(tokens_to_map(x, hw))
        return outs


@contextmanager
def forced_exits(pixel_decoder: EarlyExitPixelDecoder, exits: ExitChoice):
    """Run the model's inference with ``exits`` (an int, one per image, or ``'gate'``)."""
    before = pixel_decoder.test_exit
    pixel_decoder.test_exit = exits
    try:
        yield pixel_decoder
    finally:
        pixel_decoder.test_exit = before


@SEG_MODELS.register_module()
class EarlyExitMask2FormerHead(Mask2FormerHead):
    """mmseg's ``Mask2FormerHead`` whose losses are weighted by the exit drawn this iteration.

    Every loss term (the deep-supervision copies too) is multiplied by
    :meth:`EarlyExitPixelDecoder.loss_weight` of the exit the pixel decoder drew.
    """

    def loss(self, x, batch_data_samples, train_cfg) -> dict:
        losses = super().loss(x, batch_data_samples, train_cfg)
        weight = self.pixel_decoder.loss_weight(self.pixel_decoder.last_exits[0])
        return {name: value * weight if 'loss' in name else value
                for name, value in losses.items()}
