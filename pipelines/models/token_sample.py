"""ATS: adaptive token sampling inside a plain ViT, for dense prediction.

Paper: *Adaptive Token Sampling for Efficient Vision Transformers* (ECCV 2022, arXiv 2111.15667).
Written from the method notes (``../shared/docs/methods.md``; summarised in
``pipelines/models/README.md``); the released code (classification only) is not used.

In each block listed in ``ats_layers`` (0-based; released: 3..11 of DeiT-S):

* the block computes its attention over every current token as usual;
* significance of patch token ``j``: ``sum_heads A[CLS, j] * ||v_j||`` (the value vector of all
  heads together, ``C``-dimensional), CLS excluded, padding zero, normalised to sum 1;
* inverse-transform sampling: the scores sorted ascending, their cumulative sum min-max
  normalised to [0, 1]; for each of ``levels`` evenly spaced values from the smallest non-zero
  normalised cumulative value to 1 (``grid='nonzero'``, the release's grid; ``grid='zero'``
  spaces them over [0, 1], this project's first form, whose lowest level always picks the least
  significant token) the token whose cumulative value is nearest is picked (equally near: the
  lower one). ``levels`` defaults to the image's initial patch-token count (196 at 224x224 in
  the paper). Duplicate picks collapse, so low-significance tokens (flat stretches of the CDF)
  vanish and the kept count varies per image;
* at most ``budget`` (K) patch tokens are kept, the **most** significant ones when there are more
  picks (the released code crashes for K < N and would keep the least significant); CLS always.
  ``budget=None`` (the default, the paper's DeiT-S) is K = N, no cap;
* only the kept query rows go on through the block's projection and MLP, and every later block.
  Images of a batch keep different counts: the kept tokens are compacted to the batch's largest
  count, padding masked out of every later attention (``-inf`` key bias);
* dense prediction (beyond the paper): a dropped token keeps its last feature (its input to the
  block that dropped it) and every output map scatters the current tokens back over those, by
  their grid indices, so the neck sees the whole grid.

The sampling is deterministic (no random draw), so evaluation is. ``ats_layers=()`` runs the
upstream blocks unchanged: exactly the plain ViT.

Shape: pure functions (:func:`significance`, :func:`inverse_transform_sample`) and one
registered class, :class:`SampleViT` (a ``VisionTransformer`` subclass; ``type='SampleViT'``).
"""
from __future__ import annotations

from numbers import Integral
from typing import List, Optional, Sequence, Tuple

import torch
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS
from torch import Tensor

from pipelines.axes import Axis
from pipelines.models.vit_tokens import (attend, embed_tokens, finish_layer, grid_output,
                                         layer_forward, padding_bias)

AXES = {
    "ats_budget": Axis("model.backbone.budget", type="int", minimum=1, id="K{}",
                       help="ATS: at most this many patch tokens leave each ATS block "
                            "(default: no cap, K = N, as in the paper)"),
    "ats_grid": Axis("model.backbone.grid", type="str", choices=("nonzero", "zero"),
                     id="grid_{}",
                     help="ATS: levels from the smallest non-zero CDF value to 1 (nonzero, as "
                          "released) or over [0, 1] (zero)"),
    "ats_layers": Axis("model.backbone.ats_layers", type="int_list", minimum=0, id="atsl{}",
                       maximum_key="model.backbone.num_layers", maximum_offset=-1,
                       help="ATS: 0-based ViT blocks that sample tokens"),
    "ats_levels": Axis("model.backbone.levels", type="int", minimum=1, id="n{}",
                       help="ATS: levels of the inverse-transform sampling "
                            "(default: the initial patch-token count)"),
}


