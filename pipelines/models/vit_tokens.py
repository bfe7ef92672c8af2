"""Shared helpers of the token-reduction ViT backbones (``token_cluster.py``, ``token_sample.py``).

Pure functions over MMSeg's ``VisionTransformer`` pieces, no registered class:

* :func:`embed_tokens`: the upstream forward up to the first block (patch embedding, CLS token,
  positional embedding, optional pre-norm), returned with the token grid size.
* :func:`layer_forward` (= :func:`attend` then :func:`finish_layer`): one upstream
  ``TransformerEncoderLayer`` run on a *padded, reduced* token set ``[B, M, C]``: the same weights
  and the same operations as the upstream block, plus an additive per-key bias (``-inf`` masks
  padding keys out of attention; ``log(size)`` gives a merged token the weight of its members);
  ATS reads the attention between the two halves and keeps only some query rows. Attention
  is written as two ``matmul`` s and a softmax, the same math path that
  ``nn.MultiheadAttention`` takes inside the upstream block, so the FLOPs counter sees both
  attention products.
* :func:`grid_output`: patch tokens ``[B, N, C]`` to the ``(B, C, h, w)`` map the neck takes.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def embed_tokens(vit, inputs: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
    """``VisionTransformer.forward`` up to the first block: ``(tokens [B, 1 + N, C], (h, w))``
    (the CLS token first when ``vit.with_cls_token``)."""
    x, hw_shape = vit.patch_embed(inputs)
    cls_tokens = vit.cls_token.expand(inputs.shape[0], -1, -1)
    x = torch.cat((cls_tokens, x), dim=1)
    x = vit._pos_embeding(x, hw_shape, vit.pos_embed)
    if not vit.with_cls_token:
        x = x[:, 1:]
    if vit.pre_norm:
        x = vit.pre_ln(x)
    return x, tuple(hw_shape)


def grid_output(vit, patch_tokens: Tensor, hw: Tuple[int, int], cls_token: Optional[Tensor]):
    """Patch tokens ``[B, N, C]`` in grid order -> ``(B, C, h, w)`` (with the CLS token as a second
    element when ``vit.output_cls_token``), as the upstream forward returns them."""
    b, _, c = patch_tokens.shape
    out = patch_tokens.reshape(b, hw[0], hw[1], c).permute(0, 3, 1, 2).contiguous()
    if vit.output_cls_token:
        out = [out, cls_token]
    return out


def layer_forward(layer, x: Tensor, key_bias: Optional[Tensor] = None) -> Tensor:
    """Run an upstream ``TransformerEncoderLayer`` on a padded token set ``x [B, M, C]``, with
    ``key_bias [B, M]`` added to every attention logit of that key (``-inf``: padding)."""
    return finish_layer(layer, x, *attend(layer, x, key_bias))


def attend(layer, x: Tensor, key_bias: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """The attention half of an upstream block: ``(probabilities [B, heads, M, M], values
    [B, heads, M, C / heads])``, with ``key_bias [B, M]`` added to the logits of each key."""
    mha = layer.attn.attn  # torch.nn.MultiheadAttention inside mmcv's MultiheadAttention
    b, m, c = x.shape
    heads = mha.num_heads
    qkv = F.linear(layer.norm1(x), mha.in_proj_weight, mha.in_proj_bias)
    q, k, v = qkv.reshape(b, m, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    logits = torch.matmul(q * float(c // heads) ** -0.5, k.transpose(-2, -1))
    if key_bias is not None:
        logits = logits + key_bias[:, None, None, :]
    return logits.softmax(dim=-1), v


def finish_layer(layer, x: Tensor, attn: Tensor, v: Tensor,
                 rows: Optional[Tensor] = None) -> Tensor:
    """The rest of the block after :func:`attend`: attention x values, output projection,
    residual, MLP. ``rows [B, R]`` (ATS) keeps only those query rows from here on, so the
    projection and the MLP run on ``R`` tokens; returns ``[B, M or R, C]``."""
    mha = layer.attn.attn
    b, m, c = x.shape
    attn = F.dropout(attn, p=mha.dropout, training=layer.training)
    identity = x
    if rows is not None:
        attn = torch.gather(attn, 2, rows[:, None, :, None].expand(b, attn.shape[1],
                                                                   rows.shape[1], m))
        identity = torch.gather(x, 1, rows[:, :, None].expand(b, rows.shape[1], c))
    out = mha.out_proj(torch.matmul(attn, v).transpose(1, 2).reshape(b, -1, c))
    y = identity + layer.attn.dropout_layer(layer.attn.proj_drop(out))
    return layer.ffn(layer.norm2(y), identity=y)


def padding_bias(valid: Tensor, dtype=torch.float32) -> Tensor:
    """``[B, M]`` bool (True = a real token) -> additive key bias (0 or ``-inf``)."""
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill(
        ~valid, float("-inf"))
