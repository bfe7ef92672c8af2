"""Model configs as plain dicts, for the grid: read after ``_base_`` (:func:`resolved_base`), a
dotted key read and set (:func:`get_key`, :func:`set_key`, one-line errors naming the key) and a
plain key as an axis (:func:`key_axis`). mmengine's config reader only, no torch."""
from __future__ import annotations

import copy
import json
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

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


def _walk(cfg: Any, key: str, where: str):
    """(parent, last part) of a dotted key in a plain config; one-line error when it is absent."""
    from pipelines.config import check_key

    try:
        check_key(cfg, key)
    except UserError as err:
        raise UserError(f"{where}: {str(err).replace('--cfg-options key', 'config key')}") from None
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node, parts[-1]


def get_key(cfg: dict, key: str, where: str) -> Any:
    node, last = _walk(cfg, key, where)
    return node[int(last)] if isinstance(node, list) else node[last]


def set_key(cfg: dict, key: str, value: Any, where: str,
            owned: dict[int, Any] | None = None) -> None:
    """Set a dotted key in place (a dict given to a dict key is merged into it, as mmengine's
    ``--cfg-options`` does).

    Args:
        owned: for a config that shares its containers with another one (a run's config made
            from its variant's, :func:`share_plain`): the containers that belong to ``cfg``
            alone, ``id(copy) -> the shared container it copies``. Every container on the key's
            path that is not among them is copied (one level) before it changes, and added; the
            shared ones are never written.
    """
    if owned is None:
        node, last = _walk(cfg, key, where)
    else:
        _walk(cfg, key, where)  # the same check and one-line error
        node = cfg
        parts = key.split(".")
        for part in parts[:-1]:
            index = int(part) if isinstance(node, list) else part
            node[index] = _own(node[index], owned)
            node = node[index]
        last = parts[-1]
        if not isinstance(node, list) and isinstance(node.get(last), dict) \
                and isinstance(value, dict):
            node[last] = _own(node[last], owned)
    if isinstance(node, list):
        node[int(last)] = value
    elif isinstance(node.get(last), dict) and isinstance(value, dict):
        node[last].update(value)  # mmengine merges a dict into a dict
    else:
        node[last] = copy.deepcopy(value)


def _own(node: Any, owned: dict[int, Any]) -> Any:
    """``node`` itself when it is ``owned`` (or no container), else a one-level copy, owned."""
    if id(node) in owned or not isinstance(node, (dict, list)):
        return node
    mine = copy.copy(node)
    owned[id(mine)] = node
    return mine


def share_plain(cfg: dict) -> tuple[dict, dict[int, Any]]:
    """A config that shares every container with ``cfg`` but its top level, and the containers
    it owns (give both to :func:`set_key`, which copies what it changes). Cheap where
    :func:`copy_plain` copies the whole config; ``cfg`` must then stay unchanged while the copy
    is in use."""
    top = copy.copy(cfg)
    return top, {id(top): cfg}


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


def copy_plain(cfg: dict) -> dict:
    """A deep copy of a plain config (pickle's C copy, ~10x faster than ``copy.deepcopy``)."""
    try:
        return pickle.loads(pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # something pickle cannot copy (a lambda): the general copy
        return copy.deepcopy(cfg)


class SharedBase:
    """A variant's config and what is worth knowing once about each of its containers, for the
    run configs made from it with :func:`share_plain` and :func:`set_key`: their canonical JSON
    text (:meth:`canonical`, the same text as :func:`pipelines.grid.run.canonical`) and the
    ``type`` names they build (:meth:`types`, as :func:`pipelines.axes.config_types`). A run's
    config differs from its variant's only along the keys it sets, so each run walks those paths
    and reuses the rest. ``plain`` must not change while this object is in use."""

    def __init__(self, plain: dict) -> None:
        self.plain = plain
        self._ids: set[int] = set()
        stack = [plain]
        while stack:
            node = stack.pop()
            if isinstance(node, (dict, list, tuple)) and id(node) not in self._ids:
                self._ids.add(id(node))
                stack.extend(node.values() if isinstance(node, dict) else node)
        self._text: dict[int, str] = {}
        self._items: dict[int, dict[str, str]] = {}
        self._types: dict[int, frozenset[str]] = {}

    def canonical(self, value: Any, owned: Mapping[int, Any] | None = None) -> str:
        """``json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)``, for a
        value holding a run's config (``owned``: its own containers, from :func:`share_plain`)."""
        key = id(value)
        if key in self._text:
            return self._text[key]
        if isinstance(value, dict) and all(type(k) is str for k in value):
            # an owned copy of a shared dict: the items it did not change are the shared one's
            shared = self._dict_items(owned[key]) if owned and key in owned else None
            original = owned[key] if shared is not None else None
            text = "{" + ",".join(
                shared[k] if shared is not None and k in original and original[k] is value[k]
                else _dumps(k) + ":" + self.canonical(value[k], owned)
                for k in sorted(value)) + "}"
        elif isinstance(value, (list, tuple)):
            text = "[" + ",".join(self.canonical(v, owned) for v in value) + "]"
        else:  # a leaf, or a dict whose keys json converts itself
            text = _dumps(value)
        if key in self._ids:
            self._text[key] = text
        return text

    def _dict_items(self, shared: dict) -> dict[str, str] | None:
        """``key -> '"key":<text of its value>'`` of a shared dict with text keys."""
        key = id(shared)
        if key not in self._items:
            if key not in self._ids or not all(type(k) is str for k in shared):
                return None
            self._items[key] = {k: _dumps(k) + ":" + self.canonical(v) for k, v in shared.items()}
        return self._items[key]

    def types(self, value: Any) -> frozenset[str]:
        """Every ``type`` string under ``value``, scope prefix removed."""
        key = id(value)
        if key in self._types:
            return self._types[key]
        found: set[str] = set()
        if isinstance(value, dict):
            t = value.get("type")
            if isinstance(t, str):
                found.add(t.rsplit(".", 1)[-1])
            children = value.values()
        else:
            children = value if isinstance(value, (list, tuple)) else ()
        for child in children:
            if id(child) in self._types:
                found |= self._types[id(child)]
            elif isinstance(child, (dict, list, tuple)):
                found |= self.types(child)
        out = frozenset(found)
        if key in self._ids:
            self._types[key] = out
        return out


#: ``json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)`` (one encoder, the
#: same text: json.dumps builds this encoder on every call)
_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str).encode
