"""The Pareto tables of an ablation: every plotted run and the points of every front.

``points_table`` (every grid run with its setting and front memberships: ``points.csv``),
``pareto_table`` (the points of every front, per variant and overall, with their run ids and
MLflow run ids) and its markdown and LaTeX forms (``pareto_points.md`` / ``.tex``), written by
``python -m pipelines figures`` (:func:`pipelines.reports.figures.render_all`).
"""
from __future__ import annotations

import json

import pandas as pd

from pipelines import contract
from pipelines.analysis.data import METHODS_COLUMN
from pipelines.analysis.settings import INTERVAL_NAME, ONE_SEED, TEST_NAME, Analysis, analyse
from pipelines.data.synthetic import SMALL_CLASSES
from pipelines.reports.figure_base import grid_points

TABLE_COLUMNS = ("front", "knee", "setting", "variant", "series", "n_seeds", "seeds", "miou",
                 "miou_lo", "miou_hi",
                 *(f"iou.{c}{s}" for c in SMALL_CLASSES for s in ("", "_lo", "_hi")),
                 "gflops_total", "latency_ms", "train_hours", "verdict", "vs_baseline",
                 "not_distinct_from", "run_ids", "mlflow_run_ids", "experiment_id")


def _analysis(data) -> Analysis:
    """An :class:`Analysis` as is, or one built (once) from a runs table."""
    return data if isinstance(data, Analysis) else analyse(data)


def points_table(data) -> pd.DataFrame:
    """Every grid run with its setting and its setting's front memberships."""
    a = _analysis(data)
    runs = grid_points(a.runs)
    fronts = a.fronts
    from pipelines.analysis.data import axis_names

    axes = [n for n in axis_names(runs) if n != contract.SEED]
    cols = ["run_id", "mlflow_run_id", "experiment_id", "variant", "series", METHODS_COLUMN,
            "baseline", "setting", *axes, contract.SEED, "miou",
            *(f"iou.{c}" for c in SMALL_CLASSES), "gflops_total", "gflops_encoder",
            "gflops_pixel_decoder", "latency_ms", "train_time_s"]
    out = runs.reindex(columns=list(dict.fromkeys(cols))).copy()
    variant_fronts = set(fronts.loc[fronts["front"] != "overall", "setting"]) if len(fronts) \
        else set()
    overall = fronts[fronts["front"] == "overall"] if len(fronts) else fronts
    out["pareto_variant"] = out["setting"].isin(variant_fronts)
    out["pareto_overall"] = out["setting"].isin(set(overall["setting"]) if len(overall) else [])
    knees = set(overall.loc[overall["knee"], "setting"]) if len(overall) else set()
    out["knee_overall"] = out["setting"].isin(knees)
    return out.sort_values(["series", "gflops_total", "setting", "seed", "run_id"],
                           kind="stable", na_position="last").reset_index(drop=True)


def pareto_table(data) -> pd.DataFrame:
    """The settings on every front (overall first, then per variant), means and intervals."""
    a = _analysis(data)
    if a.fronts.empty:
        return pd.DataFrame(columns=list(TABLE_COLUMNS))
    fronts = a.fronts[["front", "knee", "setting"]].merge(a.settings, on="setting", how="left")
    fronts = fronts.merge(a.verdicts, on="setting", how="left")
    order = {name: i for i, name in enumerate(["overall", *a.series["series"]])}
    fronts = fronts.assign(_o=fronts["front"].map(lambda f: order.get(f, len(order))))
    fronts = fronts.sort_values(["_o", "front", "gflops_total", "setting"], kind="stable")
    return fronts.reindex(columns=list(TABLE_COLUMNS)).reset_index(drop=True)


def _fmt(value, digits: int = 2) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, (bool,)):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_interval(row, metric: str, digits: int = 2) -> str:
    """``mean [lo, hi]``, or ``mean (1 seed, no interval)``, or ``–``."""
    mean = row.get(metric, None)
    if mean is None or mean is pd.NA or (isinstance(mean, float) and mean != mean):
        return "–"
    lo, hi = row.get(f"{metric}_lo", None), row.get(f"{metric}_hi", None)
    if lo is None or lo is pd.NA or (isinstance(lo, float) and lo != lo):
        return f"{mean:.{digits}f} ({ONE_SEED})"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


TABLE_HEAD = ("front", "knee", "setting", "seeds", "mIoU (%) [95 % CI]",
              *(f"IoU {c} (%)" for c in SMALL_CLASSES), "GFLOPs", "latency (ms)",
              "train hours", "front verdict", "vs baseline", "MLflow run ids")


def _table_cells(r) -> list[str]:
    ids = " ".join(json.loads(r["mlflow_run_ids"])) if isinstance(r["mlflow_run_ids"], str) \
        else ""
    return [r["front"], "★" if r["knee"] else "", r["setting"], _fmt(r["n_seeds"]),
            fmt_interval(r, "miou"), *(fmt_interval(r, f"iou.{c}") for c in SMALL_CLASSES),
            _fmt(r["gflops_total"], 3), _fmt(r["latency_ms"], 1), _fmt(r["train_hours"], 3),
            _fmt(r["verdict"]) if isinstance(r["verdict"], str) else "",
            r["vs_baseline"] if isinstance(r["vs_baseline"], str) else "", ids]


def table_markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(TABLE_HEAD) + " |", "|" + "---|" * len(TABLE_HEAD)]
    for _, r in table.iterrows():
        cells = _table_cells(r)
        cells[-1] = " ".join(f"`{i}`" for i in cells[-1].split())
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    lines += ["", f"Means over seeds; interval: {INTERVAL_NAME}. Fronts on the means. "
              f"Front verdict (overall front): {TEST_NAME}. Train hours: sum of the seeds' "
              "training wall time (CPU-hours on the CPU)."]
    return "\n".join(lines) + "\n"


def _tex(text) -> str:
    """Escape LaTeX specials in table cells."""
    out = []
    for ch in str(text):
        out.append({"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&",
                    "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}", "~": r"\~{}",
                    "^": r"\^{}", "β": r"$\beta$", "–": "--", "★": r"$\star$",
                    "Δ": r"$\Delta$", "α": r"$\alpha$"}.get(ch, ch))
    return "".join(out)


def table_latex(table: pd.DataFrame) -> str:
    lines = [
        "% generated by `python -m pipelines figures`; do not edit",
        r"\begin{tabular}{" + "l" * 4 + "r" * (len(TABLE_HEAD) - 7) + "lll}",
        r"\toprule",
        " & ".join(_tex(h) for h in TABLE_HEAD) + r" \\",
        r"\midrule",
    ]
    previous = None
    for _, r in table.iterrows():
        if previous is not None and r["front"] != previous:
            lines.append(r"\midrule")
        previous = r["front"]
        cells = [_tex(c) for c in _table_cells(r)]
        cells[-1] = " ".join(r"\texttt{" + i + "}" for i in cells[-1].split())
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", "% " + _tex(TEST_NAME), ""]
    return "\n".join(lines)



