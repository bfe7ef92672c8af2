# ECO-M2F composed with PRO-SCALE (3, 3, 3) + TRC + LPE on the tiny CPU model: exits after
# layers 2..9 of the progressive encoder, so an exit in stage 1 or 2 also skips the finer maps
# (they leave the encoder as their input projection).
_base_ = ['./mask2former_r18_ecom2f_synthetic-128x128.py']

model = dict(
    decode_head=dict(  # pipelines.models.early_exit.EarlyExitMask2FormerHead
        pixel_decoder=dict(  # pipelines.models.early_exit.EarlyExitPixelDecoder
            schedule=(3, 3, 3),
            trc=True,
            trc_temperature=0.1,
            lpe=True)))
