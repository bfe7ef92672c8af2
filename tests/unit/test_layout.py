"""Real dataset layouts (pipelines/data/layout.py): the folders written in ADE20K's and
Cityscapes' naming pass the checks the model configs' dataloaders get before any job, and each
kind of broken folder is refused in one line naming the file."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
from PIL import Image

from pipelines.config import DATALOADERS, check_dataset
from pipelines.data import layout
from pipelines.errors import UserError
from pipelines.grid import resolved_base
from tests.conftest import REPO

ADE = REPO / "configs/models/mask2former_r50_ade20k-512x512.py"
CITYSCAPES = REPO / "configs/models/mask2former_r50_cityscapes-512x1024.py"


def test_suffix_defaults_are_mmsegs():
    from mmseg.datasets import ADE20KDataset, CityscapesDataset

    for cls in (ADE20KDataset, CityscapesDataset):
        params = inspect.signature(cls.__init__).parameters
        assert layout.SUFFIX_DEFAULTS[cls.__name__] == (params["img_suffix"].default,
                                                        params["seg_map_suffix"].default)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {name: layout.write_layout(root / name, name, train=3, val=2, size=32)
            for name in layout.LAYOUTS}


def _check(config, root):
    plain = resolved_base(config)
    check_dataset(plain, DATALOADERS, data_root=str(root))
    layout.check_labels(plain, DATALOADERS, root)


def test_written_layouts_pass_the_checks(folders):
    _check(ADE, folders["ade20k"])
    _check(CITYSCAPES, folders["cityscapes"])
    ade = np.asarray(Image.open(folders["ade20k"] / "annotations/training/ADE_train_00000001.png"))
    assert ade.min() == 0 and ade.max() <= 150  # raw ADE20K: 0 is "other"
    cs = folders["cityscapes"] / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"
    assert set(np.unique(np.asarray(Image.open(cs)))) <= set(range(19)) | {255}


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_labels_outside_the_classes_are_refused(folders, tmp_path):
    root = _copy(folders["ade20k"], tmp_path / "ade")
    bad = root / "annotations/validation/ADE_val_00000002.png"
    Image.fromarray(np.full((8, 8), 151, np.uint8)).save(bad)
    with pytest.raises(UserError, match=r"label file .*ADE_val_00000002.png holds values 151 "
                                        r"outside the 150 classes \(0..150 and 255 "
                                        r"\(reduce_zero_label"):
        _check(ADE, root)
    root = _copy(folders["cityscapes"], tmp_path / "cs")
    bad = next((root / "gtFine/val").rglob("*_labelTrainIds.png"))
    Image.fromarray(np.full((8, 8), 19, np.uint8)).save(bad)
    with pytest.raises(UserError, match=r"holds values 19 outside the 19 classes \(0..18 and 255;"):
        _check(CITYSCAPES, root)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad)
    with pytest.raises(UserError, match="is a RGB image; labels are one class index per pixel"):
        _check(CITYSCAPES, root)


def test_images_without_labels_are_refused(folders, tmp_path):
    root = _copy(folders["cityscapes"], tmp_path / "cs")
    for path in (root / "gtFine").rglob("*_labelTrainIds.png"):
        path.unlink()  # labelIds only: the converter was never run
    with pytest.raises(UserError, match=r"3 of 3 images under .*leftImg8bit/train have no label "
                                        r"file .*_gtFine_labelTrainIds.png.*tools/dataset_"
                                        r"converters/cityscapes.py"):
        _check(CITYSCAPES, root)
    root = _copy(folders["ade20k"], tmp_path / "ade")
    (root / "annotations/training/ADE_train_00000002.png").unlink()
    with pytest.raises(UserError, match=r"1 of 3 images under .*images/training have no label "
                                        r"file in .*annotations/training \(first: "
                                        r"ADE_train_00000002.png; train_dataloader\)$"):
        _check(ADE, root)
    for path in (root / "images/training").iterdir():
        path.rename(path.with_suffix(".png"))
    with pytest.raises(UserError, match=r"no \*.jpg images under .*images/training "
                                        r"\(train_dataloader; ADE20KDataset reads"):
        _check(ADE, root)


def test_a_folder_in_the_wrong_layout_names_what_the_config_reads(folders):
    with pytest.raises(UserError, match=r"dataset folder missing: .*leftImg8bit/train .*"
                                        r"CityscapesDataset reads gtFine/train, gtFine/val, "
                                        r"leftImg8bit/train, leftImg8bit/val"):
        _check(CITYSCAPES, folders["ade20k"])


def test_write_layout_refuses_a_used_folder(folders):
    with pytest.raises(UserError, match="is not an empty folder"):
        layout.write_layout(folders["ade20k"], "ade20k")
