"""Every full-size config starts its backbone from the published ImageNet weights, the way MMSeg's
own configs do (``init_cfg=dict(type='Pretrained', checkpoint=...)``), and the real loading code
takes every backbone tensor from a checkpoint in the upstream key layout (written here with random
values: nothing is downloaded)."""
from __future__ import annotations

import pytest
import torch
from mmengine.config import Config

import pipelines.registry  # noqa: F401
from tests.conftest import REPO
from tests.unit import pretrained_layouts as layouts

MODELS_DIR = REPO / "configs" / "models"
R50 = "torchvision://resnet50"
SWIN_T = ("https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/swin/"
          "swin_tiny_patch4_window7_224_20220317-1cdeb081.pth")
DEIT_S = "pretrain/deit_small_patch16_224-cd65a155.pth"
VIT_B = "pretrain/jx_vit_base_p16_224-80ecf9dd.pth"
EXPECTED = {  # every full-size config -> the checkpoint its backbone starts from
    "mask2former_r50_ade20k-512x512.py": R50,
    "mask2former_r50_cityscapes-512x1024.py": R50,
    "mask2former_r50_ecom2f_ade20k-512x512.py": R50,
    "mask2former_r50_proscale-333_ade20k-512x512.py": R50,
    "mask2former_r50_proscale-333_cityscapes-512x1024.py": R50,
    "mask2former_swin-t_ecom2f_cityscapes-512x1024.py": SWIN_T,
    "mask2former_deit-s16_ade20k-512x512.py": DEIT_S,
    "mask2former_deit-s16-ats_ade20k-512x512.py": DEIT_S,
    "mask2former_vit-b16_ade20k-512x512.py": VIT_B,
    "mask2former_vit-b16-cluster_ade20k-512x512.py": VIT_B,
}


def test_every_full_size_config_is_listed():
    full = {p.name for p in MODELS_DIR.glob("*.py") if "synthetic" not in p.name}
    assert full == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_full_size_configs_start_from_pretrained_weights(name):
    cfg = Config.fromfile(str(MODELS_DIR / name))
    assert cfg.model.backbone.init_cfg == dict(type="Pretrained", checkpoint=EXPECTED[name])


def _vit_file(dims):
    return layouts.mmseg_converter("vit2mmseg").convert_vit(layouts.timm_vit(dims))


# backbone -> (config, upstream state dict as the file holds it, keys of the file the backbone
# does not have, keys of the backbone the file does not have)
CASES = {
    # torchvision's file as it is; its classifier is not part of the backbone
    "resnet50": ("mask2former_r50_ade20k-512x512.py", layouts.torchvision_resnet50,
                 {"fc.weight", "fc.bias"}, set()),
    # the openmmlab file is Microsoft's converted by MMSeg's swin2mmseg.py: the classifier's
    # final norm and the shifted blocks' attention masks (recomputed) are not loaded; the four
    # output norms of the dense backbone (norm0..3) are new
    "swin-t": ("mask2former_swin-t_ecom2f_cityscapes-512x1024.py",
               lambda: layouts.mmseg_converter("swin2mmseg").convert_swin(
                   layouts.microsoft_swin_tiny()),
               {"norm.weight", "norm.bias"} | {f"stages.{i}.blocks.1.attn_mask" for i in range(3)}
               | {f"stages.2.blocks.{j}.attn_mask" for j in (3, 5)},
               {f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")}),
    # timm's files converted by MMSeg's vit2mmseg.py (as MMSeg's ViT configs expect): the final
    # norm (ln1) is unused with final_norm=False (the Feature2Pyramid neck takes block outputs)
    "deit-s": ("mask2former_deit-s16_ade20k-512x512.py", lambda: _vit_file(384),
               {"ln1.weight", "ln1.bias"}, set()),
    "deit-s-ats": ("mask2former_deit-s16-ats_ade20k-512x512.py", lambda: _vit_file(384),
                   {"ln1.weight", "ln1.bias"}, set()),
    "vit-b": ("mask2former_vit-b16_ade20k-512x512.py", lambda: _vit_file(768),
              {"ln1.weight", "ln1.bias"}, set()),
    "vit-b-cluster": ("mask2former_vit-b16-cluster_ade20k-512x512.py", lambda: _vit_file(768),
                      {"ln1.weight", "ln1.bias"}, set()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_backbone_loads_every_tensor_of_the_upstream_checkpoint(case, tmp_path):
    from mmseg.models.backbones import VisionTransformer
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    config, make, unused, new = CASES[case]
    register_all_modules(init_default_scope=True)
    source = make()
    path = tmp_path / "backbone.pth"
    torch.save(source, path)
    backbone_cfg = Config.fromfile(str(MODELS_DIR / config)).model.backbone
    backbone_cfg.init_cfg.checkpoint = str(path)
    if "norm_cfg" in backbone_cfg:
        backbone_cfg.norm_cfg = dict(type="BN", requires_grad=True)  # SyncBN: same keys
    backbone = MODELS.build(backbone_cfg)
    backbone.init_weights()
    loaded = backbone.state_dict()
    assert set(source) - set(loaded) == unused
    assert set(loaded) - set(source) == new
    for key in set(source) & set(loaded):
        expected = source[key]
        if key == "pos_embed" and expected.shape != loaded[key].shape:  # 14x14 -> 32x32
            grid = backbone.img_size[0] // backbone.patch_size
            expected = VisionTransformer.resize_pos_embed(expected, (grid, grid), (14, 14),
                                                          backbone.interpolate_mode)
        assert torch.equal(loaded[key], expected), key
