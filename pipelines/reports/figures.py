"""``python -m pipelines figures``: every paper figure and the Pareto table, from tracked runs.

One call redraws everything from the analysis saved by ``python -m pipelines analyse``
(``--analysis``; or, for a one-off call, from the MLflow store or a recorded runs CSV) into one
folder:

* ``<figure>.pdf`` + ``<figure>.png`` for each entry of :data:`FIGURES`; a figure whose runs do
  not exist yet (variant or search not run) is skipped with a one-line note, and its old files
  are removed so the folder never shows stale plots;
* ``pareto_points.md`` / ``pareto_points.tex``: the points of every Pareto front (per variant and
  overall) with their run ids and MLflow run ids; ``points.csv``: every plotted run with its
  front memberships; ``runs.csv``: the tidy runs table the figures were drawn from;
  ``figures.json``: what was written and what was skipped, and why.

Output bytes depend only on the runs: PDF/PNG metadata hold no date or version, inputs are
sorted, fonts and style are pinned (matplotlib defaults, DejaVu Sans, fixed ``svg.hashsalt``).
"""
from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path
from typing import Callable

import pandas as pd

from pipelines import contract, methods
from pipelines.analysis.settings import ONE_SEED, Analysis
from pipelines.contract import ROLE_TRIAL
from pipelines.errors import UserError
from pipelines.reports.figure_base import Skip, errorbars, grid_points, stage_columns
from pipelines.reports.tables import (
    _analysis,
    pareto_table,
    points_table,
    table_latex,
    table_markdown,
)

FORMATS = ("pdf", "png")
PNG_DPI = 150

STYLE = {
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "svg.hashsalt": "pipelines-figures",
    "pdf.compression": 6,
    "path.simplify": False,
}
METADATA = {
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None, "ModDate": None},
    "png": {"Software": None},
}


# --------------------------------------------------------------------------- figures
_points = grid_points


#: short marks of the overall front's verdicts on the accuracy figure
VERDICT_MARKS = {"distinguishable": "sig.", "not distinguishable": "n.d.",
                 "not testable": "n.t."}


def fig_accuracy_vs_gflops(a: Analysis, plt):
    settings = a.settings.dropna(subset=["miou", "gflops_total"]) if len(a.settings) else \
        a.settings
    if settings.empty or "miou" not in settings or "gflops_total" not in settings:
        return Skip("no runs with both miou and gflops_total")
    fronts = a.fronts
    fig, ax = plt.subplots(figsize=(6.8, 4.6), layout="constrained")
    from matplotlib.lines import Line2D

    annotate = len(settings) <= 10
    handles = []  # legend entries drawn as the plotted markers (an errorbar's own legend
    # handle draws its bars and caps over the marker, so a circle looked like a square)
    for name in a.ordered_series(settings["series"]):
        color, marker = a.style(name)
        pts = settings[settings["series"] == name]
        front = fronts[fronts["front"] == name]
        label = f"{name} (mean, 95 % CI)"
        if len(front) >= 2:  # a one-point front draws no line: the legend promises none
            ax.plot(front["gflops_total"], front["miou"], color=color, lw=1.2, alpha=0.8,
                    drawstyle="steps-post", zorder=2)
            label = f"{name} (mean, 95 % CI; solid line: its front)"
        errorbars(ax, pts, "gflops_total", "miou", color, marker, label=None,
                  annotate=annotate)
        handles.append(Line2D([], [], ls="none", marker=marker, color=color, ms=6,
                              label=label))
        if annotate:  # every setting named beside its point, not only the knee
            for _, r in pts.iterrows():
                ax.annotate(short_setting(r["setting"], name), (r["gflops_total"], r["miou"]),
                            xytext=(5, -11 if r["n_seeds"] >= 2 else -18),
                            textcoords="offset points", fontsize=6.5, color=color)
    overall = fronts[fronts["front"] == "overall"]
    ax.plot(overall["gflops_total"], overall["miou"], color="black", lw=1.0, ls="--",
            drawstyle="steps-post", label="overall Pareto front (on means)", zorder=1)
    for _, r in overall.iterrows():
        mark = VERDICT_MARKS.get(a.label(r["setting"]), "")
        ax.annotate(mark, (r["gflops_total"], r["miou"]), xytext=(4, 5),
                    textcoords="offset points", fontsize=7, fontweight="bold")
    knee = overall[overall["knee"]]
    if len(knee):
        k = knee.iloc[0]
        ax.scatter([k["gflops_total"]], [k["miou"]], s=170, facecolors="none",
                   edgecolors="black", linewidths=1.2, zorder=5, label=f"knee: {k['setting']}")
    if (settings["n_seeds"] < 2).any():
        ax.scatter([], [], marker="o", facecolors="white", edgecolors="grey",
                   label=f"hollow: {ONE_SEED}")
    trials = searched_points(a)
    if len(trials):  # the search's own runs, beside the grid's settings (not in the fronts)
        ax.scatter(trials["gflops_total"], trials["miou"], marker="D", s=22,
                   facecolors="none", edgecolors="black", linewidths=0.8, zorder=4,
                   label=f"searched: {len(trials)} Optuna trial run(s), one seed each")
    ax.set_xlabel("total GFLOPs per image\n"
                  "front points: sig. / n.d. / n.t. = distinguishable / not distinguishable / "
                  "not testable\n(paired t-test on mIoU across seeds, α = 0.05, vs the baseline "
                  "and every other front point)", fontsize=7)
    ax.set_ylabel("mIoU (%), mean over seeds")
    ax.set_title("Accuracy vs compute: settings (seeds pooled), fronts on means")
    others, labels = ax.get_legend_handles_labels()
    ax.legend(handles=handles + others, labels=[h.get_label() for h in handles] + labels,
              loc="best", frameon=True, fontsize=7)
    return fig


