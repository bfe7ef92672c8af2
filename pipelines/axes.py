"""Ablation axes: config keys with lists of values, and the short aliases methods declare.

An axis is an mmengine config key (a dotted path such as ``model.decode_head.num_queries``) or a
short alias that a method declares once, next to its model code, in a module-level ``AXES`` dict
of its file under ``pipelines/models/``::

    AXES = {
        "schedule": Axis("model.decode_head.pixel_decoder.schedule", type="str",
                         pattern=r"^\\d+-\\d+-[1-9]\\d*$", convert="dash_ints", id="s{}"),
        "trc": Axis("model.decode_head.pixel_decoder.trc", type="bool", id="flag"),
    }

The grid reads those declarations **without importing the method module** (which would import
torch and mmdet into every Snakefile parse): :func:`method_axes` finds the ``AXES = {...}``
assignment with :mod:`ast` and evaluates that one expression with only :class:`Axis` in scope.
Which methods a model config uses is known the same way: :func:`registered_types` maps every
class decorated with ``@<REGISTRY>.register_module()`` under ``pipelines/`` to its file, and a
config uses a method when one of its ``type=`` values is a class of that method's file.

The same scan gives a run's *code identity* (:func:`code_hash`): the bytes of every project file
that defines a type the resolved config builds, plus the project modules those files import.
Editing ``pipelines/models/pro_scale.py`` therefore changes the recipe of exactly the runs whose
config builds a PRO-SCALE class; a CLI or analysis change changes no recipe. Left out: the
method declarations (labels, styles and hooks, in files of their own,
``pipelines/methods/<method>.py``: :mod:`pipelines.methods`) and this module itself
(:data:`NOT_CODE_IMPORTS`): neither is part of what a run trains.

Pure Python (no torch): the Snakefile imports it.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from pipelines.errors import UserError

PACKAGE = Path(__file__).resolve().parent
MODELS_DIR = PACKAGE / "models"
#: where the method declarations live, ``<method>.py`` each (:mod:`pipelines.methods`)
DECLARATIONS_DIR = PACKAGE / "methods"
TYPES = ("any", "int", "float", "bool", "str", "int_list")
CONVERTERS = ("dash_ints",)
# run-id characters (also folder names and Snakemake wildcards)
ID_CHARS = re.compile(r"^[A-Za-z0-9_.-]+$")
PLAIN_STR = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
RESERVED_STR = {"true", "false", "none", "inf", "nan"}
# what numbers and number lists look like once formatted: a string like that is hashed instead
NUMBERISH = re.compile(r"m?(\d|inf|nan)[0-9.em]*(xm?(\d|inf|nan)[0-9.em]*)*")
MAX_ID_LEN = 100


@dataclass(frozen=True)
class Axis:
    """One ablation axis: where its value goes and what a valid value is.

    Args:
        key: the mmengine config key (dotted path) the value is written to. For an axis of a
            later stage (``stage != "train"``) it names that stage's option instead.
        type: ``any``, ``int``, ``float`` (ints accepted), ``bool``, ``str`` or ``int_list``.
        minimum, maximum, exclusive_minimum, exclusive_maximum: numeric range (numbers, or every
            element of an ``int_list``).
        maximum_key, maximum_offset: an upper bound that depends on the model: the value (every
            element of an ``int_list``) must be at most the run's resolved value of the config
            key ``maximum_key`` plus ``maximum_offset`` (a ViT's ``cluster_layer`` at most
            ``model.backbone.num_layers - 2``). Checked by the grid, before any job. A tuple of
            keys: the first one the run's config sets (not None) is the bound; a list of ints
            there bounds by its sum (a PRO-SCALE ``schedule`` is a depth of ``sum(schedule)``
            layers).
        choices: the allowed values.
        pattern: regular expression a ``str`` value must match in full.
        convert: ``dash_ints`` writes ``"3-3-3"`` into the config as ``[3, 3, 3]``.
        id: how a value is written in a run id: a template with ``{}`` (``"beta{}"``),
            ``"flag"`` (the alias when true, ``no<alias>`` when false), or None (``<name>{}``).
        stage: ``train`` (part of the training recipe) or the later stage whose result alone
            depends on it (ECO-M2F's ``beta``: ``gate``), so that changing it never retrains.
        help: one line for the docs and ``python -m pipelines grid --axes`` (also what a
            ``pattern`` mismatch is explained by).
    """

    key: str
    type: str = "any"
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    maximum_key: str | tuple[str, ...] | None = None
    maximum_offset: int = 0
    choices: tuple | None = None
    pattern: str | None = None
    convert: str | None = None
    id: str | None = None
    stage: str = "train"
    help: str = ""

    def __post_init__(self):
        if self.type not in TYPES:
            raise ValueError(f"Axis({self.key!r}): type {self.type!r} not in {TYPES}")
        if self.convert is not None and self.convert not in CONVERTERS:
            raise ValueError(f"Axis({self.key!r}): convert {self.convert!r} not in {CONVERTERS}")
        if self.id not in (None, "flag") and "{}" not in self.id:
            raise ValueError(f"Axis({self.key!r}): id {self.id!r} needs '{{}}' or 'flag'")
        if self.id == "flag" and self.type != "bool":
            raise ValueError(f"Axis({self.key!r}): id 'flag' is for bool axes")

    # ------------------------------------------------------------------ values
    def check(self, value: Any, where: str) -> Any:
        """The value if this axis accepts it, else a one-line :class:`UserError` naming ``where``."""
        kind = self.type
        ok = {
            "any": lambda v: True,
            "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
            "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            "bool": lambda v: isinstance(v, bool),
            "str": lambda v: isinstance(v, str),
            "int_list": lambda v: isinstance(v, (list, tuple)) and all(
                isinstance(x, int) and not isinstance(x, bool) for x in v),
        }[kind](value)
        if not ok:
            raise UserError(f"{where}: expected {_type_words(kind)}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise UserError(f"{where}: {value!r} is not one of {list(self.choices)}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            why = f" ({self.help})" if self.help else ""
            raise UserError(f"{where}: {value!r} does not match {self.pattern!r}{why}")
        numbers = value if kind == "int_list" else [value] if kind in ("int", "float") else []
        for x in numbers:
            if isinstance(x, float) and not math.isfinite(x):
                raise UserError(f"{where}: {value!r} is not a finite number")
            if ((self.minimum is not None and x < self.minimum)
                    or (self.maximum is not None and x > self.maximum)
                    or (self.exclusive_minimum is not None and x <= self.exclusive_minimum)
                    or (self.exclusive_maximum is not None and x >= self.exclusive_maximum)):
                raise UserError(f"{where}: {value!r} out of range {self.range_text()}")
        return list(value) if kind == "int_list" else value

    def check_bound(self, value: Any, bound: Any, where: str, bound_key: str | None = None) -> None:
        """The model-dependent bound (``maximum_key``, resolved to ``bound``, read from
        ``bound_key``): one-line :class:`UserError` naming ``where`` when ``value`` is beyond it."""
        if bound_key is None and isinstance(self.maximum_key, str):
            bound_key = self.maximum_key
        if isinstance(bound, (list, tuple)) and bound_key:
            bound_key = f"sum({bound_key})"
        if isinstance(bound, (list, tuple)) and bound and all(
                isinstance(x, int) and not isinstance(x, bool) for x in bound):
            bound = sum(bound)
        if self.maximum_key is None or isinstance(bound, bool) or not isinstance(bound, int):
            return
        limit = bound + self.maximum_offset
        numbers = value if self.type == "int_list" else [value]
        over = [x for x in numbers if isinstance(x, (int, float)) and x > limit]
        if over:
            offset = f" {'+' if self.maximum_offset > 0 else '-'} {abs(self.maximum_offset)}" \
                if self.maximum_offset else ""
            raise UserError(f"{where}: {value!r} out of range: at most {bound_key or 'the bound'}"
                            f"{offset} = {limit} for this model")

    def range_text(self) -> str:
        lo = ("(" + _num(self.exclusive_minimum) if self.exclusive_minimum is not None
              else "[" + _num(self.minimum) if self.minimum is not None else "(-inf")
        hi = (_num(self.exclusive_maximum) + ")" if self.exclusive_maximum is not None
              else _num(self.maximum) + "]" if self.maximum is not None else "inf)")
        return f"{lo}, {hi}"

    def config_value(self, value: Any) -> Any:
        """What goes into the config: ``"3-3-3"`` -> ``[3, 3, 3]`` for ``dash_ints``."""
        if self.convert == "dash_ints":
            return [int(p) for p in str(value).split("-")]
        return value


def _num(x) -> str:
    return format_number(x)


def _type_words(kind: str) -> str:
    return {"any": "a value", "int": "an integer", "float": "a number", "bool": "true or false",
            "str": "a string", "int_list": "a list of integers"}[kind]


# ----------------------------------------------------------------------------- id formatting
def format_number(value: float | int) -> str:
    """Shortest exact text of a number, with ``-`` written ``m`` (ids use ``-`` between parts):
    ``0.0005``, ``1em05``, ``m2``, ``10``; an int and the equal float differ (``1`` vs ``1.0``)."""
    text = str(int(value)) if isinstance(value, int) else repr(float(value))
    return text.replace("-", "m").replace("+", "")


def format_value(value: Any) -> str:
    """Injective text of an axis value for a run id (no ``-`` in it).

    Numbers as :func:`format_number`; lists of numbers joined by ``x`` (``3x3x3``); ``true``,
    ``false``, ``none``; a plain identifier-like string as itself; anything else (a string that
    reads like a number or keyword, has other characters, or starts with ``_h``; a dict; a
    mixed list) as ``_h`` + 8 hex digits of its JSON.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, (int, float)):
        return format_number(value)
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        return "x".join(format_number(x) for x in value)
    if (isinstance(value, str) and PLAIN_STR.match(value) and value.lower() not in RESERVED_STR
            and not value.startswith("_h") and not NUMBERISH.fullmatch(value)):
        return value
    blob = json.dumps(value, sort_keys=True, default=str)
    return "_h" + hashlib.sha256(blob.encode()).hexdigest()[:8]


