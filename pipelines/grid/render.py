"""One rendering of a run's config: the variant's config with the run's options merged in by
mmengine's own merge (:func:`merge_options`, what ``Config.merge_from_dict`` does), written out as
a plain mmengine config file (:class:`RenderedBase`, no ``_base_``, every value literal).

The grid renders each run once; the recipe is the hash of that text (plus code and data), the
file is written beside the run's ``run.json`` (:func:`write_configs`), every stage reads it, and
MLflow keeps it byte for byte. Reading it back (``Config.fromfile``) gives the same dict that was
rendered, so what trains is what was hashed.
"""
from __future__ import annotations

import copy
import hashlib
import keyword
import math
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipelines.config import DATA_ROOT_MASK, DATALOADERS
from pipelines.errors import UserError

#: the first lines of every rendered config (fixed text: part of the recipe's hash)
HEADER = ("# One run's whole config, rendered by the pipeline: the\n"
          "# model config with the run's settings merged in, no _base_. Stages read it with\n"
          "# --data-root (the dataset folder is not part of a recipe).\n")
#: one line holds a list or tuple of plain values up to this many characters
_ONE_LINE = 76


def nested_options(options: Mapping[str, Any]) -> dict:
    """``{'a.b': 1}`` -> ``{'a': {'b': 1}}`` as ``merge_from_dict`` builds it (values copied: the
    merge pops ``_delete_`` from the dicts it is given)."""
    out: dict = {}
    for key, value in options.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = copy.deepcopy(value) if isinstance(value, (dict, list)) else value
    return out


def merge_options(base: dict, options: Mapping[str, Any], where: str = "config") -> dict:
    """``base`` with ``options`` (dotted key -> value) merged in by mmengine's own merge: what
    ``Config.merge_from_dict(options, allow_list_keys=True)`` gives (a dict merged into a dict,
    ``_delete_`` honoured, ``pipeline.2.scale`` indexing a list). ``base`` is not changed; the
    result shares every container the options do not reach with it."""
    from mmengine.config import Config

    try:
        return Config._merge_a_into_b(nested_options(options), base, allow_list_keys=True)
    except AttributeError:  # mmengine's merge replaces a list element only through its keys
        raise UserError(f"{where}: cannot merge {', '.join(options)} into the config: a list "
                        f"element is changed by a key inside it (pipeline.2.scale), a whole "
                        f"list by its own key") from None
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{where}: cannot merge the settings into the config: "
                        f"{' '.join(str(err).split())}") from None


def mask_data_root(cfg: dict) -> dict:
    """The dataset folder of every dataloader replaced by :data:`DATA_ROOT_MASK` (and the
    top-level ``data_root`` variable dropped): a recipe does not depend on where the data is."""
    masks = {f"{loader}.dataset.data_root": DATA_ROOT_MASK for loader in DATALOADERS
             if isinstance((cfg.get(loader) or {}).get("dataset"), dict)
             and "data_root" in cfg[loader]["dataset"]}
    out = merge_options(cfg, masks) if masks else dict(cfg)
    out.pop("data_root", None)
    return out


def _container_ids(value: Any) -> set[int]:
    ids: set[int] = set()
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, (dict, list, tuple)) and id(node) not in ids:
            ids.add(id(node))
            stack.extend(node.values() if isinstance(node, dict) else node)
    return ids


