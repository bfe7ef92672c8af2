"""Pretrained backbone weights from a local folder, for compute nodes without internet.

A model config names its backbone's starting point the MMSeg way,
``init_cfg=dict(type='Pretrained', checkpoint=URI)``, with ``URI`` one of
``torchvision://resnet50``, ``open-mmlab://NAME``, an ``https://`` address or a file path.
mmengine downloads the first three at train time. With a *weights folder* (the ablation key
``weights:`` or the environment variable ``PIPELINES_WEIGHTS``) every such URI resolves to one
file in that folder, named as the download names it (the last part of its address; for
``torchvision://resnet50`` that is ``resnet50-0676ba61.pth``, from mmengine's own table), and
nothing is downloaded. A missing file is refused before any job, in one line that gives the
address to fetch it from.

The files' content (sha256) joins the training recipe, so a replaced file retrains; the folder's
path does not (moving it changes nothing).
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlparse

from pipelines.errors import UserError

ENV = "PIPELINES_WEIGHTS"
#: URI schemes whose table mmengine ships (``mmengine/hub/*.json``)
_TABLES = {"torchvision://": "torchvision_0.12.json", "open-mmlab://": "openmmlab.json",
           "openmmlab://": "openmmlab.json"}
_OPENMMLAB_BASE = "https://download.openmmlab.com/"
_hash_cache: dict[tuple[str, int, int], str] = {}


def folder_of(ablation: Mapping[str, Any] | None = None) -> Path | None:
    """The weights folder: the ablation's ``weights`` key, else ``$PIPELINES_WEIGHTS``, else
    None (weights are downloaded at train time, as mmengine does)."""
    value = (ablation or {}).get("weights") or os.environ.get(ENV)
    return Path(str(value)).expanduser() if value else None


def shell_prefix(folder: Path | None) -> str:
    """``PIPELINES_WEIGHTS=<folder> `` for a stage job's shell command (quoted, with braces
    doubled for Snakemake's formatting); empty without a folder."""
    if folder is None:
        return ""
    text = f"{ENV}={shlex.quote(str(folder.resolve()))} "
    return text.replace("{", "{{").replace("}", "}}")


def _table(name: str) -> dict:
    import mmengine

    return json.loads((Path(mmengine.__path__[0]) / "hub" / name).read_text())


def address(uri: str) -> str | None:
    """Where mmengine would download ``uri`` from (None for a file path)."""
    for prefix, table in _TABLES.items():
        if uri.startswith(prefix):
            name = uri[len(prefix):]
            urls = _table(table)
            if name not in urls:
                raise UserError(f"unknown pretrained checkpoint {uri!r} (mmengine's table "
                                f"{table} has no {name!r})")
            url = urls[name]
            return url if "://" in url else _OPENMMLAB_BASE + url
    if uri.startswith(("http://", "https://")):
        return uri
    if "://" in uri:
        raise UserError(f"pretrained checkpoint {uri!r}: the scheme {uri.split('://')[0]}:// "
                        f"cannot be read from a weights folder (give an https:// address, a "
                        f"torchvision:// or open-mmlab:// name, or a file path)")
    return None


def file_name(uri: str) -> str:
    """The name ``uri``'s file has in a weights folder."""
    url = address(uri)
    return Path(urlparse(url).path).name if url else Path(uri).name


def pretrained_uris(cfg: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """Every ``(config key, URI)`` a (plain or mmengine) config loads pretrained weights from:
    ``init_cfg`` blocks of type ``Pretrained`` and string ``pretrained`` keys, at any depth."""
    if isinstance(cfg, Mapping):
        init = cfg.get("init_cfg")
        for i, block in enumerate(init if isinstance(init, (list, tuple)) else [init]):
            if isinstance(block, Mapping) and block.get("type") == "Pretrained" \
                    and block.get("checkpoint"):
                key = f"{where}init_cfg" + (f".{i}" if isinstance(init, (list, tuple)) else "")
                yield f"{key}.checkpoint", str(block["checkpoint"])
        if isinstance(cfg.get("pretrained"), str):
            yield f"{where}pretrained", cfg["pretrained"]
        for key, value in cfg.items():
            if key != "init_cfg":
                yield from pretrained_uris(value, f"{where}{key}.")
    elif isinstance(cfg, (list, tuple)):
        for i, value in enumerate(cfg):
            yield from pretrained_uris(value, f"{where}{i}.")


def locate(uri: str, folder: Path) -> Path:
    """``uri``'s file in ``folder``, or a one-line :class:`UserError` saying where to get it."""
    local = Path(uri).expanduser()
    if "://" not in uri and local.is_absolute() and local.is_file():
        return local  # an absolute path of the user's own wins
    path = folder / file_name(uri)
    if not path.is_file():
        url = address(uri)
        fetch = (f"download it once on a node with internet: curl -L -o {path} {url}" if url
                 else f"copy {uri} there")
        where = "is not a folder" if not folder.is_dir() else f"has no {path.name}"
        raise UserError(f"weights folder {folder} {where} (needed for the pretrained "
                        f"checkpoint {uri}); {fetch}")
    return path


def localise(cfg: Any, folder: Path | None) -> dict[str, str]:
    """Point every pretrained checkpoint of ``cfg`` (changed in place) at its file in
    ``folder``; returns {config key: file}. Nothing is changed when ``folder`` is None."""
    if folder is None:
        return {}
    cfg = getattr(cfg, "_cfg_dict", cfg)  # an mmengine Config: its ConfigDict, changed in place
    found = {}
    for key, uri in list(pretrained_uris(cfg)):
        path = str(locate(uri, folder))
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
        node[last] = path
        found[key] = path
    return found


def sha256(path: Path) -> str:
    """The file's sha256 (cached per path, size and modification time in this process)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hash_cache:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def identity(cfg: Any, folder: Path | None, where: str) -> dict[str, str] | None:
    """What the pretrained weights add to a training's recipe: {URI: sha256 of its file} when
    a weights folder is set (None otherwise: the URI in the config is the identity). Refuses a
    missing file in one line naming ``where`` (the variant's config key); without a folder,
    only a checkpoint given as a file path is checked (the others download at train time)."""
    if folder is None:
        for _, uri in pretrained_uris(cfg):
            if "://" not in uri and not Path(uri).expanduser().is_file():
                raise UserError(f"{where}: pretrained checkpoint not found: {uri} (from "
                                f"{Path.cwd()}); put it there, or set the ablation key "
                                f"`weights:` to a folder holding {Path(uri).name}")
        return None
    out = {}
    for _, uri in pretrained_uris(cfg):
        try:
            out[uri] = sha256(locate(uri, folder))
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
    return out or None