def short_name(key: str) -> str:
    """``model.decode_head.num_queries`` -> ``num_queries`` (the id prefix of a config-key axis)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", key.split(".")[-1]) or "axis"


def id_part(name: str, axis: Axis | None, value: Any, prefix: str) -> str:
    """One ``-``-separated part of a run id."""
    if axis is not None and axis.id == "flag":
        return name if value else "no" + name
    if axis is not None and axis.id is not None:
        text = value if isinstance(value, str) and ID_CHARS.match(value) else format_value(value)
        return axis.id.replace("{}", text)
    return prefix + format_value(value)


def cap_id(text: str, identity: str) -> str:
    """An over-long id -> a readable prefix plus 10 hex digits of the setting's identity."""
    if len(text) <= MAX_ID_LEN:
        return text
    digest = hashlib.sha256(identity.encode()).hexdigest()[:10]
    return text[:MAX_ID_LEN - 12].rstrip("-.") + "-" + digest


# ----------------------------------------------------------------------------- discovery
#: the registry of method declarations (:mod:`pipelines.methods`): its classes are no model types
METHOD_REGISTRY = "METHODS"


def decorated_by(node: ast.ClassDef, registry: str | None = None) -> bool:
    """Whether a class statement is decorated with ``@<registry>.register_module(...)`` (any
    registry when ``registry`` is None)."""
    for deco in node.decorator_list:
        call = deco.func if isinstance(deco, ast.Call) else deco
        if isinstance(call, ast.Attribute) and call.attr == "register_module" and (
                registry is None or (isinstance(call.value, ast.Name)
                                     and call.value.id == registry)):
            return True
    return False


