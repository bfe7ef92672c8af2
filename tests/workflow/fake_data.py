"""A stand-in for a user's dataset (ADE20K, Cityscapes): the folders a model config reads, each
holding one image and its label file, named as the config's dataset class names them. Enough for
the checks before any job (``snakemake -n``); nothing trains on it (tests/workflow/
test_real_layouts.py trains on real layouts)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import REPO


def _image_bytes(array: np.ndarray, suffix: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG" if suffix.endswith(".jpg") else "PNG")
    return buf.getvalue()


def fake_dataset(root: Path, *configs: str | Path) -> Path:
    """Create every ``data_prefix`` folder the model ``configs`` read, under ``root``."""
    from pipelines.config import DATALOADERS
    from pipelines.data.layout import suffixes
    from pipelines.grid import resolved_base

    for config in configs:
        plain = resolved_base(Path(config) if Path(config).is_absolute() else REPO / config)
        for name in DATALOADERS:
            dataset = (plain.get(name) or {}).get("dataset") or {}
            img_suffix, seg_suffix = suffixes(dataset)
            for kind, rel in (dataset.get("data_prefix") or {}).items():
                folder = root / rel
                folder.mkdir(parents=True, exist_ok=True)
                if kind == "seg_map_path":
                    data = _image_bytes(np.zeros((4, 4), np.uint8), seg_suffix)
                    (folder / f"x{seg_suffix}").write_bytes(data)
                else:
                    data = _image_bytes(np.zeros((4, 4, 3), np.uint8), img_suffix)
                    (folder / f"x{img_suffix}").write_bytes(data)
    return root
