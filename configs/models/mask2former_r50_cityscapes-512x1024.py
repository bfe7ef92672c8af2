# MMSeg's official Mask2Former R50 Cityscapes 512x1024 config (90k iterations, 8 GPUs x 2 images),
# inherited unchanged from the copy inside the installed mmsegmentation package. Needs Cityscapes
# under data/cityscapes (or --data-root) and downloads torchvision's R50 weights when it trains.
_base_ = ['mmseg::mask2former/mask2former_r50_8xb2-90k_cityscapes-512x1024.py']
