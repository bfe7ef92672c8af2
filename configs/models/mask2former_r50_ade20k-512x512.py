# MMSeg's official Mask2Former R50 ADE20K 512x512 config, inherited unchanged from the copy
# that ships inside the installed mmsegmentation package (mmseg/.mim/configs/mask2former/).
# tests/unit/test_configs.py holds the two equal. Needs ADE20K under data/ade/ADEChallengeData2016
# (or --data-root) and downloads torchvision's R50 weights when it trains.
_base_ = ['mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py']
