"""Model configs as plain dicts, for the grid: read after ``_base_`` (:func:`resolved_base`), a
dotted key read (:func:`get_key`, a one-line error naming the key) and a plain key as an axis
(:func:`key_axis`). mmengine's config reader only, no torch. A run's config is made by
mmengine's own merge (:mod:`pipelines.grid.render`)."""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any

from pipelines.axes import Axis
from pipelines.errors import UserError


def _load_plain(path: str) -> dict:
    """The config file read by mmengine (no custom imports), as a plain dict with the runner
    defaults filled in; a broken file is one line."""
    from pipelines.config import add_runner_defaults, quiet_import_warnings

    quiet_import_warnings()
    from mmengine.config import Config

    try:
        cfg = Config.fromfile(path, import_custom_modules=False)
    except Exception as err:  # mmengine raises many kinds for a broken config file
        raise UserError(f"cannot read config {path}: {type(err).__name__}: "
                        f"{' '.join(str(err).split())}") from None
    plain = cfg.to_dict()
    add_runner_defaults(plain)
    return plain


def resolved_base(path: str | Path, cache: dict | None = None) -> dict:
    """The config as a plain dict after ``_base_`` (a fresh copy each call).

    Args:
        cache: a dict kept for one expansion, so a config shared by variants is read once
            (never across expansions: an edited ``_base_`` file must be read again).
    """
    path = str(path)
    if cache is None:
        return _load_plain(path)
    if path not in cache:
        cache[path] = _load_plain(path)
    return copy.deepcopy(cache[path])


def get_key(cfg: dict, key: str, where: str) -> Any:
    """The value of a dotted key in a plain config; one-line error when it is absent (a reader:
    runs are made by :func:`pipelines.grid.render.merge_options`, mmengine's merge)."""
    from pipelines.config import check_key

    try:
        check_key(cfg, key)
    except UserError as err:
        raise UserError(f"{where}: {str(err).replace('--cfg-options key', 'config key')}") from None
    node = cfg
    for part in key.split("."):
        node = node[int(part)] if isinstance(node, (list, tuple)) else node[part]
    return node


#: config keys that count something (by their last part): an int axis over one of them takes
#: values >= 1 (``num_workers`` >= 0), so ``num_queries: [-3]`` is refused at expansion instead of
#: failing in the first job that builds the model
COUNT_KEY = re.compile(r"^(num_\w+|\w+_num|\w*batch_size|max_iters|max_epochs|\w*interval|"
                       r"embed_dims|\w+_channels|\w+_layers|depth)$")


def key_axis(key: str, current: Any) -> Axis:
    """A plain config key as an axis: its type is the type of the value it has now (an int key
    that counts something, :data:`COUNT_KEY`, with a positive value now: at least 1)."""
    if isinstance(current, bool):
        kind = "bool"
    elif isinstance(current, int):
        last = key.rsplit(".", 1)[-1]
        if COUNT_KEY.match(last) and current >= 1:
            return Axis(key, type="int", minimum=0 if last == "num_workers" else 1)
        kind = "int"
    elif isinstance(current, float):
        kind = "float"
    elif isinstance(current, str):
        kind = "str"
    else:
        kind = "any"
    return Axis(key, type=kind)


def normalise_path(path: str) -> str:
    """``./configs/x.py`` and ``configs//x.py`` -> ``configs/x.py`` (identity is not spelling)."""
    return Path(os.path.normpath(path)).as_posix()