def short_setting(setting: str, series: str) -> str:
    """A setting's name without its series' name (``PRO-SCALE 3-3-3 TRC LPE`` ->
    ``3-3-3 TRC LPE``); the baseline keeps a short word."""
    rest = setting[len(series):].strip() if setting.startswith(series) else setting
    return rest or ("baseline" if "baseline" in setting.lower() else setting)



def searched_points(a: Analysis):
    """The runs an Optuna search trained (``pipelines.role=trial``) with mIoU and GFLOPs."""
    runs = a.runs
    if runs.empty or "role" not in runs or "miou" not in runs or "gflops_total" not in runs:
        return runs.iloc[0:0]
    return runs[runs["role"] == ROLE_TRIAL].dropna(subset=["miou", "gflops_total"])


def fig_accuracy_vs_gflops_by(a: Analysis, plt, axis: str):
    """Settings coloured by the values of any axis (``figures --color-by AXIS``), markers by
    series: e.g. how ``model.decode_head.num_queries`` or the seed-pooled schedule moves a
    setting in the accuracy/compute plane."""
    settings = a.settings.dropna(subset=["miou", "gflops_total"]) if len(a.settings) else \
        a.settings
    if axis not in settings.columns:
        return Skip(f"no axis {axis!r} in the settings of these runs (seeds are pooled into "
                    f"settings, so the seed is not one)")
    settings = settings[settings[axis].notna() & (settings[axis].astype(str) != "")]
    if settings.empty:
        return Skip(f"no settings with both miou, gflops_total and {axis!r}")
    from pipelines import axes as ax_mod

    values = sorted(settings[axis].astype(str).unique(), key=_natural_key)
    cmap = plt.get_cmap("viridis" if len(values) > 10 else "tab10")
    colors = {v: cmap(i / max(1, len(values) - 1) if len(values) > 10 else i)
              for i, v in enumerate(values)}
    fig, ax = plt.subplots(figsize=(6.8, 4.6), layout="constrained")
    short = ax_mod.short_name(axis)
    for value in values:
        pts = settings[settings[axis].astype(str) == value]
        for name in a.ordered_series(pts["series"]):
            _, marker = a.style(name)
            errorbars(ax, pts[pts["series"] == name], "gflops_total", "miou",
                       colors[value], marker, label=f"{short}={value} ({name})",
                       annotate=False)
    ax.set_xlabel("total GFLOPs per image")
    ax.set_ylabel("mIoU (%), mean over seeds (95 % CI)")
    ax.set_title(f"Accuracy vs compute, coloured by {axis}")
    ax.legend(loc="best", frameon=True, fontsize=7)
    return fig


