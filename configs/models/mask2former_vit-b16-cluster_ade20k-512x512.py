# ViT-B/16 Mask2Former at 512x512 with AiluRus token clustering after block 2 (the paper clusters
# the output of block 2), 25 % anchors, k=5, window radius 2 (also the merge radius), proportional
# attention.
_base_ = ['./mask2former_vit-b16_ade20k-512x512.py']

model = dict(
    backbone=dict(  # pipelines.models.token_cluster.ClusterViT
        type='ClusterViT',
        cluster_layer=2,
        anchor_fraction=0.25,
        density_threshold=None,
        k=5,
        window=2,
        merge_radius=None,  # = window; 1 merges only adjacent tokens (the published variant)
        proportional_attn=True))