# ----------------------------------------------------------------------------- pure functions
def significance(attn: Tensor, v: Tensor, valid: Tensor) -> Tensor:
    """ATS significance of the patch tokens: ``[B, M - 1]``, summing to 1 per image.

    Args:
        attn: attention probabilities ``[B, heads, M, M]`` (token 0 is CLS).
        v: values ``[B, heads, M, C / heads]``.
        valid: ``[B, M]`` real tokens (padding gets 0).
    """
    cls_attn = attn[:, :, 0, 1:].sum(dim=1)
    vnorm = v[:, :, 1:].transpose(1, 2).flatten(2).norm(dim=-1)
    s = (cls_attn * vnorm).masked_fill(~valid[:, 1:], 0)
    return s / s.sum(dim=1, keepdim=True).clamp_min(torch.finfo(s.dtype).tiny)


GRIDS = ("nonzero", "zero")


def inverse_transform_sample(scores: Tensor, levels: int, budget: Optional[int] = None,
                             grid: str = "nonzero") -> Tensor:
    """Pick tokens of one image from its significance ``scores [m]`` (sum 1).

    Returns the kept positions, sorted ascending: the unique tokens nearest to ``levels`` evenly
    spaced values of the min-max normalised cumulative sorted scores, from the smallest non-zero
    cumulative value (``grid='nonzero'``, as released) or from 0 (``'zero'``) to 1, truncated to
    the ``budget`` most significant (None: no cap; stable: equal scores keep the lower position).
    """
    m = scores.shape[0]
    order = torch.sort(scores, stable=True).indices
    cdf = scores[order].cumsum(0)
    span = cdf[-1] - cdf[0]
    cdf = (cdf - cdf[0]) / span if float(span) > 0 else torch.zeros_like(cdf)
    start = 0.0
    if grid == "nonzero":
        nonzero = cdf[cdf > 0]
        start = float(nonzero.min()) if nonzero.numel() else 0.0
    elif grid != "zero":
        raise ValueError(f"ATS grid must be one of {GRIDS}, got {grid!r}")
    targets = torch.linspace(start, 1, levels, dtype=cdf.dtype, device=cdf.device)
    hi = torch.searchsorted(cdf, targets).clamp_max(m - 1)
    lo = (hi - 1).clamp_min(0)
    pick = torch.where((targets - cdf[lo]).abs() <= (cdf[hi] - targets).abs(), lo, hi)
    kept = order[torch.unique(pick)]
    if budget is not None and kept.numel() > budget:
        best = torch.sort(-scores[kept], stable=True).indices[:budget]
        kept = kept[best]
    return torch.sort(kept).values


def _linspace(start: Tensor, levels: int) -> Tensor:
    """``torch.linspace(start[b], 1, levels)`` for every row ``b`` at once ``[B, levels]``, by
    the formula of ATen's scalar kernel (first half from ``start``, second half from 1)."""
    if levels == 1:
        return start[:, None].clone()
    step = (1 - start[:, None]) / (levels - 1)
    i = torch.arange(levels, device=start.device, dtype=start.dtype)[None]
    return torch.where(i < levels // 2, start[:, None] + step * i,
                       1 - step * (levels - 1 - i))