def _leaf(value: Any, where: str) -> str:
    if value is None or isinstance(value, (bool, int, str)):
        return repr(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else f"float({str(value)!r})"
    raise UserError(f"{where}: a {type(value).__name__} value cannot be written into a config "
                    f"file (give it as a string, number, list or dict)")


def _keyword_ok(key: Any) -> bool:
    return isinstance(key, str) and key.isidentifier() and not keyword.iskeyword(key)


class RenderedBase:
    """A variant's config and the text of each of its containers, known once: a run's config
    (:func:`merge_options` of the variant's) differs from it only along the keys it sets, so
    rendering a run walks those paths and reuses the rest. ``plain`` must not change while this
    object is in use."""

    def __init__(self, plain: dict) -> None:
        self.plain = plain
        self._ids = _container_ids(plain)
        self._text: dict[tuple[int, int], str] = {}
        self._types: dict[int, frozenset[str]] = {}

    def render(self, cfg: Mapping[str, Any]) -> str:
        """The config file's text: :data:`HEADER`, then ``name = value`` per top-level key."""
        lines = [HEADER]
        for key, value in cfg.items():
            if not _keyword_ok(key):
                raise UserError(f"config key {key!r}: not a Python name, cannot be a top-level "
                                f"key of a config file")
            lines.append(f"{key} = {self._text_of(value, 0, key)}\n")
        return "".join(lines)

    def _text_of(self, value: Any, indent: int, where: str) -> str:
        memo = (id(value), indent)
        if memo in self._text:
            return self._text[memo]
        pad, end = "    " * (indent + 1), "    " * indent
        if isinstance(value, dict):
            if not value:
                text = "dict()"
            elif all(_keyword_ok(k) for k in value) and not any(
                    isinstance(v, (dict, list, tuple)) for v in value.values()) and len(
                    flat := ", ".join(f"{k}={_leaf(v, f'{where}.{k}')}"
                                      for k, v in value.items())) <= _ONE_LINE:
                text = f"dict({flat})"
            elif all(_keyword_ok(k) for k in value):
                text = "dict(\n" + "".join(
                    f"{pad}{k}={self._text_of(v, indent + 1, f'{where}.{k}')},\n"
                    for k, v in value.items()) + end + ")"
            else:
                text = "{\n" + "".join(
                    f"{pad}{_leaf(k, where)}: {self._text_of(v, indent + 1, f'{where}.{k}')},\n"
                    for k, v in value.items()) + end + "}"
        elif isinstance(value, (list, tuple)):
            open_, close = ("[", "]") if isinstance(value, list) else ("(", ")")
            items = [self._text_of(v, indent + 1, f"{where}.{i}") for i, v in enumerate(value)]
            flat = ", ".join(items)
            if isinstance(value, tuple) and len(items) == 1:
                flat += ","
            if not any(isinstance(v, (dict, list, tuple)) for v in value) \
                    and len(flat) <= _ONE_LINE:
                text = open_ + flat + close
            else:
                text = open_ + "\n" + "".join(f"{pad}{t},\n" for t in items) + end + close
        else:
            return _leaf(value, where)
        if id(value) in self._ids:
            self._text[memo] = text
        return text

    def types(self, value: Any) -> frozenset[str]:
        """Every ``type`` string under ``value`` (scope prefix removed): the code a config
        builds."""
        key = id(value)
        if key in self._types:
            return self._types[key]
        found: set[str] = set()
        if isinstance(value, dict):
            t = value.get("type")
            if isinstance(t, str):
                found.add(t.rsplit(".", 1)[-1])
            children: Iterable = value.values()
        else:
            children = value if isinstance(value, (list, tuple)) else ()
        for child in children:
            if isinstance(child, (dict, list, tuple)):
                found |= self.types(child)
        out = frozenset(found)
        if key in self._ids:
            self._types[key] = out
        return out


def text_digest(text: str) -> str:
    """The sha256 of a rendered config (what a recipe hashes)."""
    return hashlib.sha256(text.encode()).hexdigest()


def write_configs(texts: Iterable[tuple[Path, str]], replace: bool = False) -> int:
    """Write each rendered config where it is missing (a content-keyed path: one that exists
    holds this text), atomically; ``replace``: every one (a path not keyed by content). Returns
    how many were written."""
    written = 0
    for path, text in texts:
        path = Path(path)
        if path.is_file() and not replace:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
        written += 1
    return written


#: variant configs read in this process, by path (:func:`render_run`)
_BASES: dict[str, RenderedBase] = {}


def remember_base(path: str, base: RenderedBase) -> None:
    """Keep a variant's config read by the expansion for :func:`render_run` in this process."""
    _BASES[path] = base


def run_config(base: dict, options: Mapping[str, Any], where: str = "config") -> dict:
    """A run's config: ``options`` merged into its variant's, the dataset folder masked."""
    return mask_data_root(merge_options(base, options, where))


def render_run(run, repo: str | Path = ".") -> str:
    """A run's rendered config (:class:`pipelines.grid.run.Run`): its variant's config with its
    options, rendered as the expansion did, checked against the run's ``config_sha`` (a model
    config edited since the expansion is one line, not a config that differs from its recipe)."""
    from pipelines.grid.plain_config import resolved_base

    path = run.config if Path(run.config).is_absolute() else str(Path(repo) / run.config)
    base = _BASES.get(path)
    if base is None:
        base = _BASES[path] = RenderedBase(resolved_base(path))
    text = base.render(run_config(base.plain, run.options, f"run {run.run_id}"))
    if text_digest(text) != run.config_sha:
        raise UserError(f"run {run.run_id}: its model config {run.config} (or a file it "
                        f"reads) changed since the grid was expanded; run again")
    return text


def load_rendered(text: str):
    """A rendered config's text as an mmengine Config (what a stage reading the file gets)."""
    from pipelines.config import load_config

    with tempfile.TemporaryDirectory(prefix="rendered-") as folder:
        path = Path(folder) / "config.py"
        path.write_text(text)
        return load_config(path)
