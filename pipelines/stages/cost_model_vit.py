"""Analytic FLOPs of a plain-ViT backbone (MMSeg's ``VisionTransformer``) and its token-reduced
variants (AiluRus clustering: ``ClusterViT``; ATS: ``SampleViT``).

Same convention as :mod:`pipelines.stages.flops` (fvcore / ``mmengine.analysis``): one multiply-add is
one FLOP; Linear and conv without bias; LayerNorm 5 FLOPs per element (affine); element-wise
ops, softmax, GELU, gathers and sorts free. Batch 1; results in FLOPs. ``tests/unit/
test_vit_flops.py`` holds these equal to the traced counts.

One block over ``T`` tokens of width ``C`` (MLP width ``r C``), of which ``R`` query rows go on
(``R = T`` except in an ATS block, which computes the full attention but projects and runs the
MLP on its kept rows only)::

    norm1            5 T C
    qkv projection   3 T C^2
    Q K^T            T^2 C          (all heads together)
    A V              R T C
    out projection   R C^2
    norm2            5 R C
    MLP              2 r R C^2

Patch embedding: ``N C 3 p^2`` for ``N`` patches of ``p x p``; the optional final LayerNorm
``5 T C``. Clustering (AiluRus, windowed DPC-KNN): the distances of every token to its
``K = (2 window + 1)^2`` window tokens, one dot product each: ``N K C`` (the rest is element-wise,
sorting and gathering); see :func:`cluster_flops` for the blocked form actually computed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

NORM = 5  # LayerNorm with affine parameters, per element


@dataclass(frozen=True)
class ViTSpec:
    """The sizes of a ``VisionTransformer`` that its cost depends on."""
    dims: int = 768
    depth: int = 12
    mlp_ratio: int = 4
    patch_size: int = 16
    in_channels: int = 3
    cls_token: bool = True
    final_norm: bool = False


def block_flops(tokens: int, dims: int, mlp_ratio: int = 4, rows: Optional[int] = None) -> int:
    """One ViT block over ``tokens`` tokens; ``rows`` query rows go on (default: all)."""
    t, c = tokens, dims
    r = t if rows is None else rows
    return (NORM * t * c + 3 * t * c * c + t * t * c + r * t * c + r * c * c
            + NORM * r * c + 2 * mlp_ratio * r * c * c)


def patch_grid(image_hw: Tuple[int, int], patch_size: int) -> Tuple[int, int]:
    """The token grid of an image (MMSeg's ``PatchEmbed`` pads up to a multiple, 'corner')."""
    return tuple(-(-s // patch_size) for s in image_hw)


def cluster_flops(grid_hw: Tuple[int, int], dims: int, window: int, tile: int = 8) -> int:
    """The windowed DPC-KNN dot products, computed per ``tile x tile`` block of tokens against
    the block grown by ``window`` (grid padded up to whole tiles):
    ``ceil(h / t) ceil(w / t) t^2 (t + 2 window)^2 C``."""
    h, w = grid_hw
    tiles = -(-h // tile) * -(-w // tile)
    return tiles * tile * tile * (tile + 2 * window) ** 2 * dims


def backbone_flops(image_hw: Tuple[int, int], spec: ViTSpec = ViTSpec(),
                   layer_tokens: Optional[Sequence[Tuple[int, int]]] = None,
                   cluster: Optional[Tuple[int, int]] = None) -> dict:
    """FLOPs of the backbone on one image.

    Args:
        image_hw: input size.
        spec: the ViT's sizes.
        layer_tokens: per block ``(tokens in, rows out)``, CLS included; default: every block
            over all tokens (the plain ViT).
        cluster: ``(window, tile)`` when AiluRus clustering ran once on the patch grid.

    Returns:
        ``{'patch_embed', 'blocks', 'cluster', 'backbone'}``.
    """
    h, w = patch_grid(image_hw, spec.patch_size)
    n = h * w
    full = n + (1 if spec.cls_token else 0)
    if layer_tokens is None:
        layer_tokens = [(full, full)] * spec.depth
    if len(layer_tokens) != spec.depth:
        raise ValueError(f"{len(layer_tokens)} token counts for a {spec.depth}-block ViT")
    patch = n * spec.dims * spec.in_channels * spec.patch_size ** 2
    blocks = sum(block_flops(t, spec.dims, spec.mlp_ratio, r) for t, r in layer_tokens)
    if spec.final_norm:
        blocks += NORM * layer_tokens[-1][1] * spec.dims
    clus = cluster_flops((h, w), spec.dims, *cluster) if cluster else 0
    return dict(patch_embed=patch, blocks=blocks, cluster=clus,
                backbone=patch + blocks + clus)


def clustered_layer_tokens(n: int, depth: int, cluster_layer: int,
                           clusters: int) -> list:
    """``(tokens, rows)`` per block of ``ClusterViT``: ``n + 1`` up to and including
    ``cluster_layer``, ``clusters + 1`` after it."""
    return [(n + 1, n + 1) if i <= cluster_layer else (clusters + 1, clusters + 1)
            for i in range(depth)]


def sampled_layer_tokens(n: int, depth: int, ats_layers: Sequence[int],
                         kept: Sequence[int]) -> list:
    """``(tokens, rows)`` per block of ``SampleViT``: ATS block ``ats_layers[j]`` keeps
    ``kept[j]`` patch tokens (+ CLS) of those it received."""
    out, cur, j = [], n + 1, 0
    for i in range(depth):
        if i in ats_layers:
            out.append((cur, kept[j] + 1))
            cur = kept[j] + 1
            j += 1
        else:
            out.append((cur, cur))
    return out


def spec_from_cfg(backbone_cfg) -> ViTSpec:
    """:class:`ViTSpec` of a ``VisionTransformer`` / ``ClusterViT`` / ``SampleViT`` config dict."""
    cfg = backbone_cfg
    return ViTSpec(dims=cfg.get("embed_dims", 768), depth=cfg.get("num_layers", 12),
                   mlp_ratio=cfg.get("mlp_ratio", 4), patch_size=cfg.get("patch_size", 16),
                   in_channels=cfg.get("in_channels", 3),
                   cls_token=cfg.get("with_cls_token", True),
                   final_norm=cfg.get("final_norm", False))


# ----------------------------------------------------------------------------- ATS on DeiT-S
DEIT_S = ViTSpec(dims=384, depth=12, mlp_ratio=4, patch_size=16, final_norm=True)
ATS_LAYERS = tuple(range(3, 12))  # released: blocks 4..12


def ats_classifier_flops(kept, image_hw: Tuple[int, int] = (224, 224), spec: ViTSpec = DEIT_S,
                         ats_layers: Sequence[int] = ATS_LAYERS, classes: int = 1000) -> int:
    """FLOPs of the ATS classifier of the paper (DeiT-S at 224x224 by default: patch embedding,
    blocks, final norm and the ``Linear(C -> classes)`` head on the CLS token) when ATS block
    ``ats_layers[j]`` keeps ``kept[j]`` patch tokens (one int: the same count at every ATS
    block; counts above the tokens a block receives are capped, K = N)."""
    h, w = patch_grid(image_hw, spec.patch_size)
    n = h * w
    if isinstance(kept, int):
        kept = [kept] * len(ats_layers)
    if len(kept) != len(ats_layers):
        raise ValueError(f"{len(kept)} kept counts for {len(ats_layers)} ATS blocks")
    capped, cur = [], n
    for k in kept:
        cur = max(1, min(int(k), cur))
        capped.append(cur)
    tokens = sampled_layer_tokens(n, spec.depth, list(ats_layers), capped)
    return backbone_flops(image_hw, spec, tokens)["backbone"] + spec.dims * classes


def ats_kept_for_flops(target: float, image_hw: Tuple[int, int] = (224, 224),
                       spec: ViTSpec = DEIT_S, ats_layers: Sequence[int] = ATS_LAYERS) -> dict:
    """The patch-token count ``k`` every ATS block would keep (the same at each) for the
    classifier to cost ``target`` FLOPs: ``{'below', 'above'}`` (the integer counts around it,
    with their FLOPs) and ``'exact'`` (linear between them). ``ValueError`` when out of reach."""
    h, w = patch_grid(image_hw, spec.patch_size)
    n = h * w
    cost = [ats_classifier_flops(k, image_hw, spec, ats_layers) for k in range(n + 1)]
    if not cost[1] <= target <= cost[n]:
        raise ValueError(f"{target / 1e9:.3f} GFLOPs is outside {cost[1] / 1e9:.3f}.."
                         f"{cost[n] / 1e9:.3f} (1..{n} kept tokens)")
    k = max(i for i in range(1, n + 1) if cost[i] <= target)
    k_up = min(k + 1, n)
    frac = 0.0 if cost[k_up] == cost[k] else (target - cost[k]) / (cost[k_up] - cost[k])
    return dict(below=(k, cost[k]), above=(k_up, cost[k_up]), exact=k + frac)
