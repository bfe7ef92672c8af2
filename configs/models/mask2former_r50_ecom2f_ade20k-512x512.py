# ECO-M2F (arXiv 2404.15244) on MMSeg's Mask2Former R50 ADE20K 512x512: the 6-layer encoder
# may exit after layers 2..6, drawn uniformly per training iteration, losses weighted
# w_k = k / E[k]. Everything else is the base config.
_base_ = ['./mask2former_r50_ade20k-512x512.py']

custom_imports = dict(imports=['mmdet.models', 'pipelines.registry'], allow_failed_imports=False)

model = dict(
    decode_head=dict(  # pipelines.models.early_exit.EarlyExitMask2FormerHead
        type='EarlyExitMask2FormerHead',
        pixel_decoder=dict(  # pipelines.models.early_exit.EarlyExitPixelDecoder
            type='mmdet.EarlyExitPixelDecoder',
            min_layers=2,
            exit_distribution='uniform',
            test_exit=None)))
exit_gate = dict(beta=0.005, lr=0.01, weight_decay=1e-4, epochs=300, seed=0)
