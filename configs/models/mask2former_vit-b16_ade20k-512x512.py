# Mask2Former with a plain ViT-B/16 backbone at 512x512 on ADE20K (no such config ships in MMSeg or
# MMDet). The difference from the R50 config: MMSeg's VisionTransformer (12 blocks, width 768, 12
# heads, with its CLS token, which ATS needs; ImageNet weights from a local file) and a neck.
# Neck: MMSeg's Feature2Pyramid (the BEiT / ViTDet simple pyramid), not MultiLevelNeck: it keeps
# the ViT width, builds 1/4 and 1/8 with learned stride-2 deconvolutions and 1/32 with a max-pool,
# and takes one block output per level (blocks 4, 6, 8, 12, as MMSeg's BEiT/MAE configs), while
# MultiLevelNeck (SETR) adds a bilinear resize and a 3x3 conv per level, far more compute at 1/4.
_base_ = ['./mask2former_r50_ade20k-512x512.py']

embed_dims = 768
model = dict(
    backbone=dict(  # mmseg.VisionTransformer
        _delete_=True,
        type='VisionTransformer',
        img_size=(512, 512),
        patch_size=16,
        patch_bias=True,  # timm's / DeiT's patch embedding has a bias (MMSeg's default drops it)
        embed_dims=embed_dims,
        num_layers=12,
        num_heads=12,
        mlp_ratio=4,
        out_indices=(3, 5, 7, 11),
        with_cls_token=True,
        output_cls_token=False,
        final_norm=False,
        drop_path_rate=0.1,
        interpolate_mode='bicubic',
        # ImageNet weights as MMSeg's ViT configs: timm's jx_vit_base_p16_224-80ecf9dd.pth converted
        # by MMSeg's tools/model_converters/vit2mmseg.py to this path (pipelines/models/README.md)
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/jx_vit_base_p16_224-80ecf9dd.pth')),
    neck=dict(  # mmseg.Feature2Pyramid: 1/16 -> strides 4, 8, 16, 32
        type='Feature2Pyramid',
        embed_dim=embed_dims,
        rescales=[4, 2, 1, 0.5],
        norm_cfg=dict(type='SyncBN', requires_grad=True)),
    decode_head=dict(in_channels=[embed_dims] * 4))  # mmseg.Mask2FormerHead
