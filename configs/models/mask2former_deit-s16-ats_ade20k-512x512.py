# DeiT-S/16 Mask2Former at 512x512 with ATS in blocks 4..12 (0-based 3..11, as released), at most
# K=512 of the 1024 patch tokens kept per ATS block.
_base_ = ['./mask2former_deit-s16_ade20k-512x512.py']

model = dict(
    backbone=dict(  # pipelines.models.token_sample.SampleViT
        type='SampleViT',
        ats_layers=[3, 4, 5, 6, 7, 8, 9, 10, 11],
        budget=512,
        levels=None))
