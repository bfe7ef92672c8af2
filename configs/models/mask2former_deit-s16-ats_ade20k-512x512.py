# DeiT-S/16 Mask2Former at 512x512 with ATS in blocks 4..12 (0-based 3..11, as released), K = N
# (no cap on the kept patch tokens, the paper's DeiT-S setting; a cap is the `ats_budget` axis),
# levels from the smallest non-zero CDF value to 1 (the release's grid).
_base_ = ['./mask2former_deit-s16_ade20k-512x512.py']

model = dict(
    backbone=dict(  # pipelines.models.token_sample.SampleViT
        type='SampleViT',
        ats_layers=[3, 4, 5, 6, 7, 8, 9, 10, 11],
        budget=None,
        levels=None,
        grid='nonzero'))
