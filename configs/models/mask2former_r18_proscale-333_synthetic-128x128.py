# The tiny CPU model with the PRO-SCALE pixel decoder: schedule (3, 3, 3), TRC and LPE on, the
# same setting as mask2former_r50_proscale-333_ade20k-512x512.py. Everything else is the base.
_base_ = ['./mask2former_r18_synthetic-128x128.py']

model = dict(
    decode_head=dict(  # mmseg.Mask2FormerHead
        pixel_decoder=dict(  # pipelines.models.pro_scale.ProScalePixelDecoder
            type='mmdet.ProScalePixelDecoder',
            schedule=(3, 3, 3),
            trc=True,
            trc_temperature=0.1,
            lpe=True)))