def _register_decorated(node: ast.ClassDef) -> bool:
    """A model type: registered in a model registry (not a method declaration)."""
    return decorated_by(node) and not decorated_by(node, METHOD_REGISTRY)


@functools.lru_cache(maxsize=None)
def _parsed(path: Path, mtime_ns: int) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def parsed(path: Path) -> ast.Module:
    """The parsed module of ``path`` (cached while the file is unchanged)."""
    return _parsed(path, path.stat().st_mtime_ns)


_ast = parsed


def _project_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "benchmarks" not in p.parts)


def registered_types() -> dict[str, Path]:
    """Class name -> project file, for every class registered with ``register_module()``."""
    out: dict[str, Path] = {}
    for path in _project_files():
        for node in _ast(path).body:
            if isinstance(node, ast.ClassDef) and _register_decorated(node):
                out[node.name] = path
    return out


def method_files() -> dict[str, Path]:
    """Method name -> file, for every ``pipelines/models/<method>.py`` with an ``AXES`` dict or
    a method declaration (``pipelines/methods/<method>.py``, :mod:`pipelines.methods`)."""
    return {p.stem: p for p in sorted(MODELS_DIR.glob("*.py")) if not p.stem.startswith("_")
            and (_axes_node(p) is not None or (DECLARATIONS_DIR / p.name).is_file())}