def inverse_transform_sample_batch(scores: Tensor, counts: Tensor, levels: int,
                                   budget: Optional[int] = None, grid: str = "nonzero"
                                   ) -> Tuple[Tensor, Tensor]:
    """:func:`inverse_transform_sample` of every image of a batch at once, without a host sync.

    Args:
        scores: ``[B, M]`` significance; image ``b``'s tokens are its first ``counts[b]``
            (padding after them; its values are ignored).
        counts: ``[B]`` real tokens per image.

    Returns:
        ``(kept [B, M], kcount [B])``: image ``b``'s kept positions ascending in
        ``kept[b, :kcount[b]]`` (the rest is padding), the same positions as
        :func:`inverse_transform_sample` of ``scores[b, :counts[b]]``.
    """
    if grid not in GRIDS:
        raise ValueError(f"ATS grid must be one of {GRIDS}, got {grid!r}")
    b, m = scores.shape
    pos = torch.arange(m, device=scores.device)[None]
    pad = pos >= counts[:, None]
    values = scores.masked_fill(pad, 0)
    order = torch.sort(scores.masked_fill(pad, float("inf")), dim=1, stable=True).indices
    ranked = torch.gather(values, 1, order)  # ascending, padding (0) after the real ones
    cdf = ranked.cumsum(1)
    last = torch.gather(cdf, 1, (counts - 1).clamp_min(0)[:, None])
    span = last - cdf[:, :1]
    cdf = torch.where(span > 0, (cdf - cdf[:, :1]) / torch.where(span > 0, span, 1),
                      torch.zeros_like(cdf))
    cdf = torch.where(pad, cdf.max(dim=1, keepdim=True).values, cdf)  # sorted over padding too
    start = torch.zeros(b, dtype=cdf.dtype, device=cdf.device)
    if grid == "nonzero":
        positive = cdf.masked_fill((cdf <= 0) | pad, float("inf")).min(dim=1).values
        start = torch.where(torch.isinf(positive), start, positive)
    targets = _linspace(start, levels)
    hi = torch.clamp(torch.searchsorted(cdf.contiguous(), targets.contiguous()),
                     max=(counts - 1).clamp_min(0)[:, None])
    lo = (hi - 1).clamp_min(0)
    near_lo = (targets - torch.gather(cdf, 1, lo)).abs() <= (torch.gather(cdf, 1, hi)
                                                             - targets).abs()
    pick = torch.where(near_lo, lo, hi)
    chosen = torch.zeros(b, m, dtype=torch.bool, device=scores.device).scatter(
        1, pick, torch.ones_like(pick, dtype=torch.bool))  # a tensor source: jit.trace takes it
    if budget is not None and budget < m:  # the `budget` best picks (ties: lower rank)
        key = (-ranked).masked_fill(~chosen, float("inf"))
        best = torch.sort(key, dim=1, stable=True).indices[:, :budget]
        chosen = chosen & torch.zeros_like(chosen).scatter(
            1, best, torch.ones_like(best, dtype=torch.bool))
    at_pos = torch.zeros_like(chosen).scatter(1, order, chosen)
    kept = torch.sort((~at_pos).to(torch.uint8), dim=1, stable=True).indices
    return kept, at_pos.sum(1)


def check_knobs(ats_layers: Sequence[int], budget: Optional[int], levels: Optional[int],
                depth: int, grid: str = "nonzero") -> Tuple[int, ...]:
    """Validate the ATS knobs; returns the sorted, unique ATS blocks. ``ValueError`` (one line)."""
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, Integral)
                               or budget < 1):
        raise ValueError(f"ATS budget K must be an int >= 1 or None (no cap), got {budget!r}")
    if grid not in GRIDS:
        raise ValueError(f"ATS grid must be one of {GRIDS}, got {grid!r}")
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, Integral)
                               or levels < 1):
        raise ValueError(f"ATS levels must be an int >= 1 or None, got {levels!r}")
    if isinstance(ats_layers, (str, bytes)) or not isinstance(ats_layers, Sequence):
        raise ValueError(f"ats_layers must be a list of block indices, got {ats_layers!r}")
    for i in ats_layers:
        if isinstance(i, bool) or not isinstance(i, Integral) or not 0 <= i < depth:
            raise ValueError(f"ats_layers entries must be ints in [0, {depth - 1}] (blocks of "
                             f"this {depth}-block ViT), got {list(ats_layers)!r}")
    return tuple(sorted(set(int(i) for i in ats_layers)))


