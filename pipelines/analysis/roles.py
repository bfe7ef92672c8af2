"""Roles from data, not names: a run's methods, the baseline, and each variant's series.

* a run's **methods** are its recorded ``pipelines.methods`` tag (the ``methods`` column, the
  modules under ``pipelines/models/`` its config builds); a table recorded before runs carried
  that tag falls back to the methods whose declared axes the run lists;
* the **baseline** is the variant the ablation declares (``grid.baseline``, recorded as the
  ``pipelines.baseline`` tag, the ``baseline`` column); without a recorded one, the one variant
  whose config builds no method;
* a variant's **series** is what a reader sees: its methods' labels (``PRO-SCALE``,
  ``PRO-SCALE + ECO-M2F``, ``Mask2Former (baseline)``), with the variant name added only when
  two variants would otherwise read the same. Colours, markers, figure order and setting names
  come from the series, so renaming a variant changes nothing a figure or a verdict shows.

A method's label, style and rank are its own declaration's (:mod:`pipelines.methods`, in its
model file); nothing here names a method.
"""
from __future__ import annotations

import json
import math

import pandas as pd

from pipelines import contract
from pipelines import methods as registry
from pipelines.analysis.data import AXES_COLUMN, METHODS_COLUMN, BASELINE_COLUMN

#: no method: the model's own (label, colour, marker)
PLAIN_STYLE = ("Mask2Former", "#4d4d4d", "o")
#: styles for combinations and methods that declare none, handed out in series order
SPARE_STYLES = (("#8c564b", "P"), ("#e377c2", "*"), ("#17becf", "h"), ("#bcbd22", "p"),
                ("#7f7f7f", "<"), ("#aec7e8", ">"), ("#98df8a", "d"), ("#ff9896", "8"))
BASELINE_SUFFIX = " (baseline)"
#: tables recorded before runs carried ``pipelines.methods`` (no ``methods`` value in any row):
#: the variant names this project's ablations used then for the plain model; a method's own old
#: names are its declaration's ``recorded_as``. Never consulted when a table records its
#: methods; other variant names fall back to the methods whose axes they list.
PLAIN_VARIANTS_BEFORE_METHODS_TAG = ("baseline",)
SERIES_COLUMNS = ["variant", "series", "methods", "baseline", "color", "marker", "order"]


def _missing(value) -> bool:
    return value is None or value is pd.NA or value == "" or (
        isinstance(value, float) and math.isnan(value))


def declared_axes() -> dict:
    """Every method's declared axes, by alias (``pipelines/models/*.py``: ``AXES``)."""
    from pipelines import axes as ax

    return ax.declared_axes()


def recorded_before_methods_tag() -> dict:
    """Variant name -> methods, for tables recorded before runs carried ``pipelines.methods``."""
    return {**{v: () for v in PLAIN_VARIANTS_BEFORE_METHODS_TAG},
            **registry.recorded_before_tag()}


def row_axis_names(row) -> list[str]:
    """A run's axis names (its ``axes`` column; for a table recorded before runs listed their
    axes, every declared param with a value but the fixed ones)."""
    from pipelines.analysis.data import PARAMS

    names = json.loads(str(row.get(AXES_COLUMN) or "[]") or "[]")
    if names:
        return names
    fixed = {*contract.FIXED_PARAMS, contract.SEED}
    return [n for n in PARAMS if n not in fixed and n in row and not _missing(row[n])]


def _inferred_methods(row) -> list[str]:
    """Methods of a run recorded without ``pipelines.methods``: those whose axes it lists."""
    from pipelines import axes as ax

    names = set(row_axis_names(row))
    return [m for m in ax.method_files() if names & set(ax.method_axes(m))]


def run_methods(row, recorded: bool = True) -> tuple[str, ...]:
    """The run's methods, in the registry's order (recorded, else inferred from its axes;
    ``recorded`` False: the table records no methods at all, see
    :func:`recorded_before_methods_tag`)."""
    text = row.get(METHODS_COLUMN, pd.NA)
    before = recorded_before_methods_tag() if not recorded else {}
    if str(row["variant"]) in before:
        found = list(before[str(row["variant"])])
    elif text is None or text is pd.NA or (isinstance(text, float) and math.isnan(text)):
        found = _inferred_methods(row)
    else:
        found = [m for m in str(text).split(",") if m.strip()]
    order = method_order()
    return tuple(sorted({m.strip() for m in found}, key=lambda m: (order.get(m, len(order)), m)))


def method_order() -> dict[str, int]:
    """Rank of each method: the declared ones by their ``rank`` (then name), then the rest."""
    return registry.order()


