"""The methods the pipeline ablates, found through one mmengine ``Registry``: :data:`METHODS`.

A method is two files of the same name: its model file ``pipelines/models/<name>.py`` (the model
code and its ``AXES``) and its declaration ``pipelines/methods/<name>.py`` (a module of this
package): what the rest of the pipeline needs to know about it, as one small registered class
(OpenMMLab's plug-in shape: ``@REGISTRY.register_module()`` in the file that owns the thing,
nothing elsewhere naming it)::

    from pipelines.methods import METHODS, Method


    @METHODS.register_module(name="token_cluster")   # the model file's name
    class TokenClusterMethod(Method):
        label, color, marker = "AiluRus", "#2ca02c", "D"  # its name and series style
        rank = 30                                    # where it sorts among methods
        parts = {"cluster": "backbone.clusterer"}    # GFLOPs parts it adds: name -> module path
        figures = "pipelines.reports.figures_token_cluster:FIGURES"   # {name: fn(analysis, plt)}

Every field is optional (:class:`Method` documents them); hooks are ``"module:attribute"``
strings, imported only by the stage that calls them.

**Declarations are light.** Importing a model file imports torch, mmcv and mmdet (seconds, half a
gigabyte); the Snakefile, ``ingest``, the naming contract and the analysis must not. So a
declaration is a file of its own that imports no model code, and the registry's location is this
package: :meth:`MethodRegistry.import_from_location` imports each of its modules (found with
:mod:`pkgutil`, as ``pipelines/models/__init__.py`` finds the model files; ``_``-prefixed ones
are left alone), an ordinary import whose decorator registers the class. It refuses, in one line
each (a :class:`~pipelines.errors.UserError` naming the file): a name other than the file's stem,
a declaration without its model file, a declaration outside this package (one left in a model
file), a file here that declares no method or that cannot be imported, one whose import pulls in
torch, mmcv, mmdet or mmseg, and a file name taken by one of this package's own names
(``figures``, ``parts``, ...).

A declaration is not part of what a run trains: :func:`pipelines.axes.code_hash` hashes the
model files a config builds and their project imports, never this package, so changing a label
or a colour never changes a recipe.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from mmengine.registry import Registry

from pipelines import axes as ax
from pipelines.errors import UserError

#: where declarations live: this package (the registry's location, imported module by module)
LOCATION = __name__
REGISTRY_NAME = "METHODS"
#: what importing a declaration must not import (the Snakefile and the analysis import them all)
HEAVY_MODULES = ("torch", "mmcv", "mmdet", "mmseg")


class Method:
    """A method's declaration: subclass it in ``pipelines/methods/<name>.py`` and register the
    subclass under ``<name>``, the stem of the method's model file.

    Attributes:
        name: the method's name: its model file's stem (``pro_scale``), what runs record in
            their ``pipelines.methods`` tag. Set by the registry from
            ``register_module(name=...)``, which must equal the declaration file's stem.
        label: what figures, tables and series names call it (default: ``name``).
        color, marker: its series' matplotlib colour and marker when a variant builds this
            method alone (None: a spare style, handed out in series order).
        rank: sort key among methods (then by name): series order, and the order of the parts
            of a combined label (``PRO-SCALE + ECO-M2F``).
        parts: GFLOPs parts the method adds to the ``flops`` stage: part name -> module path
            inside the segmentor (``{"cluster": "backbone.clusterer"}``); each becomes a
            ``gflops_<part>`` metric (:data:`pipelines.contract.GFLOPS`), 0 for other models.
        figures: ``"module:attribute"`` of a ``{figure name: fn(analysis, plt)}`` dict: figures
            of its own, drawn by ``python -m pipelines figures`` after the general ones (a
            function returns a Figure or a :class:`pipelines.reports.figure_base.Skip`).
        report: ``"module:attribute"`` of ``fn(run_id, metrics_json_path) -> list of markdown
            lines``: its runs' part of a section of its own in the ablation report (called for
            every run whose methods include this one; an empty list adds nothing).
        report_title: that section's heading (default: the label).
        cost_model: ``"module:attribute"`` of ``fn(pixel_decoder_cfg, image_hw, count_sampling)
            -> dict`` with at least ``encoder`` and ``pixel_decoder`` FLOPs: the analytic count
            of a pixel decoder class of its model file (:func:`pipelines.stages.cost_model.
            pixel_decoder_flops_from_cfg` otherwise).
        finished_by: a later stage (an :class:`~pipelines.axes.Axis` ``stage``) that completes a
            run's model when the run has an axis of that stage (ECO-M2F's ``gate``): such a run
            is not timed by the benchmark of the trained model, whose numbers it never has.
        not_timed: why, in the benchmark's record of such a run (default: a sentence naming
            the stage).
        axis_labels: how a figure's run label writes the value of one of its axes: alias ->
            ``str.format`` template (``{"beta": "β={:g}"}``; a ``float`` axis' value is passed
            as a number). Undeclared: ``name=value``, a ``flag`` axis by its name when true.
        recorded_as: variant names that meant this method in tables recorded before runs carried
            ``pipelines.methods`` (only read for such tables).
    """

    name: str = ""
    label: str = ""
    color: Optional[str] = None
    marker: Optional[str] = None
    rank: int = 100
    parts: Mapping[str, str] = {}
    figures: Optional[str] = None
    report: Optional[str] = None
    report_title: str = ""
    cost_model: Optional[str] = None
    finished_by: Optional[str] = None
    not_timed: str = ""
    axis_labels: Mapping[str, str] = {}
    recorded_as: tuple = ()

    @classmethod
    def title(cls) -> str:
        """The label, or the name when none is declared."""
        return cls.label or cls.name

    @classmethod
    def style(cls) -> Optional[tuple]:
        """``(colour, marker)`` when both are declared, else None."""
        return (cls.color, cls.marker) if cls.color and cls.marker else None

    @classmethod
    def axes(cls) -> Dict[str, ax.Axis]:
        """The axes its model file declares (``AXES``: :func:`pipelines.axes.method_axes`)."""
        return ax.method_axes(cls.name) if cls.name in ax.method_files() else {}


class MethodRegistry(Registry):
    """mmengine's :class:`~mmengine.registry.Registry` whose locations are packages of
    declaration files, each imported on the first lookup (see the module doc), with the rules
    of a declaration checked as it registers and as its file is imported."""

    def import_from_location(self) -> None:
        if self._imported:
            return
        self._imported = True  # set first: a declaration importing the registry sees no loop
        try:
            for location in self._locations:
                self._import_declarations(location)
        except BaseException:
            self._imported = False  # the next lookup says the same again
            raise

    def _import_declarations(self, location: str) -> None:
        package = importlib.import_module(location)
        folder = location.replace(".", "/")
        for found in pkgutil.iter_modules(package.__path__):
            name, module = found.name, f"{location}.{found.name}"
            if name.startswith("_"):
                continue
            where = f"{folder}/{name}.py"
            taken = getattr(package, name, None)
            if taken is not None and not (isinstance(taken, ModuleType)
                                          and taken.__name__ == module):
                raise UserError(f"{where}: {name!r} is already a name of {location} (the "
                                f"registry's own); name the method and its model file otherwise")
            light = [m for m in HEAVY_MODULES if m not in sys.modules]
            try:
                importlib.import_module(module)
            except UserError:
                raise
            except Exception as err:  # the declaration's author's bug: say where, in one line
                raise UserError(f"{where}: cannot import it: {type(err).__name__}: {err}") \
                    from err
            heavy = [m for m in light if m in sys.modules]
            if heavy:
                raise UserError(f"{where}: importing it imports {', '.join(heavy)}; a declaration "
                                f"imports no model code (the Snakefile and the analysis read it)")
            if name not in self._module_dict:
                raise UserError(f"{where}: declares no method (expected one "
                                f"@{REGISTRY_NAME}.register_module(name={name!r}) class of "
                                f"Method)")

    def _register_module(self, module, module_name=None, force: bool = False) -> None:
        if isinstance(module, type) and issubclass(module, Method):
            home, _, stem = module.__module__.rpartition(".")
            what = f"{module.__module__}.{module.__qualname__}"
            if home not in self._locations:
                folder = self._locations[0].replace(".", "/") if self._locations else "?"
                own = module_name if isinstance(module_name, str) else stem
                raise UserError(f"{what}: a method declaration lives in a file of its own, "
                                f"{folder}/{own}.py, not in {module.__module__}")
            if module_name != stem:
                raise UserError(f"{what}: register it as @{REGISTRY_NAME}.register_module("
                                f"name={stem!r}), its file's name (got {module_name!r})")
            model = ax.MODELS_DIR / f"{stem}.py"
            if not model.is_file():
                raise UserError(f"{what}: method {stem!r} has no model file {_shown(model)} (a "
                                f"declaration is named after its method's model file)")
            module.name = stem
        super()._register_module(module, module_name, force)


def _shown(path: Path) -> str:
    """``path`` relative to the checkout when it lies in it."""
    try:
        return str(path.relative_to(ax.PACKAGE.parent))
    except ValueError:
        return str(path)


METHODS = MethodRegistry("method", scope="pipelines", locations=[LOCATION])


# ----------------------------------------------------------------------------- lookups
def methods() -> Dict[str, type]:
    """Every declared method, name -> declaration, by rank then name."""
    METHODS.import_from_location()
    found = dict(METHODS.module_dict)
    return dict(sorted(found.items(), key=lambda kv: (kv[1].rank, kv[0])))


def get(name: str) -> Optional[type]:
    """The declaration of method ``name`` (a model file stem), or None when none is declared."""
    return methods().get(name)


def label(name: str) -> str:
    """A method's label (an undeclared name stands for itself)."""
    found = get(name)
    return found.title() if found is not None else name


