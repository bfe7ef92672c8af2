"""FLOP handles for attention ops that mmengine 0.10.7's ``FlopAnalyzer`` does not count.

Tracing the plain-ViT Mask2Former (``configs/models/mask2former_vit-*``) and listing the ``aten::``
ops without a handle shows, among free element-wise ops, one op that does multiply-adds:

* ``aten::baddbmm``: ``nn.MultiheadAttention``'s math path computes ``Q K^T`` with it whenever an
  attention mask is given: Mask2Former's masked cross-attention in every transformer-decoder
  layer (the ViT's own blocks, mask-free, use ``aten::bmm``, which is counted).

and ``aten::scaled_dot_product_attention`` is what ``nn.MultiheadAttention``
(``need_weights=False``) and ``F.scaled_dot_product_attention`` emit; none of our models calls it
today, but a counter that silently drops it would under-count any attention written that way.

Convention (fvcore's, as the rest of the counter): one multiply-add = one FLOP; the bias add,
scaling and softmax are free. :func:`extra_flop_handles` returns ``{op_name: handle}`` for
``FlopAnalyzer.set_op_handle(**...)``.
"""
from __future__ import annotations

from math import prod
from typing import Any, Callable, Dict, List


def _shape(val: Any) -> List[int]:
    from mmengine.analysis.jit_handles import get_shape

    return list(get_shape(val))


def baddbmm_flop(inputs: List[Any], outputs: List[Any]) -> int:
    """``baddbmm(input, b1 [n, c, t], b2 [n, t, d])``: ``n c t d`` (the added input is free)."""
    n, c, t = _shape(inputs[1])
    d = _shape(inputs[2])[-1]
    return n * c * t * d


def sdpa_flop(inputs: List[Any], outputs: List[Any]) -> int:
    """``scaled_dot_product_attention(q [..., L, E], k [..., S, E], v [..., S, Ev])``:
    ``Q K^T`` (``L S E``) plus ``A V`` (``L S Ev``) per batch element."""
    q, k, v = (_shape(x) for x in inputs[:3])
    batch = prod(q[:-2])
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def extra_flop_handles() -> Dict[str, Callable]:
    """``{op_name: handle}`` of the attention ops mmengine 0.10.7 lacks."""
    return {"aten::baddbmm": baddbmm_flop, "aten::scaled_dot_product_attention": sdpa_flop}