def assign_roles(runs: pd.DataFrame, baseline: str | None = None) -> pd.DataFrame:
    """``runs`` with ``methods`` (comma-joined), ``baseline`` (bool) and ``series`` filled in.

    Args:
        runs: the tidy runs table.
        baseline: a variant name that overrides the recorded (or default) baseline.
    """
    runs = runs.copy()
    recorded = METHODS_COLUMN in runs and runs[METHODS_COLUMN].notna().any()
    methods = [",".join(run_methods(r, recorded)) for _, r in runs.iterrows()]
    runs[METHODS_COLUMN] = pd.Series(methods, index=runs.index, dtype="string")
    variants = runs["variant"].astype(str)
    if baseline is not None:
        base = {baseline}
    else:
        recorded = runs[BASELINE_COLUMN].fillna(False).astype(bool) \
            if BASELINE_COLUMN in runs else pd.Series(False, index=runs.index)
        base = set(variants[recorded.to_numpy()])
        if not base and runs.get(BASELINE_COLUMN, pd.Series(dtype="boolean")).isna().all():
            plain = sorted(set(variants[runs[METHODS_COLUMN] == ""]))
            base = set(plain) if len(plain) == 1 else set()
    runs[BASELINE_COLUMN] = variants.isin(base).astype("boolean")
    table = series_table(runs)
    runs["series"] = variants.map(dict(zip(table["variant"], table["series"]))).astype("string")
    return runs


def _label(methods: tuple[str, ...]) -> str:
    if not methods:
        return PLAIN_STYLE[0]
    return " + ".join(registry.label(m) for m in methods)


def series_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per variant: its series name, methods, baseline flag, colour, marker and order
    (baseline first, then by the methods' registry order, then by name)."""
    if runs.empty:
        return pd.DataFrame(columns=SERIES_COLUMNS)
    registry = method_order()
    rows = []
    for variant, group in runs.groupby(runs["variant"].astype(str), sort=True):
        methods = tuple(m for m in str(group[METHODS_COLUMN].iloc[0]).split(",") if m)
        is_base = bool(group[BASELINE_COLUMN].fillna(False).astype(bool).any())
        label = _label(methods) + (BASELINE_SUFFIX if is_base else "")
        rows.append({"variant": variant, "methods": ",".join(methods), "baseline": is_base,
                     "_label": label,
                     "_key": (0 if is_base else 1,
                              tuple(registry.get(m, len(registry)) for m in methods), label)})
    counts = pd.Series([r["_label"] for r in rows]).value_counts()
    for r in rows:
        r["series"] = r["_label"] if counts[r["_label"]] == 1 else f"{r['_label']} [{r['variant']}]"
    rows.sort(key=lambda r: (*r["_key"], r["series"]))
    spare = iter(SPARE_STYLES * (1 + len(rows) // len(SPARE_STYLES)))
    used: set[tuple[str, str]] = set()
    for i, r in enumerate(rows):
        methods = tuple(m for m in r["methods"].split(",") if m)
        if not methods:
            style = PLAIN_STYLE[1:]
        elif len(methods) == 1 and _declared_style(methods[0]) is not None:
            style = _declared_style(methods[0])
        else:
            style = next(spare)
        while style in used:  # two series never share colour and marker
            style = next(spare)
        used.add(style)
        r.update(color=style[0], marker=style[1], order=i)
    return pd.DataFrame(rows)[SERIES_COLUMNS]


def _declared_style(method: str) -> tuple | None:
    found = registry.get(method)
    return found.style() if found is not None else None


def uses(frame: pd.DataFrame, method: str, only: bool = False) -> pd.Series:
    """Rows (runs or settings) whose methods include ``method`` (``only``: and nothing else)."""
    methods = frame[METHODS_COLUMN].fillna("").astype(str).str.split(",")
    if only:
        return methods.map(lambda ms: ms == [method])
    return methods.map(lambda ms: method in ms)


def run_label(row) -> str:
    """Short label of a run's setting: every axis but the seed, in the run's own order: a flag
    by its name when true (upper case up to 3 letters), as its method's ``axis_labels`` writes
    it (``3-3-3`` for a PRO-SCALE schedule, ``β=0.5`` for ECO-M2F's beta), ``name=value``
    otherwise. Empty for no axes."""
    from pipelines import axes as ax

    declared = declared_axes()
    rank = {n: i for i, n in enumerate(declared)}  # a method's axes in its declared order
    names = sorted(row_axis_names(row), key=lambda n: rank.get(n, len(rank)))
    parts = []
    for name in names:
        value = row.get(name, pd.NA)
        if name == contract.SEED or value is None or value is pd.NA or (
                not isinstance(value, str) and pd.isna(value)) or value == "":
            continue
        axis = declared.get(name)
        own = registry.axis_label(name, value) if axis is not None else None
        if axis is not None and axis.id == "flag":
            if bool(value):
                parts.append(name.upper() if len(name) <= 3 else name)
        elif own is not None:
            parts.append(own)
        else:
            short = ax.short_name(name)
            parts.append(f"{short}={value:g}" if isinstance(value, float) else f"{short}={value}")
    return " ".join(parts)
