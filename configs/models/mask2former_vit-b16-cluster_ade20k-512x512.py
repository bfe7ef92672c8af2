# ViT-B/16 Mask2Former at 512x512 with AiluRus token clustering after block index 1 (the paper
# clusters "the output of the second layer"), 25 % anchors, k=5, window radius 2, merge radius 1
# (only tokens adjacent to an anchor merge, the published variant), proportional attention.
_base_ = ['./mask2former_vit-b16_ade20k-512x512.py']

model = dict(
    backbone=dict(  # pipelines.models.token_cluster.ClusterViT
        type='ClusterViT',
        cluster_layer=1,
        anchor_fraction=0.25,
        density_threshold=None,
        k=5,
        window=2,
        merge_radius=1,  # None: the whole window (the project's first default; an axis)
        proportional_attn=True))
