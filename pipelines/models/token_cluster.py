"""AiluRus: spatially windowed density-peak token clustering inside a plain ViT.

Paper: *AiluRus: A Scalable ViT Framework for Dense Prediction* (NeurIPS 2023, arXiv 2311.01197).
No public code exists; written from the method notes (``../shared/docs/methods.md``; summarised in
``pipelines/models/README.md``).

After block ``cluster_layer`` of the ViT, the patch tokens ``[B, N, C]`` (grid ``h x w``) are
clustered by DPC-KNN restricted to a spatial window of radius ``window`` around each token
((2 window + 1)^2 candidates; the distances are computed tile by tile, so the cost is linear
in the tokens, ``O(N (tile + 2 window)^2 C)``, not ``O(N^2 C)``):

* ``d_ij = ||x_i - x_j|| / sqrt(C)`` for ``j`` in ``i``'s window;
* density ``rho_i = exp(-mean of d_ij^2 over the k nearest window tokens)``, the token itself
  (distance 0) counted among them;
* ``delta_i`` = distance to the nearest *denser* token of the window (denser: higher ``rho``, ties
  to the lower grid index); a token with no denser window token (a local density peak) gets the
  largest window distance of its image, as the densest token does in the unwindowed algorithm;
* ``score = rho * delta``; the top-scoring tokens (stable sort: equal scores go to the lower grid
  index) are the anchors: a fraction ``anchor_fraction`` of the tokens (``ceil(f N)``), or, as the
  alternative, every token whose score is at least ``density_threshold`` times the image's best.

Merge ("spatial-aware"): a non-anchor token with at least one anchor within ``merge_radius``
(Chebyshev distance; default 1, the published variant: only adjacent tokens merge) joins the one
of those anchors nearest in feature space (ties: lower index); a cluster's feature is the mean of
its members. Tokens with no anchor that near stay on their own, so the token count varies per
image. ``merge_radius=None`` merges over the whole window (this project's first default, kept by
name): with adjacency only the count is not monotone in the anchor fraction (every added anchor
also absorbs its single neighbours, so 50 % anchors left *fewer* tokens than 25 % on ViT-B/16:
564 vs 642 of 1024 on a synthetic image); with the window (5x5) nearly every token has an anchor
within reach, the count is about the anchor count, and GFLOPs fall with the fraction. The tiny
CPU configs keep the window for that reason.

Later blocks run on ``[CLS] + clusters`` compacted to the batch's largest count with a padding
mask, optionally with proportional attention (``log(size)`` added to the logits of every key).
Before the neck every grid position takes its cluster's feature back (a gather), at every output
block after the clustering.

Identity fast path (ToMe's ``do_nothing``): when every token of every image is an anchor, the
upstream blocks run unchanged, so ``anchor_fraction=1.0`` is exactly the plain ViT (and then
the clustering step itself is skipped, so its FLOPs are the plain ViT's too).

Shape: pure functions (:func:`window_index`, :func:`window_sq_dists`, :func:`dpc_scores`,
:func:`select_anchors`, :func:`assign_clusters`, :func:`merge_tokens`, :func:`restore_tokens`),
a parameter-free ``TokenClusterer`` module (so its cost is its own row of the FLOPs counter:
``backbone.clusterer``) and one registered class, :class:`ClusterViT` (a ``VisionTransformer``
subclass; configs say ``type='ClusterViT'``).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmseg.models.backbones import VisionTransformer
from mmseg.registry import MODELS
from torch import Tensor

from pipelines.axes import Axis
from pipelines.models.vit_tokens import embed_tokens, grid_output, layer_forward, padding_bias

AXES = {
    "anchors": Axis("model.backbone.anchor_fraction", type="float", exclusive_minimum=0,
                    maximum=1, id="a{}",
                    help="AiluRus: fraction of patch tokens that become cluster anchors "
                         "(1 = no clustering)"),
    "density_threshold": Axis("model.backbone.density_threshold", type="float",
                              exclusive_minimum=0, maximum=1, id="dt{}",
                              help="AiluRus: anchors are the tokens whose DPC score is at least "
                                   "this fraction of the image's best (instead of a fraction)"),
    "cluster_layer": Axis("model.backbone.cluster_layer", type="int", minimum=0, id="cl{}",
                          maximum_key="model.backbone.num_layers", maximum_offset=-2,
                          help="AiluRus: 0-based ViT block after which tokens are clustered"),
    "cluster_k": Axis("model.backbone.k", type="int", minimum=1, id="k{}",
                      help="AiluRus: nearest neighbours of the DPC-KNN density"),
    "cluster_window": Axis("model.backbone.window", type="int", minimum=1, id="w{}",
                           help="AiluRus: radius of the spatial window of the neighbour search"),
    "merge_radius": Axis("model.backbone.merge_radius", type="int", minimum=1, id="mr{}",
                         help="AiluRus: tokens within this radius of an anchor merge into it "
                              "(1 = adjacent only, the published variant; at most the window)"),
    "prop_attn": Axis("model.backbone.proportional_attn", type="bool", id="flag",
                      help="AiluRus: add log(cluster size) to the attention logits"),
}


# ----------------------------------------------------------------------------- pure functions
def check_knobs(anchor_fraction: Optional[float], density_threshold: Optional[float], k: int,
                window: int, merge_radius: Optional[int] = None) -> None:
    """Raise ``ValueError`` (one line) for knobs outside their ranges."""
    if anchor_fraction is None and density_threshold is None:
        raise ValueError("token clustering needs anchor_fraction or density_threshold")
    for name, val in (("anchor_fraction", anchor_fraction),
                      ("density_threshold", density_threshold)):
        if val is not None and (isinstance(val, bool) or not 0 < float(val) <= 1):
            raise ValueError(f"{name} must be in (0, 1], got {val!r}")
    for name, val in (("k", k), ("window", window)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"token clustering {name} must be an int >= 1, got {val!r}")
    if merge_radius is not None and (isinstance(merge_radius, bool)
                                     or not isinstance(merge_radius, int)
                                     or not 1 <= merge_radius <= window):
        raise ValueError(f"token clustering merge_radius must be an int in [1, window={window}], "
                         f"got {merge_radius!r}")


def window_index(hw: Tuple[int, int], radius: int, device=None) -> Tuple[Tensor, Tensor]:
    """Grid indices of each token's ``(2 radius + 1)^2`` spatial window.

    Returns:
        ``(index [N, K], valid [N, K])``: window positions in row-major window order (so in
        increasing grid index), -1 and False outside the grid.
    """
    h, w = hw
    size = 2 * radius + 1
    grid = torch.arange(1, h * w + 1, dtype=torch.float64, device=device).view(1, 1, h, w)
    index = F.unfold(grid, size, padding=radius)[0].t().round().long() - 1
    return index, index >= 0


def window_sq_dists(x: Tensor, hw: Tuple[int, int], radius: int, valid: Tensor,
                    tile: int = 8) -> Tensor:
    """``d_ij^2 = ||x_i - x_j||^2 / C`` for every window token, ``[B, N, K]`` (``inf`` outside
    the grid).

    The dot products are computed per tile of ``tile x tile`` tokens against that tile grown by
    ``radius`` on every side: one batched ``matmul`` of ``[tiles, tile^2, C] x [tiles, C,
    (tile + 2 radius)^2]`` (BLAS-sized, unlike one tiny product per token), then the ``K`` window
    entries are picked out. Cost ``N (tile + 2 radius)^2 C``: linear in the tokens.
    """
    b, n, c = x.shape
    h, w = hw
    size, big = 2 * radius + 1, tile + 2 * radius
    th, tw = -(-h // tile), -(-w // tile)
    fmap = x.transpose(1, 2).reshape(b, c, h, w)
    fmap = F.pad(fmap, (0, tw * tile - w, 0, th * tile - h))
    queries = F.unfold(fmap, tile, stride=tile).view(b, c, tile * tile, th * tw)
    keys = F.unfold(F.pad(fmap, (radius,) * 4), big, stride=tile).view(b, c, big * big, th * tw)
    gram = torch.matmul(queries.permute(0, 3, 2, 1), keys.permute(0, 3, 1, 2))  # [B,T,t2,big2]
    # window offset (dy, dx) of query (qy, qx) is key (qy + dy, qx + dx) of the grown tile
    qy, qx = torch.meshgrid(torch.arange(tile), torch.arange(tile), indexing="ij")
    dy, dx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    pick = ((qy.reshape(-1, 1) + dy.reshape(1, -1)) * big
            + qx.reshape(-1, 1) + dx.reshape(1, -1)).to(x.device)  # [t2, K]
    dots = torch.gather(gram, 3, pick.expand(b, th * tw, -1, -1))  # [B, T, t2, K]
    dots = dots.view(b, th, tw, tile, tile, size * size).permute(0, 1, 3, 2, 4, 5)
    dots = dots.reshape(b, th * tile, tw * tile, size * size)[:, :h, :w].reshape(b, n, -1)
    norms = (x * x).sum(-1)  # [B, N]
    index, _ = window_index(hw, radius, x.device)
    sq = (norms[:, :, None] + norms[:, index.clamp_min(0)] - 2 * dots).clamp_min(0) / c
    sq[:, :, size * size // 2] = 0  # exactly zero for the token itself
    return sq.masked_fill(~valid, float("inf"))


def dpc_scores(sq: Tensor, index: Tensor, valid: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Windowed DPC-KNN: ``(score = rho * delta, rho)``, each ``[B, N]``.

    Args:
        sq: ``[B, N, K]`` squared window distances (:func:`window_sq_dists`).
        index: ``[N, K]`` grid index of each window position; valid: ``[N, K]``.
        k: neighbours of the density (the token itself included; at most the window's size).
    """
    b, n, kk = sq.shape
    near = sq.topk(min(k, kk), dim=-1, largest=False).values
    finite = torch.isfinite(near)
    rho = torch.exp(-near.masked_fill(~finite, 0).sum(-1) / finite.sum(-1))
    rho_nb = rho[:, index.clamp_min(0)]  # [B, N, K]
    me = torch.arange(n, device=sq.device)[:, None]
    denser = valid & ((rho_nb > rho[:, :, None])
                      | ((rho_nb == rho[:, :, None]) & (index < me)))
    dist = sq.sqrt()
    far = dist.masked_fill(~valid, 0).flatten(1).max(dim=1).values  # per image
    delta = dist.masked_fill(~denser, float("inf")).min(dim=-1).values
    delta = torch.where(torch.isinf(delta), far[:, None].expand_as(delta), delta)
    return rho * delta, rho


