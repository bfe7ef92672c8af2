"""``python -m pipelines figures``: every paper figure and the Pareto table, from tracked runs.

One call redraws everything from the MLflow store (or a recorded runs CSV) into one folder:

* ``<figure>.pdf`` + ``<figure>.png`` for each entry of :data:`FIGURES`; a figure whose runs do
  not exist yet (variant or search not run) is skipped with a one-line note, and its old files
  are removed so the folder never shows stale plots;
* ``pareto_points.md`` / ``pareto_points.tex``: the points of every Pareto front (per variant and
  overall) with their run ids and MLflow run ids; ``points.csv``: every plotted run with its
  front memberships; ``runs.csv``: the tidy runs table the figures were drawn from;
  ``figures.json``: what was written and what was skipped, and why.

Output bytes depend only on the runs: PDF/PNG metadata carry no date or version, inputs are
sorted, fonts and style are pinned (matplotlib defaults, DejaVu Sans, fixed ``svg.hashsalt``).
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from pipelines.errors import UserError

#: display order, colour and marker of each variant (same everywhere)
VARIANTS = {
    "baseline": ("Mask2Former (baseline)", "#4d4d4d", "o"),
    "pro_scale": ("PRO-SCALE", "#1f77b4", "s"),
    "eco_m2f": ("ECO-M2F", "#d62728", "^"),
    "ailurus": ("AiluRus", "#2ca02c", "D"),
    "ats": ("ATS", "#9467bd", "v"),
}
OTHER_STYLE = ("other", "#8c564b", "P")
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


def variant_style(variant: str) -> tuple[str, str, str]:
    return VARIANTS.get(variant, (variant or OTHER_STYLE[0], OTHER_STYLE[1], OTHER_STYLE[2]))


def ordered_variants(values) -> list[str]:
    present = sorted({str(v) for v in values})
    return [v for v in VARIANTS if v in present] + [v for v in present if v not in VARIANTS]


def run_label(row) -> str:
    """Short human label of a run's setting (used next to points and in tables).

    Every axis of the run but the seed, in the run's own order: a flag by its name when true,
    ``3-3-3`` for a PRO-SCALE schedule, ``name=value`` otherwise.
    """
    import json

    from pipelines import axes as ax

    variant = str(row["variant"])
    names = json.loads(str(row.get("axes") or "[]") or "[]")
    if not names:  # a table recorded before runs listed their axes
        names = [n for n in ("schedule", "trc", "lpe", "beta") if n in row]
    declared = {}
    for method in ax.method_files():
        declared.update(ax.method_axes(method))
    parts = []
    for name in names:
        value = row.get(name, pd.NA)
        if name == "seed" or value is None or value is pd.NA or (
                not isinstance(value, str) and pd.isna(value)) or value == "":
            continue
        axis = declared.get(name)
        if axis is not None and axis.id == "flag":
            if bool(value):
                parts.append(name.upper() if len(name) <= 3 else name)
        elif name == "schedule":
            parts.append(str(value))
        elif name == "beta":
            parts.append(f"β={float(value):g}")
        else:
            short = ax.short_name(name)
            parts.append(f"{short}={value:g}" if isinstance(value, float) else f"{short}={value}")
    return " ".join(parts) if parts else variant


@dataclass
class Skip:
    """A figure that cannot be drawn yet (its runs do not exist)."""

    reason: str


# --------------------------------------------------------------------------- figures
def _points(df: pd.DataFrame) -> pd.DataFrame:
    """The grid runs (the Optuna trials have their own figure)."""
    return df[df["role"] == "run"]


def fig_accuracy_vs_gflops(df: pd.DataFrame, plt):
    from pipelines.pareto import fronts_by

    runs = _points(df).dropna(subset=["miou", "gflops_total"])
    if runs.empty:
        return Skip("no runs with both miou and gflops_total")
    fronts = fronts_by(runs)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    for variant in ordered_variants(runs["variant"]):
        name, color, marker = variant_style(variant)
        pts = runs[runs["variant"] == variant]
        ax.scatter(pts["gflops_total"], pts["miou"], color=color, marker=marker, s=28,
                   alpha=0.45, linewidths=0)
        front = fronts[fronts["front"] == variant]
        ax.plot(front["gflops_total"], front["miou"], color=color, marker=marker, ms=6,
                lw=1.4, drawstyle="steps-post", label=f"{name} (front)")
    overall = fronts[fronts["front"] == "overall"]
    ax.plot(overall["gflops_total"], overall["miou"], color="black", lw=1.0, ls="--",
            drawstyle="steps-post", label="overall Pareto front", zorder=1)
    knee = overall[overall["knee"]]
    if len(knee):
        k = knee.iloc[0]
        ax.scatter([k["gflops_total"]], [k["miou"]], s=160, facecolors="none",
                   edgecolors="black", linewidths=1.2, zorder=5,
                   label=f"knee: {k['run_id']}")
    ax.set_xlabel("total GFLOPs per image")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("Accuracy vs compute (lines: Pareto front of each variant)")
    ax.legend(loc="best", frameon=True)
    return fig


def _stage_columns(df: pd.DataFrame) -> list[str]:
    """Tracked per-stage encoder GFLOPs, e.g. ``gflops_encoder_stage1`` (when the flops stage
    logs them)."""
    import re

    pat = re.compile(r"^gflops_encoder[._]stage(\d+)$")
    cols = [c for c in df.columns if pat.match(c) and df[c].notna().any()]
    return sorted(cols, key=lambda c: int(pat.match(c).group(1)))


def fig_encoder_gflops_by_schedule(df: pd.DataFrame, plt):
    runs = _points(df)
    pro = runs[(runs["variant"] == "pro_scale")].dropna(subset=["gflops_encoder"])
    if pro.empty:
        return Skip("no PRO-SCALE runs with a tracked gflops_encoder yet")
    base = runs[runs["variant"] == "baseline"].dropna(subset=["gflops_encoder"])
    stages = _stage_columns(pro)
    cols = ["gflops_encoder", *stages]
    rows = []
    if len(base):
        rows.append(("baseline (6 layers)", base[cols].mean(), len(base), "baseline"))
    keyed = pro.assign(_trc=pro["trc"].fillna(False).astype(bool))

    def schedule_key(s: str):
        return tuple(int(p) if p.isdigit() else 0 for p in str(s).split("-"))

    for (schedule, trc), grp in sorted(keyed.groupby(["schedule", "_trc"]),
                                       key=lambda kv: (schedule_key(kv[0][0]), kv[0][1])):
        label = (schedule or "?") + (" +TRC" if trc else "")
        rows.append((label, grp[cols].mean(), len(grp), "pro_scale"))
    fig, ax = plt.subplots(figsize=(6.4, 3.8), layout="constrained")
    x = list(range(len(rows)))
    labels = [r[0] for r in rows]
    if stages:
        bottom = [0.0] * len(rows)
        cmap = plt.get_cmap("Blues")
        for i, col in enumerate(stages):
            vals = [float(r[1][col]) if pd.notna(r[1][col]) else 0.0 for r in rows]
            ax.bar(x, vals, bottom=bottom, color=cmap(0.35 + 0.6 * i / max(1, len(stages) - 1)),
                   edgecolor="white", label=f"stage {i + 1}")
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.legend(loc="upper right")
        title = "Encoder GFLOPs by stage per PRO-SCALE schedule (tracked)"
    else:
        colors = [variant_style(r[3])[1] for r in rows]
        ax.bar(x, [float(r[1]["gflops_encoder"]) for r in rows], color=colors)
        title = "Encoder GFLOPs per PRO-SCALE schedule (tracked, no per-stage split logged)"
    for xi, r in zip(x, rows):
        ax.annotate(f"{float(r[1]['gflops_encoder']):.2f}", (xi, float(r[1]["gflops_encoder"])),
                    xytext=(0, 2), textcoords="offset points", ha="center", fontsize=7)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set_xlabel("encoder layers per stage (p1-p2-p3)")
    ax.set_ylabel("encoder GFLOPs per image")
    ax.set_title(title)
    ax.margins(y=0.12)
    return fig


def fig_eco_m2f_exits(df: pd.DataFrame, plt):
    from pipelines.analysis.data import exit_histogram

    runs = _points(df)
    eco = runs[runs["variant"] == "eco_m2f"]
    hists = [(row, exit_histogram(row)) for _, row in eco.iterrows()]
    hists = [(row, h) for row, h in hists if h]
    if eco.empty or (not hists and eco["mean_exit"].isna().all()):
        return Skip("no ECO-M2F runs with an exit histogram or mean_exit yet")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7.6, 3.4), layout="constrained")
    hists.sort(key=lambda rh: (rh[0]["beta"] if pd.notna(rh[0]["beta"]) else -1,
                               str(rh[0]["run_id"])))
    layers = sorted({k for _, h in hists for k in h})
    width = 0.8 / max(1, len(hists))
    cmap = plt.get_cmap("Reds")
    for i, (row, h) in enumerate(hists):
        total = sum(h.values()) or 1
        xs = [layer - 0.4 + width * (i + 0.5) for layer in layers]
        ax1.bar(xs, [100.0 * h.get(layer, 0) / total for layer in layers], width=width,
                color=cmap(0.35 + 0.6 * i / max(1, len(hists) - 1)),
                label=f"β={row['beta']:g}" if pd.notna(row["beta"]) else str(row["run_id"]))
    if hists:
        ax1.set_xticks(layers)
        top = max(100.0 * v / (sum(h.values()) or 1) for _, h in hists for v in h.values())
        ax1.set_ylim(0, top * 1.3 + 1)  # headroom: the legend sits above the bars
        ax1.legend(loc="upper center", ncols=min(3, len(hists)), columnspacing=0.8,
                   handlelength=1.2)
    ax1.set_xlabel("exit after encoder layer")
    ax1.set_ylabel("images (%)")
    ax1.set_title("Exit histogram per β")
    pts = eco.dropna(subset=["beta", "mean_exit"]).sort_values(["beta", "run_id"])
    if len(pts):
        agg = pts.groupby("beta", sort=True)["mean_exit"].mean()
        ax2.plot(agg.index.astype(float), agg.to_numpy(), color=VARIANTS["eco_m2f"][1],
                 marker="^")
        ax2.set_xscale("log")
    ax2.set_xlabel("β (trade-off weight per layer, log scale)")
    ax2.set_ylabel("mean encoder layers per image")
    ax2.set_title("Mean exit layer vs β")
    return fig


def fig_accuracy_vs_cluster_fraction(df: pd.DataFrame, plt):
    runs = _points(df).dropna(subset=["cluster_fraction", "miou"])
    if runs.empty:
        return Skip("no runs with a cluster_fraction (AiluRus) yet")
    fig, ax = plt.subplots(figsize=(5.2, 3.6), layout="constrained")
    for variant in ordered_variants(runs["variant"]):
        name, color, marker = variant_style(variant)
        pts = runs[runs["variant"] == variant].sort_values(["cluster_fraction", "run_id"])
        agg = pts.groupby("cluster_fraction", sort=True)["miou"].agg(["mean", "min", "max"])
        xs = agg.index.astype(float)
        ax.plot(xs, agg["mean"], color=color, marker=marker, label=f"{name} (mean over seeds)")
        ax.fill_between(xs, agg["min"], agg["max"], color=color, alpha=0.15, lw=0)
    ax.set_xlabel("clusters as a fraction of tokens")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("Accuracy vs clustering fraction")
    ax.legend(loc="lower right")
    return fig


def fig_latency_vs_gflops(df: pd.DataFrame, plt):
    runs = _points(df).dropna(subset=["latency_ms", "gflops_total"])
    if runs.empty:
        return Skip("no runs with both latency_ms and gflops_total yet")
    fig, ax = plt.subplots(figsize=(5.6, 4.0), layout="constrained")
    for variant in ordered_variants(runs["variant"]):
        name, color, marker = variant_style(variant)
        pts = runs[runs["variant"] == variant]
        ax.scatter(pts["gflops_total"], pts["latency_ms"], color=color, marker=marker, s=30,
                   label=name)
    title = "Does wall clock follow FLOPs?"
    if len(runs) >= 3:
        rho = runs["gflops_total"].corr(runs["latency_ms"], method="spearman")
        title += f"  (Spearman ρ = {rho:.2f}, n = {len(runs)})"
    ax.set_xlabel("total GFLOPs per image")
    ax.set_ylabel("latency per image (ms)")
    ax.set_title(title)
    ax.legend(loc="best")
    return fig


def fig_search_hypervolume(df: pd.DataFrame, plt):
    from pipelines.pareto import hypervolume, hypervolume_history, reference_point

    trials = df[df["role"] == "trial"].dropna(subset=["miou", "gflops_total"])
    if trials.empty:
        return Skip("no Optuna search trials (pipelines.role=trial) yet")
    trials = trials.assign(trial_number=trials["trial_number"].fillna(-1))
    grid = _points(df).dropna(subset=["miou", "gflops_total"])
    ref = reference_point(pd.concat([trials, grid]))
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
    ax.legend(loc="lower right")
    ax.xaxis.get_major_locator().set_params(integer=True)
    return fig


#: name -> drawing function (returns a Figure or a Skip); the paper's figure order
FIGURES: dict[str, Callable] = {
    "accuracy_vs_gflops": fig_accuracy_vs_gflops,
    "encoder_gflops_by_schedule": fig_encoder_gflops_by_schedule,
    "eco_m2f_exits": fig_eco_m2f_exits,
    "accuracy_vs_cluster_fraction": fig_accuracy_vs_cluster_fraction,
    "latency_vs_gflops": fig_latency_vs_gflops,
    "search_hypervolume": fig_search_hypervolume,
}


# --------------------------------------------------------------------------- tables
TABLE_COLUMNS = ("front", "knee", "run_id", "variant", "setting", "miou", "gflops_total",
                 "latency_ms", "mlflow_run_id")


def points_table(df: pd.DataFrame) -> pd.DataFrame:
    """Every grid run with its setting and front memberships (``front_<name>`` columns)."""
    from pipelines.pareto import fronts_by

    runs = _points(df)
    fronts = fronts_by(runs.dropna(subset=["miou", "gflops_total"]))
    out = runs.assign(setting=[run_label(r) for _, r in runs.iterrows()])
    cols = ["run_id", "mlflow_run_id", "experiment_id", "variant", "setting", "schedule", "trc",
            "lpe", "cluster_fraction", "beta", "seed", "miou", "gflops_total",
            "gflops_encoder", "gflops_pixel_decoder", "latency_ms"]
    out = out[cols].copy()
    out["pareto_variant"] = out["mlflow_run_id"].isin(
        fronts.loc[fronts["front"] != "overall", "mlflow_run_id"])
    overall = fronts[fronts["front"] == "overall"]
    out["pareto_overall"] = out["mlflow_run_id"].isin(overall["mlflow_run_id"])
    out["knee_overall"] = out["mlflow_run_id"].isin(overall.loc[overall["knee"], "mlflow_run_id"])
    return out.sort_values(["variant", "gflops_total", "run_id"], kind="stable",
                           na_position="last").reset_index(drop=True)


def pareto_table(df: pd.DataFrame) -> pd.DataFrame:
    """The points of every front (overall first, then per variant), with run ids."""
    from pipelines.pareto import fronts_by

    runs = _points(df).dropna(subset=["miou", "gflops_total"])
    fronts = fronts_by(runs)
    if fronts.empty:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    fronts = fronts.assign(setting=[run_label(r) for _, r in fronts.iterrows()])
    order = {name: i for i, name in enumerate(["overall", *VARIANTS])}
    fronts = fronts.assign(_o=fronts["front"].map(lambda f: order.get(f, len(order))))
    fronts = fronts.sort_values(["_o", "front", "gflops_total", "run_id"], kind="stable")
    return fronts[list(TABLE_COLUMNS)].reset_index(drop=True)


def _fmt(value, digits: int = 2) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, (bool,)):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table_markdown(table: pd.DataFrame) -> str:
    head = ["front", "knee", "run id", "setting", "mIoU (%)", "GFLOPs", "latency (ms)",
            "MLflow run id"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in table.iterrows():
        cells = [r["front"], "★" if r["knee"] else "", f"`{r['run_id']}`", r["setting"],
                 _fmt(r["miou"]), _fmt(r["gflops_total"], 3), _fmt(r["latency_ms"], 1),
                 f"`{r['mlflow_run_id']}`"]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _tex(text) -> str:
    """Escape LaTeX specials in table cells."""
    out = []
    for ch in str(text):
        out.append({"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&",
                    "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}", "~": r"\~{}",
                    "^": r"\^{}", "β": r"$\beta$", "–": "--"}.get(ch, ch))
    return "".join(out)


def table_latex(table: pd.DataFrame) -> str:
    lines = [
        "% generated by `python -m pipelines figures`; do not edit",
        r"\begin{tabular}{llllrrrl}",
        r"\toprule",
        r"front & knee & run id & setting & mIoU (\%) & GFLOPs & latency (ms) & MLflow run id \\",
        r"\midrule",
    ]
    previous = None
    for _, r in table.iterrows():
        if previous is not None and r["front"] != previous:
            lines.append(r"\midrule")
        previous = r["front"]
        cells = [_tex(r["front"]), r"$\star$" if r["knee"] else "",
                 r"\texttt{" + _tex(r["run_id"]) + "}", _tex(r["setting"]),
                 _fmt(r["miou"]), _fmt(r["gflops_total"], 3), _tex(_fmt(r["latency_ms"], 1)),
                 r"\texttt{" + _tex(r["mlflow_run_id"]) + "}"]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- rendering
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return matplotlib, plt


def draw(name: str, df: pd.DataFrame):
    """Draw one figure under the pinned style; returns a Figure or a :class:`Skip`."""
    matplotlib, plt = _pyplot()
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(STYLE)
        return FIGURES[name](df, plt)


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
    import io

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


def render_all(df: pd.DataFrame, out: str | os.PathLike, log=print) -> dict:
    """Write every figure, the Pareto tables, ``points.csv`` and ``runs.csv`` into ``out``.

    Returns the manifest also written as ``figures.json``:
    ``{"figures": {name: [files]}, "skipped": {name: reason}, "tables": [files], "runs": n}``.
    """
    from pipelines.analysis.data import tidy_runs, write_runs_csv
    from pipelines.config import ensure_writable_dir

    out = ensure_writable_dir(out, "figures folder")
    df = tidy_runs(df)
    os.environ.setdefault("SOURCE_DATE_EPOCH", "0")
    manifest: dict = {"figures": {}, "skipped": {}, "tables": [], "runs": int(len(df))}
    for name in FIGURES:
        result = draw(name, df)
        if isinstance(result, Skip):
            manifest["skipped"][name] = result.reason
            for fmt in FORMATS:
                (out / f"{name}.{fmt}").unlink(missing_ok=True)
            log(f"skipped {name}: {result.reason}")
            continue
        files = save(result, out / name)
        manifest["figures"][name] = [p.name for p in files]
        log(f"wrote {name}: " + ", ".join(str(p) for p in files))
    table = pareto_table(df)
    _write_text(out / "pareto_points.md", table_markdown(table))
    _write_text(out / "pareto_points.tex", table_latex(table))
    points_table(df).to_csv(out / "points.csv", index=False, float_format="%.10g",
                            lineterminator="\n")
    write_runs_csv(df, out / "runs.csv")
    manifest["tables"] = ["pareto_points.md", "pareto_points.tex", "points.csv", "runs.csv"]
    _write_text(out / "figures.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    log(f"wrote Pareto table ({len(table)} front points) and points.csv -> {out}")
    return manifest


# --------------------------------------------------------------------------- CLI
def add_source_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (e.g. sqlite:///results/mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment = ablation (or search) name")
    p.add_argument("--runs-csv", help="a recorded runs table (runs.csv) instead of MLflow")


def add_parser(sub) -> None:
    p = sub.add_parser("figures", help="redraw every paper figure + the Pareto table from the "
                       "tracked runs", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.analysis.data import read_source

    df = read_source(args.tracking_uri, args.experiment, args.runs_csv)
    if df.empty:
        raise UserError("no runs to plot (the experiment has no runs tagged pipelines.role=run "
                        "or trial)")
    render_all(df, args.out)
    return 0