def axis_label(name: str, value: Any) -> Optional[str]:
    """A run label's text of axis ``name`` at ``value`` when a method declares one
    (``axis_labels``), else None."""
    for method in methods().values():
        template = dict(method.axis_labels).get(name)
        if template is not None:
            axis = method.axes().get(name)
            return template.format(float(value) if axis is not None and axis.type == "float"
                                   else value)
    return None


def order() -> Dict[str, int]:
    """Rank of each method: the declared ones (by rank, name), then the other method files."""
    return {m: i for i, m in enumerate(dict.fromkeys([*methods(), *ax.method_files()]))}


def recorded_before_tag() -> Dict[str, tuple]:
    """Variant name -> methods, for tables recorded before runs carried ``pipelines.methods``
    (each method's ``recorded_as``; a variant name no method claims: no entry)."""
    out: Dict[str, tuple] = {}
    for name, method in methods().items():
        for variant in method.recorded_as:
            out[variant] = (*out.get(variant, ()), name)
    return out


def parts() -> Dict[str, str]:
    """The GFLOPs parts the methods add, part -> module path, in method order."""
    out: Dict[str, str] = {}
    for name, method in methods().items():
        for part, path in dict(method.parts).items():
            if part in out and out[part] != path:
                raise ValueError(f"method {name}: GFLOPs part {part!r} is already "
                                 f"{out[part]!r} (another method)")
            out[part] = path
    return out