def select_anchors(score: Tensor, anchor_fraction: Optional[float] = None,
                   density_threshold: Optional[float] = None) -> Tensor:
    """Anchor mask ``[B, N]``: the ``ceil(f N)`` best scores (stable: ties to the lower index),
    or, when ``density_threshold`` is given (it takes precedence), every score >=
    ``density_threshold`` x the image's best."""
    b, n = score.shape
    if density_threshold is None:
        count = min(n, max(1, math.ceil(anchor_fraction * n - 1e-9)))
        order = torch.sort(-score, dim=1, stable=True).indices[:, :count]
        return torch.zeros_like(score, dtype=torch.bool).scatter(
            1, order, torch.ones_like(order, dtype=torch.bool))
    best = score.max(dim=1, keepdim=True).values
    return score >= density_threshold * best


def assign_clusters(anchors: Tensor, sq: Tensor, index: Tensor, radius: int,
                    merge_radius: int = 1) -> Tensor:
    """Representative grid index ``[B, N]`` of every token: itself for an anchor or a token with
    no anchor within ``merge_radius`` (Chebyshev; 1 = adjacent), else the anchor within it
    nearest in feature space (ties: the lower index, the first in row-major window order).
    ``sq`` and ``index`` cover the window of radius ``radius >= merge_radius``."""
    size = 2 * radius + 1
    dy, dx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    adjacent = (((dy - radius).abs() <= merge_radius)
                & ((dx - radius).abs() <= merge_radius)).flatten()
    adjacent[size * size // 2] = False  # not the token itself
    adjacent = adjacent.to(sq.device)
    is_anchor_nb = anchors[:, index.clamp_min(0)] & (index >= 0) & adjacent  # [B, N, K]
    cand = sq.masked_fill(~is_anchor_nb, float("inf"))
    best = cand.argmin(dim=-1)  # first minimum = lowest grid index
    has = torch.isfinite(cand.min(dim=-1).values) & ~anchors
    own = torch.arange(anchors.shape[1], device=sq.device).expand_as(anchors)
    return torch.where(has, index[own, best], own)


def merge_tokens(x: Tensor, rep: Tensor, m: Optional[int] = None):
    """Compact ``[B, N, C]`` tokens into their clusters (mean of members).

    Args:
        x: patch tokens ``[B, N, C]``; rep: ``[B, N]`` representative grid index of each token.
        m: the batch's largest cluster count when the caller has it on the host already (else
            read here: one host sync).

    Returns:
        ``(merged [B, M, C], size [B, M], valid [B, M], slot [B, N])``: clusters in increasing
        grid order of their representative, padded to the batch's largest count ``M`` (zeros,
        size 0, ``valid`` False), and the cluster slot of every grid token (for the restore).
    """
    b, n, c = x.shape
    keep = rep == torch.arange(n, device=x.device)
    rank = keep.long().cumsum(1) - 1  # slot of each representative
    slot = torch.gather(rank, 1, rep)
    counts = keep.sum(1)
    if m is None:
        m = int(counts.max())  # python int: the traced graph records this image's size
    size = torch.zeros(b, m, dtype=x.dtype, device=x.device).scatter_add_(
        1, slot, torch.ones_like(rep, dtype=x.dtype))
    summed = torch.zeros(b, m, c, dtype=x.dtype, device=x.device).scatter_add(
        1, slot[:, :, None].expand(b, n, c), x)
    valid = torch.arange(m, device=x.device)[None] < counts[:, None]
    merged = summed / size.clamp_min(1)[:, :, None]
    return merged, size, valid, slot


def restore_tokens(merged: Tensor, slot: Tensor) -> Tensor:
    """Every grid position takes its cluster's feature: ``[B, M, C] -> [B, N, C]``."""
    b, n = slot.shape
    return torch.gather(merged, 1, slot[:, :, None].expand(b, n, merged.shape[-1]))


class TokenClusterer(nn.Module):
    """Parameter-free module around the pure functions (its own row in the FLOPs counter).

    Args:
        anchor_fraction: fraction of anchors in (0, 1] (or None with ``density_threshold``).
        density_threshold: when set (it takes precedence), anchors score at least this
            fraction of the image's best, in (0, 1].
        k: density neighbours; window: neighbour-search radius.
        merge_radius: tokens within this radius of an anchor merge into it (default 1: only
            adjacent tokens, the published variant; None: the window radius).
        tile: tile side of the blocked distance computation (speed only, same result).
    """

    def __init__(self, *, anchor_fraction: Optional[float] = 0.25,
                 density_threshold: Optional[float] = None, k: int = 5, window: int = 2,
                 merge_radius: Optional[int] = 1, tile: int = 8):
        super().__init__()
        check_knobs(anchor_fraction, density_threshold, k, window, merge_radius)
        self.merge_radius = window if merge_radius is None else merge_radius
        self.tile = tile
        self.anchor_fraction = anchor_fraction
        self.density_threshold = density_threshold
        self.k = k
        self.window = window

    def forward(self, x: Tensor, hw: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """Patch tokens ``[B, N, C]`` -> ``(anchor mask [B, N], representative index [B, N])``;
        decisions only (no gradient)."""
        with torch.no_grad():
            index, valid = window_index(hw, self.window, x.device)
            sq = window_sq_dists(x, hw, self.window, valid, self.tile)
            score, _ = dpc_scores(sq, index, valid, self.k)
            anchors = select_anchors(score, self.anchor_fraction, self.density_threshold)
            rep = assign_clusters(anchors, sq, index, self.window, self.merge_radius)
        return anchors, rep


# ----------------------------------------------------------------------------- the backbone
@MODELS.register_module()
class ClusterViT(VisionTransformer):
    """MMSeg's ``VisionTransformer`` with AiluRus token clustering after one block.

    Args:
        cluster_layer: 0-based block after which tokens are clustered (later blocks run on the
            clusters); must leave at least one block after it.
        anchor_fraction: fraction of the patch tokens that become anchors, in (0, 1].
        density_threshold: when set, replaces ``anchor_fraction``: anchors are the tokens whose
            DPC score is at least this fraction of the image's best, in (0, 1].
        k: neighbours of the density (the token itself counted).
        window: radius of the spatial window of the neighbour search (>= 1).
        merge_radius: tokens within this radius of an anchor merge into it, in [1, window]
            (default 1: only adjacent tokens, the published variant; None: the window).
        proportional_attn: add ``log(cluster size)`` to the attention logits of every key.
        **kwargs: ``VisionTransformer`` arguments.
    """

    def __init__(self, *, cluster_layer: int = 1, anchor_fraction: Optional[float] = 0.25,
                 density_threshold: Optional[float] = None, k: int = 5, window: int = 2,
                 merge_radius: Optional[int] = 1, proportional_attn: bool = True, **kwargs):
        super().__init__(**kwargs)
        depth = len(self.layers)
        if isinstance(cluster_layer, bool) or not isinstance(cluster_layer, int) \
                or not 0 <= cluster_layer < depth - 1:
            raise ValueError(f"cluster_layer must be an int in [0, {depth - 2}] (a block of this "
                             f"{depth}-block ViT with at least one block after it), "
                             f"got {cluster_layer!r}")
        self.cluster_layer = cluster_layer
        self.proportional_attn = bool(proportional_attn)
        self.clusterer = TokenClusterer(anchor_fraction=anchor_fraction,
                                        density_threshold=density_threshold, k=k, window=window,
                                        merge_radius=merge_radius)
        self.last_token_counts: List[int] = []  # clusters per image in the last forward

    def forward(self, inputs: Tensor):
        x, hw = embed_tokens(self, inputs)
        prefix = 1 if self.with_cls_token else 0
        outs = []
        if self.out_origin:
            outs.append(grid_output(self, x[:, prefix:], hw, x[:, 0] if prefix else None))
        slot = None  # None: the full token set (before clustering, or every token an anchor)
        bias = None
        for i, layer in enumerate(self.layers):
            x = layer(x) if slot is None else layer_forward(layer, x, bias)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.norm1(x)
            if i == self.cluster_layer:
                x, slot, bias = self._cluster(x, hw, prefix)
            if i in self.out_indices:
                patches = x[:, prefix:] if slot is None else restore_tokens(x[:, prefix:], slot)
                outs.append(grid_output(self, patches, hw, x[:, 0] if prefix else None))
        return tuple(outs)

    def _cluster(self, x: Tensor, hw: Tuple[int, int], prefix: int):
        """Cluster the patch tokens of ``x``; ``(tokens, slot, key bias)``, or ``(x, None, None)``
        when every token of every image is an anchor (identity)."""
        patches = x[:, prefix:]
        c = self.clusterer
        if c.density_threshold is None and c.anchor_fraction >= 1:  # nothing to cluster
            self.last_token_counts = [patches.shape[1]] * patches.shape[0]
            return x, None, None
        anchors, rep = c(patches, hw)
        n = patches.shape[1]
        # the one host sync of the clustering: clusters per image and "all anchors", read together
        counts = (rep == torch.arange(n, device=rep.device)).sum(1)
        host = torch.cat((counts, anchors.all().long()[None])).tolist()
        if host[-1]:
            self.last_token_counts = [n] * patches.shape[0]
            return x, None, None
        merged, size, valid, slot = merge_tokens(patches, rep, max(host[:-1]))
        self.last_token_counts = host[:-1]
        bias = padding_bias(valid, x.dtype)
        if self.proportional_attn:
            bias = bias + size.clamp_min(1).log()
        if prefix:
            merged = torch.cat([x[:, :prefix], merged], dim=1)
            bias = torch.cat([bias.new_zeros(x.shape[0], prefix), bias], dim=1)
        return merged, slot, bias
