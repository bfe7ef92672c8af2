# The tiny plain-ViT Mask2Former with AiluRus token clustering after block 1 (of 6): 25 % of the
# 16x16 patch tokens become anchors, windowed DPC-KNN (k=5, window radius 2, also the merge
# radius), proportional attention in the later blocks; restored to the grid before the neck
# (pipelines/models/token_cluster.py).
_base_ = ['./mask2former_vit-tiny_synthetic-128x128.py']

model = dict(
    backbone=dict(  # pipelines.models.token_cluster.ClusterViT (a VisionTransformer subclass)
        type='ClusterViT',
        cluster_layer=1,
        anchor_fraction=0.25,
        density_threshold=None,
        k=5,
        window=2,
        merge_radius=None,  # = window (monotone token count in the anchor fraction on this tiny
        # grid); the class default and the ViT-B config use 1, the published variant
        proportional_attn=True))
