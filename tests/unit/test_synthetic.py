"""The synthetic multi-scale dataset: layout, determinism, class content, MMSeg reading."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.data.synthetic import CLASSES, SyntheticSpec, render_sample, write_dataset
from tests.conftest import TINY_CONFIG, run_cli


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_byte_identical_for_same_seed(tmp_path):
    spec = SyntheticSpec(train=3, val=2, size=64, seed=7)
    a = write_dataset(tmp_path / "a", spec, progress=False)
    b = write_dataset(tmp_path / "b", spec, progress=False)
    files = _digest(a)
    assert files == _digest(b)
    assert {f for f in files if f.startswith("images/training/")} == {
        f"images/training/{i:06d}.jpg" for i in range(3)}
    assert {f for f in files if f.startswith("annotations/validation/")} == {
        f"annotations/validation/{i:06d}.png" for i in range(2)}
    meta = json.loads((a / "meta.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["seed"] == 7
    c = write_dataset(tmp_path / "c", SyntheticSpec(train=3, val=2, size=64, seed=8),
                      progress=False)
    assert _digest(c)["images/training/000000.jpg"] != files["images/training/000000.jpg"]


def test_rewrite_replaces_an_earlier_set(tmp_path):
    write_dataset(tmp_path / "d", SyntheticSpec(train=4, val=1, size=64), progress=False)
    write_dataset(tmp_path / "d", SyntheticSpec(train=2, val=1, size=64), progress=False)
    assert len(list((tmp_path / "d" / "images" / "training").iterdir())) == 2


def test_classes_differ_by_size_and_include_small_objects():
    areas = {name: [] for name in CLASSES}
    for i in range(30):
        _, label = render_sample(0, "training", i, 128)
        for k, name in enumerate(CLASSES):
            areas[name].append(int((label == k).sum()))
    for name in CLASSES:
        assert sum(areas[name]) > 0, f"class {name} never appears"
    # the pair that differs only by size: a small blob is tens of pixels, a large one ~1000
    from scipy import ndimage

    sizes = {"small_blob": [], "large_blob": []}
    for i in range(30):
        _, label = render_sample(0, "training", i, 128)
        for name in sizes:
            parts, n = ndimage.label(label == CLASSES.index(name))
            sizes[name] += list(np.bincount(parts.ravel())[1:])
    assert np.median(sizes["small_blob"]) < 40
    assert np.median(sizes["small_blob"]) * 15 < np.median(sizes["large_blob"])
    # background dominates: a majority-class predictor is a weak but non-trivial baseline
    fg = sum(sum(areas[n]) for n in CLASSES[1:])
    assert sum(areas["background"]) > fg


def test_read_through_mmseg_dataset_and_transforms(synthetic_root):
    from mmengine.config import Config
    from mmseg.registry import DATASETS

    import pipelines.registry  # noqa: F401

    cfg = Config.fromfile(str(TINY_CONFIG))
    ds_cfg = cfg.train_dataloader.dataset
    ds_cfg.data_root = str(synthetic_root)
    dataset = DATASETS.build(ds_cfg)
    assert len(dataset) == 12
    assert dataset.metainfo["classes"] == CLASSES
    sample = dataset[0]
    assert tuple(sample["inputs"].shape[:1]) == (3,)
    seg = sample["data_samples"].gt_sem_seg.data
    assert seg.max().item() < len(CLASSES)

    raw = np.asarray(Image.open(synthetic_root / "annotations/training/000000.png"))
    assert raw.dtype == np.uint8 and raw.max() < len(CLASSES)


def test_cli_writes_dataset_and_refuses_bad_size(tmp_path):
    ok = run_cli("data", "synthetic", "--out", str(tmp_path / "s"), "--train", "2", "--val", "1",
                 "--size", "64", "--seed", "1", "--no-progress")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "s" / "images" / "training" / "000001.jpg").is_file()
    bad = run_cli("data", "synthetic", "--out", str(tmp_path / "t"), "--size", "100")
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "multiple of 32" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_cli_refuses_to_overwrite_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    bad = run_cli("data", "synthetic", "--out", str(tmp_path / "mine"), "--train", "1",
                  "--val", "1", "--size", "64")
    assert bad.returncode == 2 and "not a synthetic dataset" in bad.stderr
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
