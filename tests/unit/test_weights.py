"""A weights folder for nodes without internet (pipelines/stages/weights.py): every pretrained URI
resolves to one file, a missing file is refused before any job, and the files' content (not
their folder) is part of the training recipe."""
from __future__ import annotations

import copy
import os
import shutil

import pytest
import torch

from pipelines.errors import UserError
from pipelines.grid import expand_grid, resolved_base
from pipelines.stages import weights
from tests.conftest import REPO
from tests.unit import pretrained_layouts as layouts

R50_ADE = "configs/models/mask2former_r50_ade20k-512x512.py"
R50_FILE = "resnet50-0676ba61.pth"


def test_uris_name_the_file_their_download_names():
    assert weights.file_name("torchvision://resnet50") == R50_FILE
    assert weights.address("torchvision://resnet50") == \
        "https://download.pytorch.org/models/resnet50-0676ba61.pth"
    assert weights.file_name("https://x.org/a/swin_tiny.pth?dl=1") == "swin_tiny.pth"
    assert weights.address("open-mmlab://resnet50_v1c").startswith(
        "https://download.openmmlab.com/")
    assert weights.file_name("pretrain/deit_small_patch16_224-cd65a155.pth") == \
        "deit_small_patch16_224-cd65a155.pth"
    with pytest.raises(UserError, match="no 'resnet5000'"):
        weights.file_name("torchvision://resnet5000")
    with pytest.raises(UserError, match="s3:// cannot be read from a weights folder"):
        weights.file_name("s3://bucket/x.pth")


def test_localise_points_every_pretrained_block_at_the_folder(tmp_path):
    cfg = resolved_base(REPO / R50_ADE)
    assert list(weights.pretrained_uris(cfg)) == [
        ("model.backbone.init_cfg.checkpoint", "torchvision://resnet50")]
    with pytest.raises(UserError) as err:
        weights.localise(copy.deepcopy(cfg), tmp_path)
    assert str(err.value) == (
        f"weights folder {tmp_path} has no {R50_FILE} (needed for the pretrained checkpoint "
        f"torchvision://resnet50); download it once on a node with internet: curl -L -o "
        f"{tmp_path / R50_FILE} https://download.pytorch.org/models/{R50_FILE}")
    (tmp_path / R50_FILE).write_bytes(b"weights")
    assert weights.localise(cfg, tmp_path) == {
        "model.backbone.init_cfg.checkpoint": str(tmp_path / R50_FILE)}
    assert cfg["model"]["backbone"]["init_cfg"]["checkpoint"] == str(tmp_path / R50_FILE)
    assert weights.localise(cfg, None) == {}
    # the train stage's mmengine Config, as it loads it
    from pipelines.config import load_config

    config = load_config(REPO / R50_ADE)
    weights.localise(config, tmp_path)
    assert config.model.backbone.init_cfg.checkpoint == str(tmp_path / R50_FILE)


def _ablation(folder=None, **extra):
    out = {"name": "w", "data": {"root": "data/synthetic", "synthetic": {"train": 2, "val": 1}},
           "grid": {"variants": {"baseline": {"config": R50_ADE}}}, **extra}
    if folder is not None:
        out["weights"] = str(folder)
    return out


def _recipe(ablation):
    (run,) = expand_grid(ablation, repo=REPO)
    return run.train_recipe


def test_the_files_content_is_the_recipe_not_their_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(weights.ENV, raising=False)
    plain = _recipe(_ablation())
    assert _recipe(_ablation(weights=None)) == plain  # no folder: recipes as before
    folder = tmp_path / "w1"
    folder.mkdir()
    with pytest.raises(UserError, match=r"grid.variants.baseline.config: weights folder .* has "
                                        r"no resnet50-0676ba61.pth .* curl -L -o"):
        _recipe(_ablation(folder))
    torch.save(layouts.torchvision_resnet50(seed=0), folder / R50_FILE)
    first = _recipe(_ablation(folder))
    assert first != plain
    moved = tmp_path / "elsewhere"
    shutil.copytree(folder, moved)
    assert _recipe(_ablation(moved)) == first  # the folder's path is not identity
    monkeypatch.setenv(weights.ENV, str(moved))  # the environment variable: the same
    assert _recipe(_ablation()) == first
    monkeypatch.delenv(weights.ENV)
    torch.save(layouts.torchvision_resnet50(seed=1), folder / R50_FILE)
    os.utime(folder / R50_FILE, ns=(1, 1))
    assert _recipe(_ablation(folder)) != first  # other weights: another training


def test_a_missing_local_checkpoint_is_refused_without_a_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(weights.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    ablation = _ablation()
    ablation["grid"]["variants"]["baseline"]["config"] = str(
        REPO / "configs/models/mask2former_deit-s16_ade20k-512x512.py")
    with pytest.raises(UserError, match=r"pretrained checkpoint not found: pretrain/deit_small"
                                        r"_patch16_224-cd65a155.pth .* set the ablation key"):
        expand_grid(ablation, repo=REPO)


def test_a_folder_leaves_configs_without_pretrained_weights_alone(tmp_path, monkeypatch):
    """A weights folder set for a whole site (PIPELINES_WEIGHTS) does not retrain the synthetic
    configs, which start from random weights."""
    monkeypatch.delenv(weights.ENV, raising=False)
    ablation = _ablation()
    ablation["grid"]["variants"]["baseline"]["config"] = \
        "configs/models/mask2former_r18_synthetic-128x128.py"
    plain = _recipe(ablation)
    monkeypatch.setenv(weights.ENV, str(tmp_path))
    assert _recipe(ablation) == plain


def test_an_axis_over_the_checkpoint_keys_each_run_by_its_own_file(tmp_path, monkeypatch):
    """The walk over a run's pretrained checkpoints is shared by runs whose options cannot reach
    one; a run that sets a checkpoint gets its own file's content."""
    monkeypatch.delenv(weights.ENV, raising=False)
    torch.save(layouts.torchvision_resnet50(seed=0), tmp_path / R50_FILE)
    ablation = _ablation(tmp_path)
    other = "https://example.org/weights/other-r50.pth"
    ablation["grid"]["variants"]["baseline"]["axes"] = {
        "model.backbone.init_cfg.checkpoint": ["torchvision://resnet50", other]}
    with pytest.raises(UserError, match="has no other-r50.pth"):
        expand_grid(ablation, repo=REPO)
    torch.save(layouts.torchvision_resnet50(seed=1), tmp_path / "other-r50.pth")
    recipes = {r.train_recipe for r in expand_grid(ablation, repo=REPO)}
    assert len(recipes) == 2
