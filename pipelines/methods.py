"""The methods the pipeline ablates, found through one mmengine ``Registry``: :data:`METHODS`.

A method is one file under ``pipelines/models/``. Besides its model code and its ``AXES`` it
declares, in that file, what the rest of the pipeline needs to know about it, as one small
registered class (OpenMMLab's plug-in shape: ``@REGISTRY.register_module()`` in the file that
owns the thing, nothing elsewhere naming it)::

    from pipelines.methods import METHODS, Method  # noqa: E402


    @METHODS.register_module(name="token_cluster")   # the file's own name
    class TokenClusterMethod(Method):
        label, color, marker = "AiluRus", "#2ca02c", "D"  # its name and series style
        rank = 30                                    # where it sorts among methods
        parts = {"cluster": "backbone.clusterer"}    # GFLOPs parts it adds: name -> module path
        figures = "pipelines.reports.figures_token_cluster:FIGURES"   # {name: fn(analysis, plt)}

Every field is optional (:class:`Method` documents them); hooks are ``"module:attribute"``
strings, imported only by the stage that calls them.

**Read without importing the model file.** Importing a model file imports torch, mmcv and mmdet
(seconds, half a gigabyte); the Snakefile, ``ingest``, the naming contract and the analysis must
not. So the registry's location, ``pipelines/models/``, is *read*: :meth:`MethodRegistry.
import_from_location` finds each file's class decorated with ``@METHODS.register_module(...)``
(with :mod:`ast`, as :mod:`pipelines.axes` reads ``AXES``) and executes that class statement
alone, with only ``METHODS`` and ``Method`` in scope. The decorator registers the class exactly
as importing the file does; when the file is imported for real later (training, counting), its
decorator registers the same declaration again, which replaces the first. Hence the one rule of a
declaration: its body holds literals only (strings, numbers, tuples, dicts), no name of its file.

A declaration is not part of what a run trains: :func:`pipelines.axes.code_hash` leaves it out,
so changing a label or a colour never changes a recipe.
"""
from __future__ import annotations

import ast
import builtins
import functools
import importlib
import sys
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional

from mmengine.registry import Registry

from pipelines import axes as ax

#: where declarations live (the registry's location, read by :func:`declaration_nodes`)
LOCATION = "pipelines.models"
REGISTRY_NAME = "METHODS"


class Method:
    """A method's declaration: subclass it in the method's model file and register the subclass.

    Attributes:
        name: the method's name: its file's stem (``pro_scale``), what runs record in their
            ``pipelines.methods`` tag. Set by the registry from ``register_module(name=...)``,
            which must equal the file's stem.
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
            of a pixel decoder class of this file (:func:`pipelines.stages.cost_model.
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
        """The axes its file declares (``AXES``, read by :func:`pipelines.axes.method_axes`)."""
        return ax.method_axes(cls.name) if cls.name in ax.method_files() else {}


class MethodRegistry(Registry):
    """mmengine's :class:`~mmengine.registry.Registry` whose location is read, not imported
    (see the module doc); registering must name the file's stem."""

    def import_from_location(self) -> None:
        if self._imported:
            return
        self._imported = True
        for path in ax.declaration_files():
            module = f"{LOCATION}.{path.stem}"
            if module in sys.modules:  # imported for real: its decorator has registered it
                continue
            nodes = declaration_nodes(path)
            scope = {"__name__": module, REGISTRY_NAME: self, "Method": Method,
                     "__builtins__": {"__build_class__": builtins.__build_class__}}
            try:
                exec(compile(ast.Module(body=nodes, type_ignores=[]), str(path), "exec"), scope)
            except NameError as err:
                raise ValueError(f"{path}: a method declaration may hold literals only "
                                 f"(it is read without importing its file): {err}") from None

    def _register_module(self, module, module_name=None, force: bool = False) -> None:
        if isinstance(module, type) and issubclass(module, Method):
            stem = module.__module__.rsplit(".", 1)[-1]
            if module_name != stem:
                raise ValueError(f"{module.__module__}.{module.__qualname__}: register it as "
                                 f"@{REGISTRY_NAME}.register_module(name={stem!r}), its file's "
                                 f"name (got {module_name!r})")
            old = self._module_dict.get(stem)
            # the same declaration again (read first, then imported for real): the new one wins
            force = force or (old is not None and old.__module__ == module.__module__
                              and old.__qualname__ == module.__qualname__)
            module.name = stem
        super()._register_module(module, module_name, force)


METHODS = MethodRegistry("method", scope="pipelines", locations=[LOCATION])


def declaration_nodes(path) -> List[ast.stmt]:
    """The class statements of ``path`` decorated with ``@METHODS.register_module(...)``."""
    return [node for node in ax.parsed(path).body
            if isinstance(node, ast.ClassDef) and ax.decorated_by(node, REGISTRY_NAME)]


# ----------------------------------------------------------------------------- lookups
def methods() -> Dict[str, type]:
    """Every declared method, name -> declaration, by rank then name."""
    METHODS.import_from_location()
    found = dict(METHODS.module_dict)
    return dict(sorted(found.items(), key=lambda kv: (kv[1].rank, kv[0])))


def get(name: str) -> Optional[type]:
    """The declaration of method ``name`` (a file stem), or None when no file declares it."""
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
    """The analytic cost model declared by the method whose file registers ``type_name`` (a
    config ``type``, ``mmdet.`` prefix allowed), or None."""
    path = ax.registered_types().get(type_name.rsplit(".", 1)[-1])
    if path is None or path.parent != ax.MODELS_DIR:
        return None
    method = get(path.stem)
    return hook(method.cost_model) if method is not None and method.cost_model else None
