"""Every config under configs/ loads and builds; the R50 one equals MMSeg's official config."""
from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config

import pipelines.registry  # noqa: F401
from tests.conftest import REPO

MODEL_CONFIGS = sorted((REPO / "configs" / "models").glob("*.py"))


def _official(name: str) -> Config:
    import mmseg

    return Config.fromfile(str(Path(mmseg.__file__).parent / ".mim" / "configs" / name))


def _without_scope(node):
    """Inheriting through ``mmseg::`` tags each dict with ``_scope_='mmseg'``: same registry."""
    if isinstance(node, dict):
        return {k: _without_scope(v) for k, v in node.items() if k != "_scope_"}
    if isinstance(node, (list, tuple)):
        return type(node)(_without_scope(v) for v in node)
    return node


def test_r50_ade20k_equals_official():
    ours = Config.fromfile(str(REPO / "configs/models/mask2former_r50_ade20k-512x512.py"))
    official = _official("mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py")
    assert _without_scope(ours.to_dict()) == _without_scope(official.to_dict())
    assert ours.model.decode_head.pixel_decoder.type == "mmdet.MSDeformAttnPixelDecoder"


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=[p.name for p in MODEL_CONFIGS])
def test_model_config_builds(path):
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(str(path))
    model_cfg = cfg.model.copy()
    model_cfg.backbone.pop("init_cfg", None)  # no weight download here
    model_cfg.backbone.norm_cfg = dict(type="BN", requires_grad=True)  # SyncBN needs a process group
    model = MODELS.build(model_cfg)
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


def test_tiny_config_is_tiny():
    cfg = Config.fromfile(str(REPO / "configs/models/mask2former_r18_synthetic-128x128.py"))
    assert cfg.model.backbone.depth == 18 and cfg.model.backbone.init_cfg is None
    assert cfg.model.decode_head.num_classes == 8
    assert cfg.train_dataloader.dataset.type == "SyntheticShapesDataset"
    assert len(cfg.model.decode_head.loss_cls.class_weight) == 9
