# PRO-SCALE (arXiv 2404.14657) on MMSeg's Mask2Former R50 ADE20K 512x512: the pixel decoder's
# encoder runs 3 layers on the 1/32 tokens, 3 on 1/32 + 1/16, 3 on 1/32 + 1/16 + 1/8, with token
# re-calibration (TRC) and the light pixel embedding (LPE), as in the paper's released configs.
# Everything else is the base config.
_base_ = ['./mask2former_r50_ade20k-512x512.py']

custom_imports = dict(imports=['mmdet.models', 'pipelines.registry'], allow_failed_imports=False)

model = dict(
    decode_head=dict(  # mmseg.Mask2FormerHead
        pixel_decoder=dict(  # pipelines.models.pro_scale.ProScalePixelDecoder
            type='mmdet.ProScalePixelDecoder',
            schedule=(3, 3, 3),
            trc=True,
            trc_temperature=0.1,
            lpe=True)))
