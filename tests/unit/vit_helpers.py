"""A tiny random plain ViT and its token-reduced twins with the same weights (ViT tests)."""
from __future__ import annotations

import torch

VIT = dict(img_size=(64, 64), patch_size=8, embed_dims=32, num_layers=4, num_heads=2,
           out_indices=(0, 1, 2, 3))


def plain_vit():
    """MMSeg's ``VisionTransformer`` (``VIT`` sizes), seeded random init, eval mode."""
    from mmseg.models.backbones import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(**VIT)
    vit.init_weights()
    vit.eval()
    return vit


def same_weights(cls, ref, **kw):
    """``cls(**VIT, **kw)`` holding ``ref``'s weights, eval mode."""
    model = cls(**VIT, **kw)
    model.load_state_dict(ref.state_dict())
    model.eval()
    return model
