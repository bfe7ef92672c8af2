# PRO-SCALE (arXiv 2404.14657) on MMSeg's Mask2Former R50 Cityscapes 512x1024: schedule (3, 3, 3)
# with token re-calibration and the light pixel embedding, as in the paper's released configs.
_base_ = ['./mask2former_r50_cityscapes-512x1024.py']

custom_imports = dict(imports=['mmdet.models', 'pipelines.registry'], allow_failed_imports=False)

model = dict(
    decode_head=dict(  # mmseg.Mask2FormerHead
        pixel_decoder=dict(  # pipelines.models.pro_scale.ProScalePixelDecoder
            type='mmdet.ProScalePixelDecoder',
            schedule=(3, 3, 3),
            trc=True,
            trc_temperature=0.1,
            lpe=True)))
