"""Real dataset layouts: ADE20K's and Cityscapes' folders, checked before any job and written
small for a smoke test.

:func:`check_pairs_and_labels` is what ``snakemake -n`` runs on a user's dataset folder for each
dataloader a model config reads: every image has its label file (named as MMSeg derives it from
the image's name), and the label values of a sample of files lie in the model's classes (ADE20K's
``reduce_zero_label``: raw 0..150, 0 being "other"; Cityscapes' ``*_gtFine_labelTrainIds.png``:
0..18 and 255). Only file names are listed for the pairing (fast for ADE20K's 22,210 files); the
values are read from :data:`SAMPLE` files per folder, spread over the sorted list.

:func:`write_layout` writes a small folder in either layout, with the real file naming and label
encoding (the synthetic set's pictures): ``python -m pipelines data layout``.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from pipelines.errors import UserError

#: label files whose values are read per image folder at ``snakemake -n``
SAMPLE = 16
IGNORE = 255
#: MMSeg 1.2's dataset classes' defaults (tests/unit/test_layout.py holds them equal to mmseg's)
SUFFIX_DEFAULTS = {
    "ADE20KDataset": (".jpg", ".png"),
    "CityscapesDataset": ("_leftImg8bit.png", "_gtFine_labelTrainIds.png"),
    "BaseSegDataset": (".jpg", ".png"),
    "SyntheticShapesDataset": (".jpg", ".png"),
}
_CITYSCAPES_HINT = ("Cityscapes' *_gtFine_labelIds.png must be converted to "
                    "*_gtFine_labelTrainIds.png once: python tools/dataset_converters/"
                    "cityscapes.py <root> (MMSegmentation; cityscapesscripts)")


def suffixes(dataset: Mapping[str, Any]) -> tuple[str, str]:
    default = SUFFIX_DEFAULTS.get(str(dataset.get("type")), (".jpg", ".png"))
    return (dataset.get("img_suffix") or default[0], dataset.get("seg_map_suffix") or default[1])


def reduces_zero_label(dataset: Mapping[str, Any]) -> bool:
    steps = dataset.get("pipeline") or []
    return bool(dataset.get("reduce_zero_label")) or any(
        isinstance(s, Mapping) and s.get("type") == "LoadAnnotations"
        and s.get("reduce_zero_label") for s in steps)


def _files(folder: Path, suffix: str) -> dict[str, Path]:
    """{name without the suffix, relative to folder: path}, recursively (Cityscapes' cities)."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            if name.endswith(suffix):
                path = Path(dirpath) / name
                out[str(path.relative_to(folder))[:-len(suffix)]] = path
    return out


def _sample(paths: list[Path], n: int = SAMPLE) -> list[Path]:
    if len(paths) <= n:
        return paths
    step = (len(paths) - 1) / (n - 1)
    return [paths[round(i * step)] for i in range(n)]


def _label_values(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise UserError(f"label file {path} is a {img.mode} image; labels are one class "
                                f"index per pixel (8-bit grey or palette PNG)")
            return np.unique(np.asarray(img))
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"not a readable label file: {path} ({' '.join(str(err).split())})") \
            from None


def check_pairs_and_labels(loader: str, dataset: Mapping[str, Any], root: Path,
                           num_classes: int | None) -> None:
    """One dataloader's image and label folders under ``root``: pairing and sampled values."""
    prefix = dict(dataset.get("data_prefix") or {})
    img_rel, seg_rel = prefix.get("img_path"), prefix.get("seg_map_path")
    if img_rel is None or seg_rel is None:
        return
    img_suffix, seg_suffix = suffixes(dataset)
    img_dir, seg_dir = root / img_rel, root / seg_rel
    images = _files(img_dir, img_suffix)
    if not images:
        raise UserError(f"no *{img_suffix} images under {img_dir} ({loader}; "
                        f"{dataset.get('type')} reads images named *{img_suffix})")
    labels = _files(seg_dir, seg_suffix)
    missing = sorted(set(images) - set(labels))
    if missing:
        hint = ""
        if seg_suffix.endswith("_labelTrainIds.png") and _files(seg_dir, "_labelIds.png"):
            hint = f"; {_CITYSCAPES_HINT}"
        raise UserError(f"{len(missing)} of {len(images)} images under {img_dir} have no label "
                        f"file in {seg_dir} (first: {missing[0]}{seg_suffix}; {loader}){hint}")
    if num_classes is None:
        return
    reduce = reduces_zero_label(dataset)
    top = num_classes if reduce else num_classes - 1  # the largest class value in the file
    allowed = f"0..{top} and {IGNORE}" + (" (reduce_zero_label: 0 is ignored)" if reduce else "")
    for path in _sample([labels[k] for k in sorted(images)]):
        values = _label_values(path)
        bad = values[(values > top) & (values != IGNORE)]
        if bad.size:
            raise UserError(f"label file {path} holds values {', '.join(map(str, bad[:5]))} "
                            f"outside the {num_classes} classes ({allowed}; {loader})")


def num_classes(cfg: Mapping[str, Any]) -> int | None:
    head = (cfg.get("model") or {}).get("decode_head") or {}
    value = head.get("num_classes") if isinstance(head, Mapping) else None
    return value if isinstance(value, int) else None


_checked: set = set()


def check_labels(cfg: Mapping[str, Any], loaders, root: str | os.PathLike) -> None:
    """:func:`check_pairs_and_labels` for each of ``loaders`` of a (plain) config, with the
    dataset folder ``root``; once per dataset and class count in a process."""
    root, classes = Path(root), num_classes(cfg)
    for name in loaders:
        ds = (cfg.get(name) or {}).get("dataset")
        if not isinstance(ds, Mapping):
            continue
        key = json.dumps([name, str(root.resolve()), ds, classes], sort_keys=True, default=str)
        if key not in _checked:
            check_pairs_and_labels(name, ds, root, classes)
            _checked.add(key)


# ---- writing a small folder in a real layout -------------------------------------------------

LAYOUTS = ("ade20k", "cityscapes")
_CITIES = {"train": ("aachen", "bochum"), "val": ("frankfurt",)}


def _ade_label(label: np.ndarray) -> np.ndarray:
    """Synthetic classes -> ADE20K's raw encoding: 0 "other" (ignored), classes 1..150."""
    out = (label.astype(np.int32) * 19 + 1).astype(np.uint8)  # 1, 20, ..., 134: within 1..150
    out[label == 0] = 0
    return out


def _cityscapes_labels(label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic classes -> (labelIds, labelTrainIds): train ids 0..18, 255 ignored."""
    train_ids = np.array([IGNORE, 0, 2, 8, 10, 11, 13, 18], np.uint8)[label]
    label_ids = np.array([0, 7, 11, 21, 23, 24, 26, 33], np.uint8)[label]
    return label_ids, train_ids


def write_layout(out: str | os.PathLike, layout: str, train: int = 4, val: int = 2,
                 size: int = 64, seed: int = 0) -> Path:
    """Write ``train`` + ``val`` images in ``layout``'s folders and naming to ``out`` (a new or
    empty folder; written beside, then moved into place)."""
    from pipelines.data.synthetic import _encode, render_sample

    if layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r} (one of {', '.join(LAYOUTS)})")
    if min(train, val) < 1 or size < 32 or size % 32:
        raise UserError("--train and --val must be >= 1 and --size a multiple of 32")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for split, n in (("train", train), ("val", val)):
            for i in range(n):
                img, label = render_sample(seed, "training" if split == "train" else
                                           "validation", i, size)
                if layout == "ade20k":
                    stem = f"ADE_{split}_{i + 1:08d}"
                    folder = "training" if split == "train" else "validation"
                    _put(tmp / "images" / folder / f"{stem}.jpg", _encode(img, "JPEG"))
                    _put(tmp / "annotations" / folder / f"{stem}.png",
                         _encode(_ade_label(label), "PNG"))
                else:
                    city = _CITIES[split][i % len(_CITIES[split])]
                    stem = f"{city}_{i:06d}_000019"
                    label_ids, train_ids = _cityscapes_labels(label)
                    _put(tmp / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                         _encode(img, "PNG"))
                    gt = tmp / "gtFine" / split / city
                    _put(gt / f"{stem}_gtFine_labelIds.png", _encode(label_ids, "PNG"))
                    _put(gt / f"{stem}_gtFine_labelTrainIds.png", _encode(train_ids, "PNG"))
        tmp.chmod(0o755)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