def gflops_parts(base: Iterable[str], last: str) -> tuple:
    """The GFLOPs part names: ``base``, each method part right after the base part it lies in
    (the first component of its module path: ``backbone.clusterer`` after ``backbone``; others
    at the end), then ``last`` (the whole model)."""
    base = list(base)
    extra = parts()
    out: List[str] = []
    for name in base:
        out.append(name)
        out += [p for p, path in extra.items() if path.split(".")[0] == name and p not in base]
    out += [p for p in extra if p not in out]
    return (*out, last)


def hook(spec: str) -> Any:
    """The object a ``"module:attribute"`` hook names (imported now)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"method hook {spec!r}: expected 'module:attribute'")
    return functools.reduce(getattr, attr.split("."), importlib.import_module(module))


def figures() -> Dict[str, Callable]:
    """Every method's own figures, name -> drawing function, in method order."""
    out: Dict[str, Callable] = {}
    for name, method in methods().items():
        if method.figures:
            for fig, fn in hook(method.figures).items():
                if fig in out:
                    raise ValueError(f"method {name}: figure {fig!r} is declared twice")
                out[fig] = fn
    return out


def run_report_lines(run: Mapping, metrics_json) -> Dict[str, List[str]]:
    """Method -> the report lines its ``report`` hook gives for one run (``run.json`` dict),
    for each of the run's methods that declares one and has something to say."""
    names = set(run.get("methods") or ())
    out: Dict[str, List[str]] = {}
    for name, method in methods().items():
        if name in names and method.report:
            lines = list(hook(method.report)(run["run_id"], metrics_json))
            if lines:
                out[name] = lines
    return out


def report_markdown(sections: Mapping[str, List[str]]) -> List[str]:
    """The methods' own sections of the ablation report: for each method with lines (method
    order), a blank line, its ``## report_title`` heading, a blank line and the lines."""
    out: List[str] = []
    for name, method in methods().items():
        if sections.get(name):
            out += ["", f"## {method.report_title or method.title()}", "", *sections[name]]
    return out


def _run_fields(run) -> tuple:
    if isinstance(run, Mapping):
        return tuple(run.get("methods") or ()), dict(run.get("stages") or {})
    return tuple(run.methods), dict(run.stages)


def finished_later(run) -> Optional[type]:
    """The declaration of the run's method whose later stage completes the run's model (its
    ``finished_by``, when the run has an axis of that stage), else None. ``run``: a grid
    ``Run`` or its ``run.json`` dict."""
    names, stages = _run_fields(run)
    for name in names:
        method = get(name)
        if method is not None and method.finished_by and method.finished_by in stages.values():
            return method
    return None


def is_gated(run) -> bool:
    """A run whose model a later stage completes (ECO-M2F's gate): :func:`finished_later`."""
    return finished_later(run) is not None


def not_timed_reason(run) -> Optional[str]:
    """Why the benchmark of trained models does not time ``run`` (None: it does)."""
    method = finished_later(run)
    if method is None:
        return None
    return method.not_timed or (
        f"{method.title()} run completed by its later '{method.finished_by}' stage: the "
        f"benchmark of the trained model does not time it (a number the run never has)")


def cost_model_of(type_name: str) -> Optional[Callable]:
    """The analytic cost model declared by the method whose model file registers ``type_name`` (a
    config ``type``, ``mmdet.`` prefix allowed), or None."""
    path = ax.registered_types().get(type_name.rsplit(".", 1)[-1])
    if path is None or path.parent != ax.MODELS_DIR:
        return None
    method = get(path.stem)
    return hook(method.cost_model) if method is not None and method.cost_model else None
