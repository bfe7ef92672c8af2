"""A stand-in for a user's dataset (ADE20K, Cityscapes): the folders a model config reads, each
holding one file. Enough for the checks before any job (``snakemake -n``); nothing trains on it."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import REPO


def fake_dataset(root: Path, *configs: str | Path) -> Path:
    """Create every ``data_prefix`` folder the model ``configs`` read, under ``root``."""
    from pipelines.config import DATALOADERS
    from pipelines.grid import resolved_base

    for config in configs:
        plain = resolved_base(Path(config) if Path(config).is_absolute() else REPO / config)
        for name in DATALOADERS:
            dataset = (plain.get(name) or {}).get("dataset") or {}
            for rel in (dataset.get("data_prefix") or {}).values():
                folder = root / rel
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "placeholder.png").write_bytes(b"")
    return root
