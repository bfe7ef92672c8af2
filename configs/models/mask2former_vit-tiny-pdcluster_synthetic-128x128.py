# The tiny plain-ViT Mask2Former with AiluRus-style clustering of the pixel decoder's deformable
# encoder queries (beyond the papers): from encoder layer 2 of 6 on, 25 % anchors per level,
# values kept dense (pipelines/models/cluster_pixel_decoder.py). The backbone is the plain ViT.
_base_ = ['./mask2former_vit-tiny_synthetic-128x128.py']

model = dict(
    decode_head=dict(  # mmseg.Mask2FormerHead
        pixel_decoder=dict(  # pipelines.models.cluster_pixel_decoder.ClusterPixelDecoder
            type='mmdet.ClusterPixelDecoder',
            cluster_layer=2,
            anchor_fraction=0.25,
            k=5,
            window=2)))