def _axes_node(path: Path) -> ast.expr | None:
    for node in _ast(path).body:
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == "AXES" for t in targets) and node.value:
            return node.value
    return None


def method_axes(method: str) -> dict[str, Axis]:
    """The aliases a method declares (its ``AXES``), read without importing its module."""
    path = MODELS_DIR / f"{method}.py"
    node = _axes_node(path) if path.is_file() else None
    if node is None:
        return {}
    try:
        code = compile(ast.Expression(node), str(path), "eval")
        axes = eval(code, {"__builtins__": {}, "Axis": Axis})  # noqa: S307 - literal + Axis only
    except Exception as err:  # a malformed declaration is the method author's bug: say where
        raise UserError(f"{path}: cannot read its AXES: {type(err).__name__}: {err}") from None
    if not isinstance(axes, dict) or not all(isinstance(a, Axis) for a in axes.values()):
        raise UserError(f"{path}: AXES must be a dict of name -> Axis(...)")
    return axes


def declared_axes() -> dict[str, Axis]:
    """Every method's declared axes by alias, in file order then each ``AXES`` order."""
    out: dict[str, Axis] = {}
    for method in method_files():
        out.update(method_axes(method))
    return out


def config_types(cfg: Any) -> set[str]:
    """Every ``type`` string in a (plain) config, scope prefix removed (``mmdet.X`` -> ``X``)."""
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            t = node.get("type")
            if isinstance(t, str):
                found.add(t.rsplit(".", 1)[-1])
            for v in node.values():
                walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v)

    walk(cfg)
    return found


def methods_of_config(cfg: Mapping) -> list[str]:
    """Methods (``pipelines/models/<method>.py`` with AXES) whose classes the config builds."""
    types = registered_types()
    used_files = {types[t] for t in config_types(cfg) if t in types}
    return [m for m, path in method_files().items() if path in used_files]


#: imports that are no part of what a run trains: the plug-in aggregator, the method
#: declarations' registry (labels, styles and hooks) and this module (a model file imports it
#: for :class:`Axis`, whose effect on a run is its resolved config, hashed on its own)
NOT_CODE_IMPORTS = ("pipelines.registry", "pipelines.methods", "pipelines.axes")


def _imported_project_files(path: Path) -> frozenset[Path]:
    """Project modules imported by ``path`` (:data:`NOT_CODE_IMPORTS` left out)."""
    return _imports(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _imports(path: Path, mtime_ns: int) -> frozenset[Path]:
    out: set[Path] = set()
    for node in ast.walk(_ast(path)):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and node.module
                 and node.level == 0 else [])
        for name in names:
            if not name.startswith("pipelines.") or name in NOT_CODE_IMPORTS:
                continue
            rel = Path(*name.split(".")[1:])
            for cand in (PACKAGE / rel.with_suffix(".py"), PACKAGE / rel / "__init__.py"):
                if cand.is_file():
                    out.add(cand)
    return frozenset(out)


def code_files(cfg: Mapping) -> list[Path]:
    """Project files a config's model, dataset, metric and hooks come from (with their imports)."""
    return type_code_files(config_types(cfg))


def type_code_files(names: Iterable[str]) -> list[Path]:
    """Project files the classes ``names`` (a config's ``type`` names, :func:`config_types`)
    come from, with their imports."""
    types = registered_types()
    todo = {types[t] for t in names if t in types}
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        todo |= _imported_project_files(path) - seen
    return sorted(seen)


def code_hash(files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
