# A tiny plain-ViT Mask2Former that trains on a 2-core CPU from random weights: the difference
# from the ResNet-18 tiny model is the backbone (MMSeg's VisionTransformer, patch 8 -> a 1/8 token
# grid of 16x16 at 128x128, 6 blocks of width 96, with its CLS token, which ATS needs) and a neck.
# Neck: MMSeg's Feature2Pyramid (BEiT / ViTDet style), not MultiLevelNeck: it keeps the ViT width,
# builds the finer maps with learned stride-2 deconvolutions and the coarser ones with max-pool, so
# the 1/4 map costs two small deconvs instead of a bilinear resize plus a 3x3 conv per level
# (MultiLevelNeck, SETR style), and it takes one ViT block output per level, so the levels see
# different depths. With patch 8 the rescales (2, 1, 0.5, 0.25) give strides 4/8/16/32.
_base_ = ['./mask2former_r18_synthetic-128x128.py']

embed_dims = 96
model = dict(
    backbone=dict(  # mmseg.VisionTransformer (random init, no download)
        _delete_=True,
        type='VisionTransformer',
        img_size=(128, 128),
        patch_size=8,
        embed_dims=embed_dims,
        num_layers=6,
        num_heads=3,
        mlp_ratio=4,
        out_indices=(2, 3, 4, 5),
        with_cls_token=True,
        output_cls_token=False,
        final_norm=False,
        drop_path_rate=0.0,
        interpolate_mode='bicubic',
        init_cfg=None),
    neck=dict(  # mmseg.Feature2Pyramid: 1/8 -> strides 4, 8, 16, 32
        type='Feature2Pyramid',
        embed_dim=embed_dims,
        rescales=[2, 1, 0.5, 0.25],
        norm_cfg=dict(type='BN', requires_grad=True)),
    decode_head=dict(in_channels=[embed_dims] * 4))  # mmseg.Mask2FormerHead
