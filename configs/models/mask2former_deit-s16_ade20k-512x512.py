# Mask2Former with a DeiT-S/16 backbone (12 blocks, width 384, 6 heads: ATS's released backbone)
# at 512x512 on ADE20K; only the width and heads differ from the ViT-B/16 config (same neck).
_base_ = ['./mask2former_vit-b16_ade20k-512x512.py']

embed_dims = 384
model = dict(
    backbone=dict(  # mmseg.VisionTransformer; ImageNet weights as MMSeg's DeiT configs: DeiT's
        # deit_small_patch16_224-cd65a155.pth converted by MMSeg's vit2mmseg.py to this path
        embed_dims=embed_dims, num_heads=6,
        init_cfg=dict(type='Pretrained',
                      checkpoint='pretrain/deit_small_patch16_224-cd65a155.pth')),
    neck=dict(embed_dim=embed_dims),  # mmseg.Feature2Pyramid
    decode_head=dict(in_channels=[embed_dims] * 4))  # mmseg.Mask2FormerHead
