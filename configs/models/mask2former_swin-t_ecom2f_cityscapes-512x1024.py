# ECO-M2F (arXiv 2404.15244) on MMSeg's Mask2Former Swin-T Cityscapes 512x1024 (inherited from
# the copy inside the installed mmsegmentation package): exits after encoder layers 2..6, drawn
# uniformly per training iteration, losses weighted w_k = k / E[k]. The papers count FLOPs at
# 1024x2048 (`python -m pipelines flops CONFIG --shape 1024 2048`).
_base_ = ['mmseg::mask2former/mask2former_swin-t_8xb2-90k_cityscapes-512x1024.py']

custom_imports = dict(imports=['mmdet.models', 'pipelines.registry'], allow_failed_imports=False)

model = dict(
    decode_head=dict(  # pipelines.models.early_exit.EarlyExitMask2FormerHead
        type='EarlyExitMask2FormerHead',
        pixel_decoder=dict(  # pipelines.models.early_exit.EarlyExitPixelDecoder
            type='mmdet.EarlyExitPixelDecoder',
            min_layers=2,
            exit_distribution='uniform',
            test_exit=None)))
exit_gate = dict(beta=0.003, lr=0.01, weight_decay=1e-4, epochs=300, seed=0)
