"""ECO-M2F's trade-off figure: mIoU against mean GFLOPs per image for the exit ladder (every fixed
exit), the gated model at each beta, and the oracle gate (each image at its derived label's exit).

Drawn from the tidy runs table (:mod:`pipelines.analysis.data`): a gated run's ``miou`` and
``gflops_total`` (the mean per image at the gated exits, gate included) and the ladder and
oracle metrics ``evaluate-gated`` writes and ``ingest`` logs under
:data:`pipelines.contract.LADDER_METRIC` / :data:`pipelines.contract.ORACLE_METRIC`. Runs of the
same beta (seeds) are averaged; a table without ladder or oracle columns still shows the gated
points. Registered in :data:`pipelines.figures.FIGURES` as ``eco_m2f_tradeoff``.
"""
from __future__ import annotations

import re

import pandas as pd

from pipelines import contract as c

GFLOPS_TOTAL = "gflops_total"


def ladder_exits(columns) -> list[int]:
    """The exits ``k`` with a ladder mIoU column, sorted."""
    pattern = (re.escape(c.LADDER_METRIC).replace(r"\{exit\}", r"(\d+)")
               .replace(r"\{metric\}", re.escape(c.MIOU)))
    return sorted(int(m.group(1)) for col in columns if (m := re.fullmatch(pattern, str(col))))


def tradeoff_points(runs: pd.DataFrame) -> dict:
    """The figure's data from the gated runs: ``ladder`` (exit, GFLOPs, mIoU), ``gated`` and
    ``oracle`` (beta, GFLOPs, mIoU, runs), each averaged over the runs (seeds) of a beta."""
    gated = runs.dropna(subset=["beta", c.MIOU, GFLOPS_TOTAL])
    ladder = []
    for k in ladder_exits(gated.columns):
        x = c.LADDER_METRIC.format(exit=k, metric=GFLOPS_TOTAL)
        y = c.LADDER_METRIC.format(exit=k, metric=c.MIOU)
        pts = gated.dropna(subset=[x, y]) if x in gated else gated.iloc[:0]
        if len(pts):
            ladder.append((k, float(pts[x].astype(float).mean()),
                           float(pts[y].astype(float).mean())))

    def by_beta(x: str, y: str) -> list[tuple]:
        if x not in gated or y not in gated:
            return []
        pts = gated.dropna(subset=[x, y])
        grouped = pts.groupby(pts["beta"].astype(float), sort=True)
        return [(float(beta), float(g[x].astype(float).mean()), float(g[y].astype(float).mean()),
                 len(g)) for beta, g in grouped]

    oracle = by_beta(c.ORACLE_METRIC.format(metric=GFLOPS_TOTAL),
                     c.ORACLE_METRIC.format(metric=c.MIOU))
    return {"ladder": ladder, "gated": by_beta(GFLOPS_TOTAL, c.MIOU), "oracle": oracle}


def fig_eco_m2f_tradeoff(a, plt):
    """mIoU vs mean GFLOPs: exit ladder, gated model per beta, oracle per beta."""
    from pipelines.figures import Skip, _points, variant_style

    runs = _points(a.runs)
    data = tradeoff_points(runs[runs["variant"] == "eco_m2f"])
    if not data["gated"]:
        return Skip("no gated ECO-M2F runs (beta, mIoU and mean GFLOPs) yet")
    _, color, marker = variant_style("eco_m2f")
    fig, ax = plt.subplots(figsize=(5.6, 3.8), layout="constrained")
    if data["ladder"]:
        ks, xs, ys = zip(*data["ladder"])
        ax.plot(xs, ys, color="#4d4d4d", marker="o", markersize=4, linewidth=1,
                label="fixed exit k (ladder)")
        for k, x, y in data["ladder"]:
            ax.annotate(f"k={k}", (x, y), textcoords="offset points", xytext=(5, -10),
                        ha="left", fontsize=7, color="#4d4d4d")
    _, xs, ys, _ = zip(*data["gated"])
    ax.plot(xs, ys, color=color, marker=marker, linestyle="none", markersize=7,
            label="gated (per β)")
    if data["oracle"]:
        _, oxs, oys, _ = zip(*data["oracle"])
        ax.plot(oxs, oys, color=color, marker=marker, linestyle="none", markersize=7,
                markerfacecolor="none", label="oracle gate (per β)")
    for beta, x, y, n in data["gated"]:
        seeds = f", {n} seeds" if n > 1 else ""
        ax.annotate(f"β={beta:g}{seeds}", (x, y), textcoords="offset points", xytext=(5, 4),
                    fontsize=7, color=color)
    ax.set_xlabel("mean GFLOPs per image (total)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("ECO-M2F: gate vs. fixed exits and oracle")
    ax.margins(x=0.08, y=0.12)
    ax.legend(loc="best")
    return fig
