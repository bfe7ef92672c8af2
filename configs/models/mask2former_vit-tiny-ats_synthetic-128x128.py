# The tiny plain-ViT Mask2Former with ATS adaptive token sampling in blocks 2..5 (of 6), at most
# K=128 of the 256 patch tokens kept per ATS block; dropped tokens keep their last feature and are
# scattered back to the grid before the neck (pipelines/models/token_sample.py).
_base_ = ['./mask2former_vit-tiny_synthetic-128x128.py']

model = dict(
    backbone=dict(  # pipelines.models.token_sample.SampleViT (a VisionTransformer subclass)
        type='SampleViT',
        ats_layers=[2, 3, 4, 5],
        budget=128,
        levels=None))
