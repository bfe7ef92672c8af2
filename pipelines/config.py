"""Loading mmengine configs from the CLI, with every user mistake turned into one line."""
from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

from pipelines.errors import UserError

DATALOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")
#: the dataset folder in a run's rendered config (pipelines/grid/render.py): each stage is
#: given the real one (--data-root)
DATA_ROOT_MASK = "<data_root>"


def parse_cfg_options(pairs: Iterable[str] | None) -> dict[str, Any]:
    """``['a.b=1', 'c=[1,2]']`` -> ``{'a.b': 1, 'c': [1, 2]}`` using mmengine's own parser."""
    quiet_import_warnings()
    from mmengine.config import DictAction

    out: dict[str, Any] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--cfg-options expects KEY=VALUE, got {pair!r}")
        out[key] = DictAction._parse_iterable(value)
    return out


#: keys mmengine's Runner reads with a default when a config leaves them out; filled in so that
#: ``--cfg-options randomness.seed=1`` (the grid's seed axis) works on any config
RUNNER_DEFAULTS = {"randomness": {"seed": None}}


def add_runner_defaults(cfg) -> None:
    """Give ``cfg`` (an mmengine Config or a plain dict) the Runner's defaults it lacks."""
    for key, value in RUNNER_DEFAULTS.items():
        if key not in cfg:
            cfg[key] = copy.deepcopy(value)


def quiet_import_warnings() -> None:
    """mmengine imports pkg_resources, which warns on every import; that line is noise."""
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")


def check_key(cfg: dict, key: str) -> None:
    """``cfg``: the config as a plain dict (``Config.to_dict()``)."""
    node: Any = cfg
    walked = []
    for part in key.split("."):
        if isinstance(node, dict):
            if part not in node:
                where = ".".join(walked) or "the top level"
                raise UserError(f"unknown --cfg-options key {key!r}: no {part!r} under {where}")
            node = node[part]
        elif isinstance(node, (list, tuple)) and part.lstrip("-").isdigit():
            if not -len(node) <= int(part) < len(node):
                raise UserError(f"unknown --cfg-options key {key!r}: index {part} out of range")
            node = node[int(part)]
        else:
            raise UserError(f"unknown --cfg-options key {key!r}: {'.'.join(walked)} is not a dict")
        walked.append(part)


def load_config(path: str | os.PathLike, cfg_options: Iterable[str] | None = None,
                data_root: str | None = None):
    """Read an mmengine config and apply ``--cfg-options`` (each key must already exist)."""
    quiet_import_warnings()
    from mmengine.config import Config

    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        cfg = Config.fromfile(str(path))
    except (SyntaxError, ImportError, KeyError, FileNotFoundError, ValueError) as err:
        raise UserError(f"cannot read config {path}: {type(err).__name__}: {err}") from None
    options = parse_cfg_options(cfg_options)
    add_runner_defaults(cfg)
    plain = cfg.to_dict()
    for key in options:
        check_key(plain, key)
    cfg.merge_from_dict(options)
    if data_root is not None:
        set_data_root(cfg, data_root)
    return cfg


def set_data_root(cfg, data_root: str) -> None:
    for name in DATALOADERS:
        loader = cfg.get(name)
        if loader and "dataset" in loader:
            loader.dataset.data_root = str(data_root)


def check_dataset(cfg, loaders: Iterable[str], data_root: str | None = None,
                  images: bool = False) -> None:
    """Fail early, in one line, when a dataloader's image or label folder is missing or empty.

    Args:
        cfg: an mmengine Config or the plain dict of one.
        data_root: the dataset folder to check instead of each dataset's ``data_root``.
        images: also open every file of the image folders (header only, fast): one that is not
            an image is named here instead of failing inside the data pipeline.
    """
    for name in loaders:
        loader = cfg.get(name)
        if not loader or not isinstance(loader.get("dataset"), dict):
            continue
        ds = loader["dataset"]
        if data_root is None and ds.get("data_root") == DATA_ROOT_MASK:
            raise UserError(f"{name}: this config leaves its dataset folder out (a run's config "
                            f"rendered by the pipeline); pass --data-root DIR")
        root = Path(data_root if data_root is not None else ds.get("data_root", "") or "")
        for kind, rel in dict(ds.get("data_prefix", {}) or {}).items():
            folder = root / rel
            if not folder.is_dir():
                raise UserError(f"dataset folder missing: {folder} ({name}.dataset.data_prefix."
                                f"{kind}); {_layout_hint(cfg, ds, root)}")
            if not any(folder.iterdir()):
                raise UserError(f"dataset folder is empty: {folder} ({name})")
            if images and kind in ("img_path", "img"):
                check_images(folder, ds.get("img_suffix"))


def _layout_hint(cfg, ds: dict, root: Path) -> str:
    """What to do about a missing folder: the synthetic set's command, or every folder the
    config's dataloaders read (a real dataset in another layout, say)."""
    if ds.get("type") == "SyntheticShapesDataset":
        return (f"generate one with `python -m pipelines data synthetic --out {root}` or pass "
                f"--data-root")
    folders = ", ".join(sorted({str(rel) for name in DATALOADERS
                                for rel in ((((cfg.get(name) or {}).get("dataset") or {})
                                             .get("data_prefix")) or {}).values()}))
    return f"{ds.get('type', 'the dataset')} reads {folders} under the dataset folder {root}"


def check_images(folder: Path, suffix: str | None = None) -> None:
    """Every file in ``folder`` (with ``suffix``, recursively) must open as an image."""
    from PIL import Image, UnidentifiedImageError

    for path in sorted(p for p in folder.rglob(f"*{suffix or ''}") if p.is_file()):
        try:
            with Image.open(path) as img:
                img.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise UserError(f"not a readable image: {path} ({' '.join(str(err).split())})") \
                from None


def ensure_writable_dir(path: str | os.PathLike, what: str = "work dir") -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as err:
        raise UserError(f"{what} {path} is not writable: {err.strerror}") from None
    return path


def write_lines_atomic(path: str | os.PathLike, lines: Iterable[str]) -> Path:
    """One item per line, written next to ``path`` then renamed (a reader never sees half)."""
    path = Path(path)
    ensure_writable_dir(path.parent, "output folder")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    tmp.replace(path)
    return path


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON next to ``path`` then rename, so a reader never sees half a file."""
    path = Path(path)
    ensure_writable_dir(path.parent, "output folder")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def available_memory() -> int | None:
    """Bytes of memory this process may still use: ``MemAvailable`` (Linux), capped by a cgroup
    limit when there is one; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for name in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(name).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            found.append(int(text))
    return min(found) if found else None


def check_memory(needed: float, what: str, fix: str) -> None:
    """Refuse, before allocating, work whose estimated memory exceeds what is available.

    Args:
        needed: estimated bytes (a lower bound: what is refused would certainly not fit).
        what: the work, for the message (``a 65536x65536 forward pass``).
        fix: what to change (``pass a smaller --shape``).
    """
    available = available_memory()
    if available is not None and needed > available:
        raise UserError(f"{what} needs at least {needed / 2**30:,.1f} GiB of memory, "
                        f"{available / 2**30:,.1f} GiB available; {fix}")