def _natural_key(text: str):
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def fig_latency_vs_gflops(a: Analysis, plt):
    settings = a.settings
    if settings.empty or "latency_ms" not in settings:
        return Skip("no runs with both latency_ms and gflops_total yet")
    settings = settings.dropna(subset=["latency_ms", "gflops_total"])
    if settings.empty:
        return Skip("no runs with both latency_ms and gflops_total yet")
    fig, ax = plt.subplots(figsize=(5.6, 4.0), layout="constrained")
    for name in a.ordered_series(settings["series"]):
        color, marker = a.style(name)
        errorbars(ax, settings[settings["series"] == name], "gflops_total", "latency_ms",
                   color, marker, label=name, annotate=False)
    title = "Does wall clock follow FLOPs?"
    if len(settings) >= 3:
        rho = settings["gflops_total"].corr(settings["latency_ms"], method="spearman")
        title += f"  (Spearman ρ = {rho:.2f}, n = {len(settings)} settings)"
    ax.set_xlabel("total GFLOPs per image")
    ax.set_ylabel("latency per image (ms), mean over seeds")
    ax.set_title(title)
    ax.legend(loc="best")
    return fig



def fig_search_hypervolume(a: Analysis, plt):
    from pipelines.analysis.pareto import hypervolume, hypervolume_history, reference_point

    df = a.runs
    trials = df[df["role"] == "trial"].dropna(subset=["miou", "gflops_total"])
    if trials.empty:
        return Skip("no Optuna search trials (pipelines.role=trial) yet")
    trials = trials.assign(trial_number=trials["trial_number"].fillna(-1))
    grid = _points(df).dropna(subset=["miou", "gflops_total"])
    budgets = (trials[contract.SEARCH_GFLOPS_BUDGET].dropna().unique()
               if contract.SEARCH_GFLOPS_BUDGET in trials else [])
    if len(budgets) == 1:  # the search's own reference, fixed before any run: mIoU 0 at the
        ref, ref_note = (float(budgets[0]), 0.0), "the search's GFLOPs budget"  # budget
    else:  # no (or more than one) recorded budget: from the data drawn
        ref, ref_note = reference_point(pd.concat([trials, grid])), "1.1 x the largest GFLOPs"
    hist = hypervolume_history(trials, ref)
    fig, ax = plt.subplots(figsize=(5.6, 3.6), layout="constrained")
    ax.step(hist["trainings"], hist["hypervolume"], where="post", color="#1f77b4",
            marker="o", ms=4, label="Optuna search")
    if len(grid):
        hv = hypervolume(grid, ref)
        ax.axhline(hv, color="#4d4d4d", ls="--", lw=1,
                   label=f"ablation grid ({len(grid)} trainings)")
    ax.set_xlabel("trainings (trials completed)")
    ax.set_ylabel("hypervolume (GFLOPs × mIoU points)")
    ax.set_title(f"Search progress (reference: {ref[0]:.2f} GFLOPs, {ref[1]:g} mIoU)")
    ax.text(0.01, 0.01, f"reference GFLOPs: {ref_note}; a point above it adds nothing",
            transform=ax.transAxes, fontsize=7, color="#555555", va="bottom")
    ax.legend(loc="lower right")
    ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


_stage_columns = stage_columns  # (tested under this name)

#: name -> drawing function (returns a Figure or a Skip); the paper's figure order: the
#: accuracy/compute plane, each method's own figures (its declaration's ``figures``, in method
#: order: PRO-SCALE's encoder stages, ECO-M2F's exits, AiluRus' clustering fraction), then
#: latency and the search
FIGURES: dict[str, Callable] = {
    "accuracy_vs_gflops": fig_accuracy_vs_gflops,
    **methods.figures(),
    "latency_vs_gflops": fig_latency_vs_gflops,
    "search_hypervolume": fig_search_hypervolume,
}


# --------------------------------------------------------------------------- rendering
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return matplotlib, plt


def draw(name: str, data, figure=None):
    """Draw one figure under the pinned style from a runs table or an :class:`Analysis`;
    returns a Figure or a :class:`Skip`. ``figure``: a drawing function instead of
    ``FIGURES[name]``."""
    a = _analysis(data)
    matplotlib, plt = _pyplot()
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(STYLE)
        return (figure or FIGURES[name])(a, plt)


def save(fig, stem: Path) -> list[Path]:
    """``stem.pdf`` + ``stem.png`` with no dates or versions in their metadata."""
    matplotlib, plt = _pyplot()
    written = []
    with matplotlib.rc_context(STYLE):
        for fmt in FORMATS:
            path = stem.with_suffix(f".{fmt}")
            tmp = path.with_name(f".{path.name}.tmp")
            fig.savefig(tmp, format=fmt, dpi=PNG_DPI, metadata=METADATA[fmt])
            tmp.replace(path)
            written.append(path)
    plt.close(fig)
    return written


