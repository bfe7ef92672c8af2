"""AiluRus-style token clustering of the *queries* of Mask2Former's deformable encoder.

Beyond the papers (a row none has): the windowed DPC-KNN clustering of
:mod:`pipelines.models.token_cluster`, applied in the pixel decoder instead of the backbone. From
encoder layer ``cluster_layer`` on, each level's tokens (res5, res4, res3 maps, separately: a
neighbourhood never crosses levels) are clustered; a cluster's query, positional + level encoding
and reference point are the means of its members'. The later layers run their queries on the
clusters only, while the **values stay dense**: every layer's value map is the whole grid, each
position taking its cluster's current feature (deformable attention grid-samples the value map, so
it cannot be sparse; PRO-SCALE keeps it dense for the same reason). After the encoder every position
takes its cluster's feature back, and the FPN part is the upstream one.

Deformable attention has no query-query interaction (each query samples values around its own
reference point), so images of one batch with different cluster counts need no attention mask:
padding queries are computed and never read. ``anchor_fraction=1.0`` (every token an anchor) runs
the upstream layers unchanged: exactly ``MSDeformAttnPixelDecoder``.

One registered class, :class:`ClusterPixelDecoder` (mmdet's ``MODELS``; configs say
``type='mmdet.ClusterPixelDecoder'``), a subclass of ``MSDeformAttnPixelDecoder`` whose
``encoder`` is a :class:`QueryClusterEncoder`, a subclass of the upstream encoder built from the
same config (same parameter names: a baseline ``state_dict`` loads unchanged).
"""
from __future__ import annotations

import copy
from typing import List

import torch
from mmdet.models.layers import MSDeformAttnPixelDecoder
from mmdet.models.layers.transformer import Mask2FormerTransformerEncoder
from mmdet.registry import MODELS
from torch import Tensor

from pipelines.axes import Axis
from pipelines.models.token_cluster import TokenClusterer, merge_tokens, restore_tokens

AXES = {
    "pd_anchors": Axis("model.decode_head.pixel_decoder.anchor_fraction", type="float",
                       exclusive_minimum=0, maximum=1, id="pda{}",
                       help="pixel-decoder query clustering: fraction of anchors per level "
                            "(1 = no clustering)"),
    "pd_cluster_layer": Axis("model.decode_head.pixel_decoder.cluster_layer", type="int",
                             minimum=0, id="pdcl{}",
                             maximum_key="model.decode_head.pixel_decoder.encoder.num_layers",
                             maximum_offset=-1,
                             help="pixel-decoder query clustering: first encoder layer that "
                                  "runs on clustered queries"),
}


class QueryClusterEncoder(Mask2FormerTransformerEncoder):
    """``Mask2FormerTransformerEncoder`` that clusters its queries before layer ``cluster_layer``
    (values stay dense).

    Args:
        cluster_layer: first layer (0-based) that runs on clustered queries.
        anchor_fraction, k, window: the :class:`TokenClusterer` knobs.
        **kwargs: ``Mask2FormerTransformerEncoder`` arguments (``num_layers``, ``layer_cfg``).
    """

    def __init__(self, *, cluster_layer: int = 0, anchor_fraction: float = 0.25, k: int = 5,
                 window: int = 2, **kwargs):
        super().__init__(**kwargs)
        depth = len(self.layers)
        if isinstance(cluster_layer, bool) or not isinstance(cluster_layer, int) \
                or not 0 <= cluster_layer < depth:
            raise ValueError(f"pixel decoder cluster_layer must be an int in [0, {depth - 1}] "
                             f"(an encoder layer), got {cluster_layer!r}")
        self.cluster_layer = cluster_layer
        # merge over the whole window (beyond the papers; unchanged when the ViT default
        # became the published radius 1)
        self.clusterer = TokenClusterer(anchor_fraction=anchor_fraction, k=k, window=window,
                                        merge_radius=None)
        self.last_token_counts: List[int] = []  # queries per image after clustering

    def forward(self, query: Tensor, query_pos: Tensor, key_padding_mask: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor, valid_ratios: Tensor,
                reference_points: Tensor, **kwargs) -> Tensor:
        slot = None
        for i, layer in enumerate(self.layers):
            if i == self.cluster_layer:
                query, query_pos, reference_points, slot = self._cluster(
                    query, query_pos, reference_points, spatial_shapes)
            common = dict(key_padding_mask=key_padding_mask, spatial_shapes=spatial_shapes,
                          level_start_index=level_start_index, reference_points=reference_points,
                          **kwargs)
            if slot is None:
                query = layer(query=query, query_pos=query_pos, valid_ratios=valid_ratios,
                              **common)
                continue
            dense = restore_tokens(query, slot)  # the whole value map
            query = layer.self_attn(query=query, key=None, value=dense, query_pos=query_pos,
                                    **common)
            query = layer.norms[1](layer.ffn(layer.norms[0](query)))
        return query if slot is None else restore_tokens(query, slot)

    def _cluster(self, query: Tensor, query_pos: Tensor, reference_points: Tensor,
                 spatial_shapes: Tensor):
        """Cluster each level's queries; ``(query, pos, reference points, slot)`` on the
        clusters, or the inputs and ``None`` when every token is an anchor."""
        reps, anchors, start = [], [], 0
        for h, w in spatial_shapes.tolist():
            a, rep = self.clusterer(query[:, start:start + h * w], (h, w))
            anchors.append(a)
            reps.append(rep + start)
            start += h * w
        if bool(torch.cat(anchors, 1).all()):
            self.last_token_counts = [query.shape[1]] * query.shape[0]
            return query, query_pos, reference_points, None
        rep = torch.cat(reps, 1)
        merged, _, valid, slot = merge_tokens(query, rep)
        self.last_token_counts = valid.sum(1).tolist()
        pos = merge_tokens(query_pos, rep)[0]
        b, n, levels, _ = reference_points.shape
        ref = merge_tokens(reference_points.reshape(b, n, levels * 2), rep)[0]
        return merged, pos, ref.reshape(b, -1, levels, 2), slot


@MODELS.register_module()
class ClusterPixelDecoder(MSDeformAttnPixelDecoder):
    """``MSDeformAttnPixelDecoder`` whose deformable encoder clusters its queries.

    Args:
        cluster_layer: first encoder layer (0-based) that runs on clustered queries.
        anchor_fraction: fraction of each level's tokens that become anchors, in (0, 1].
        k: neighbours of the DPC-KNN density (the token itself counted).
        window: radius of the spatial window of the neighbour search (>= 1).
        **kwargs: everything ``mmdet.MSDeformAttnPixelDecoder`` takes.
    """

    def __init__(self, *, cluster_layer: int = 0, anchor_fraction: float = 0.25, k: int = 5,
                 window: int = 2, **kwargs):
        encoder = copy.deepcopy(kwargs["encoder"])
        super().__init__(**kwargs)
        self.encoder = QueryClusterEncoder(cluster_layer=cluster_layer,
                                           anchor_fraction=anchor_fraction, k=k, window=window,
                                           **encoder)