# ----------------------------------------------------------------------------- the backbone
@MODELS.register_module()
class SampleViT(VisionTransformer):
    """MMSeg's ``VisionTransformer`` with adaptive token sampling in chosen blocks.

    Args:
        ats_layers: 0-based blocks that sample tokens (empty: the plain ViT).
        budget: K, the most patch tokens an ATS block keeps (>= 1); None (default): K = N, no
            cap, as the paper's DeiT-S.
        levels: levels of the inverse-transform sampling; None: the image's patch-token count.
        grid: ``'nonzero'`` (default, as released): levels from the smallest non-zero
            normalised CDF value to 1; ``'zero'``: over [0, 1].
        **kwargs: ``VisionTransformer`` arguments (``with_cls_token`` must be True).
    """

    def __init__(self, *, ats_layers: Sequence[int] = (), budget: Optional[int] = None,
                 levels: Optional[int] = None, grid: str = "nonzero", **kwargs):
        super().__init__(**kwargs)
        if not self.with_cls_token:
            raise ValueError("ATS needs the CLS token: with_cls_token must be True")
        self.ats_layers = check_knobs(ats_layers, budget, levels, len(self.layers), grid)
        self.budget = None if budget is None else int(budget)
        self.grid = grid
        self.levels = None if levels is None else int(levels)
        self.last_token_counts: List[List[int]] = []  # per ATS block, kept tokens per image

    def forward(self, inputs: Tensor):
        x, hw = embed_tokens(self, inputs)
        b, n = x.shape[0], x.shape[1] - 1
        outs = []
        if self.out_origin:
            outs.append(grid_output(self, x[:, 1:], hw, x[:, 0]))
        self.last_token_counts = []
        state = None  # (grid index [B, M-1] with n for padding, valid [B, M], last features)
        for i, layer in enumerate(self.layers):
            if i in self.ats_layers:
                x, state = self._sample(layer, x, state, n)
            elif state is None:
                x = layer(x)
            else:
                x = layer_forward(layer, x, padding_bias(state[1], x.dtype))
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.norm1(x)
            if i in self.out_indices:
                patches = x[:, 1:] if state is None else scatter_back(x, state)
                outs.append(grid_output(self, patches, hw, x[:, 0]))
        return tuple(outs)

    def _sample(self, layer, x: Tensor, state, n: int):
        """One ATS block: attention over every token, then only the sampled rows go on."""
        b, m, c = x.shape
        if state is None:
            index = torch.arange(n, device=x.device).expand(b, n)
            valid = torch.ones(b, m, dtype=torch.bool, device=x.device)
            last = x[:, 1:]
        else:
            index, valid, _ = state
            last = scatter_back(x, state)
        attn, v = attend(layer, x, None if state is None else padding_bias(valid, x.dtype))
        with torch.no_grad():
            sig = significance(attn, v, valid)
            kept, kcount = inverse_transform_sample_batch(sig, valid[:, 1:].sum(1),
                                                          self.levels or n, self.budget,
                                                          self.grid)
            # the one host sync of an ATS block: the kept counts (element reads in a trace)
            counts = ([int(k) for k in kcount] if torch.jit.is_tracing() else kcount.tolist())
        r = max(counts)
        kept = kept[:, :r]
        real = torch.arange(r, device=x.device)[None] < kcount[:, None]
        rows = torch.zeros(b, r + 1, dtype=torch.long, device=x.device)  # padding rows: CLS
        rows[:, 1:] = torch.where(real, kept + 1, 0)
        new_index = torch.where(real, torch.gather(index, 1, kept), n)
        new_valid = torch.ones(b, r + 1, dtype=torch.bool, device=x.device)
        new_valid[:, 1:] = real
        self.last_token_counts.append(counts)
        y = finish_layer(layer, x, attn, v, rows)
        return y, (new_index, new_valid, last)


def scatter_back(x: Tensor, state) -> Tensor:
    """The full grid ``[B, N, C]``: each token's latest feature (the current ones over the last
    features of dropped tokens), by grid index; padding goes to a discarded extra slot."""
    index, valid, last = state
    b, n, c = last.shape
    grid = torch.cat([last, last.new_zeros(b, 1, c)], dim=1)
    grid = grid.scatter(1, index[:, :, None].expand(b, index.shape[1], c), x[:, 1:])
    return grid[:, :n]