def png_bytes(fig, close: bool = True) -> bytes:
    """The PNG of a figure as bytes (for notebooks: ``display(Image(data=png_bytes(fig)))``)."""
    matplotlib, plt = _pyplot()
    buf = io.BytesIO()
    with matplotlib.rc_context(STYLE):
        fig.savefig(buf, format="png", dpi=PNG_DPI, metadata=METADATA["png"])
    if close:
        plt.close(fig)
    return buf.getvalue()


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    tmp.replace(path)


def render_all(df, out: str | os.PathLike, log=print, color_by=()) -> dict:
    """Write every figure, the Pareto tables, ``points.csv``, ``settings.csv`` and ``runs.csv``.

    ``df`` is a runs table or an :class:`~pipelines.analysis.settings.Analysis` of one (built
    once here otherwise). Returns the manifest also written as ``figures.json``:
    ``{"figures": {name: [files]}, "skipped": {name: reason}, "tables": [files], "runs": n,
    "settings": n}``. ``color_by``: axes to draw ``accuracy_vs_gflops_by_<axis>`` for.
    """
    from pipelines.analysis.data import write_runs_csv
    from pipelines.config import ensure_writable_dir

    out = ensure_writable_dir(out, "figures folder")
    a = _analysis(df)
    os.environ.setdefault("SOURCE_DATE_EPOCH", "0")
    manifest: dict = {"figures": {}, "skipped": {}, "tables": [], "runs": int(len(a.runs)),
                      "settings": int(len(a.settings))}
    for name in FIGURES:
        result = draw(name, a)
        if isinstance(result, Skip):
            manifest["skipped"][name] = result.reason
            for fmt in FORMATS:
                (out / f"{name}.{fmt}").unlink(missing_ok=True)
            log(f"skipped {name}: {result.reason}")
            continue
        files = save(result, out / name)
        manifest["figures"][name] = [p.name for p in files]
        log(f"wrote {name}: " + ", ".join(str(p) for p in files))
    for axis in color_by:
        name = "accuracy_vs_gflops_by_" + "".join(c if c.isalnum() or c == "_" else "_"
                                                   for c in axis)
        result = draw(axis, a, lambda an, plt, axis=axis: fig_accuracy_vs_gflops_by(an, plt, axis))
        if isinstance(result, Skip):
            raise UserError(f"--color-by {axis}: {result.reason}")
        files = save(result, out / name)
        manifest["figures"][name] = [p.name for p in files]
        log(f"wrote {name}: " + ", ".join(str(p) for p in files))
    table = pareto_table(a)
    _write_text(out / "pareto_points.md", table_markdown(table))
    _write_text(out / "pareto_points.tex", table_latex(table))
    points_table(a).to_csv(out / "points.csv", index=False, float_format="%.10g",
                           lineterminator="\n")
    a.settings.to_csv(out / "settings.csv", index=False, float_format="%.10g",
                      lineterminator="\n")
    write_runs_csv(a.runs.drop(columns="setting"), out / "runs.csv")
    manifest["tables"] = ["pareto_points.md", "pareto_points.tex", "points.csv", "settings.csv",
                          "runs.csv"]
    _write_text(out / "figures.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log(f"wrote Pareto table ({len(table)} front points of {len(a.settings)} settings), "
        f"points.csv and settings.csv -> {out}")
    return manifest


# --------------------------------------------------------------------------- CLI
def add_parser(sub) -> None:
    from pipelines.analysis.cli import add_source_arguments

    p = sub.add_parser("figures", help="redraw every paper figure + the Pareto table from the "
                       "saved analysis (or the tracked runs)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--analysis", help="a folder saved by `python -m pipelines analyse` (the "
                   "workflow's results/analysis/<ablation>); else the runs are read from:")
    add_source_arguments(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--color-by", nargs="+", default=[], metavar="AXIS",
                   help="also draw accuracy vs GFLOPs coloured by these axes (any axis of the "
                   "runs: schedule, seed, model.decode_head.num_queries, ...)")
    p.set_defaults(func=run)


def read_runs(args: argparse.Namespace):
    """The runs table of ``--tracking-uri``/``--experiment`` or ``--runs-csv``
    (:func:`pipelines.analysis.cli.read_runs`)."""
    from pipelines.analysis.cli import read_runs as read

    return read(args)


def run(args: argparse.Namespace) -> int:
    from pipelines.analysis.cli import analysis_of

    a, _ = analysis_of(args, "plot")
    render_all(a, args.out, color_by=args.color_by)
    return 0
