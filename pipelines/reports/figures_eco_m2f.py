"""ECO-M2F's figures, for every run that builds the ``early_exit`` method (whatever its variant is
called, alone or combined with PRO-SCALE):

* ``eco_m2f_exits``: the exit histogram per beta and the mean exit layer against beta;
* ``eco_m2f_tradeoff``: mIoU against mean GFLOPs per image for the exit ladder (every fixed
  exit), the gated model at each beta, and the oracle gate (each image at its derived label's
  exit).

Drawn from an :class:`~pipelines.analysis.settings.Analysis`: a gated run's ``miou`` and
``gflops_total`` (the mean per image at the gated exits, gate included) from ``runs``, the ladder
and the oracle from its structured ``ladder`` table (:mod:`pipelines.analysis.ladder`). Runs of
the same series and beta (seeds) are averaged; one colour per series.
"""
from __future__ import annotations

import pandas as pd

from pipelines import contract as c
from pipelines.analysis.data import exit_histogram
from pipelines.analysis.ladder import LADDER, ORACLE
from pipelines.analysis.roles import uses
from pipelines.reports.figure_base import Skip, grid_points

METHOD = "early_exit"
GFLOPS_TOTAL = "gflops_total"


def _eco_runs(a) -> pd.DataFrame:
    runs = grid_points(a.runs)
    return runs[uses(runs, METHOD)]


def tradeoff_points(runs: pd.DataFrame, ladder: pd.DataFrame) -> dict:
    """The figure's data for the gated runs of one series: ``ladder`` (exit, GFLOPs, mIoU),
    ``gated`` and ``oracle`` (beta, GFLOPs, mIoU, runs), each averaged over the runs (seeds)."""
    gated = runs.dropna(subset=["beta", c.MIOU, GFLOPS_TOTAL])
    rows = ladder[ladder["run_id"].isin(set(gated["run_id"]))]
    have = GFLOPS_TOTAL in rows and c.MIOU in rows
    steps = rows[rows["kind"] == LADDER].dropna(subset=[GFLOPS_TOTAL, c.MIOU]) if have else \
        rows.iloc[:0]
    out_ladder = [(int(k), float(g[GFLOPS_TOTAL].mean()), float(g[c.MIOU].mean()))
                  for k, g in steps.groupby("exit", sort=True)]

    def by_beta(table: pd.DataFrame) -> list[tuple]:
        grouped = table.groupby(table["beta"].astype(float), sort=True)
        return [(float(beta), float(g[GFLOPS_TOTAL].astype(float).mean()),
                 float(g[c.MIOU].astype(float).mean()), len(g)) for beta, g in grouped]

    oracle = rows[rows["kind"] == ORACLE].dropna(subset=[GFLOPS_TOTAL, c.MIOU]) if have else \
        rows.iloc[:0]
    oracle = oracle.merge(gated[["run_id", "beta"]], on="run_id")
    return {"ladder": out_ladder, "gated": by_beta(gated), "oracle": by_beta(oracle)}


def fig_eco_m2f_tradeoff(a, plt):
    """mIoU vs mean GFLOPs: exit ladder, gated model per beta, oracle per beta (per series)."""
    eco = _eco_runs(a)
    data = {name: tradeoff_points(eco[eco["series"] == name], a.ladder)
            for name in a.ordered_series(eco["series"])}
    data = {name: d for name, d in data.items() if d["gated"]}
    if not data:
        return Skip("no gated ECO-M2F runs (beta, mIoU and mean GFLOPs) yet")
    fig, ax = plt.subplots(figsize=(5.6, 3.8), layout="constrained")
    for name, d in data.items():
        color, marker = a.style(name)
        tag = f" {name}" if len(data) > 1 else ""
        if d["ladder"]:
            ks, xs, ys = zip(*d["ladder"])
            ax.plot(xs, ys, color="#4d4d4d", marker="o", markersize=4, linewidth=1,
                    label=f"fixed exit k (ladder){tag}")
            for k, x, y in d["ladder"]:
                ax.annotate(f"k={k}", (x, y), textcoords="offset points", xytext=(5, -10),
                            ha="left", fontsize=7, color="#4d4d4d")
        _, xs, ys, _ = zip(*d["gated"])
        ax.plot(xs, ys, color=color, marker=marker, linestyle="none", markersize=7,
                label=f"gated (per β){tag}")
        if d["oracle"]:
            _, oxs, oys, _ = zip(*d["oracle"])
            ax.plot(oxs, oys, color=color, marker=marker, linestyle="none", markersize=7,
                    markerfacecolor="none", label=f"oracle gate (per β){tag}")
        for beta, x, y, n in d["gated"]:
            seeds = f", {n} seeds" if n > 1 else ""
            ax.annotate(f"β={beta:g}{seeds}", (x, y), textcoords="offset points", xytext=(5, 4),
                        fontsize=7, color=color)
    ax.set_xlabel("mean GFLOPs per image (total)")
    ax.set_ylabel("mIoU (%)")
    ax.set_title("ECO-M2F: gate vs. fixed exits and oracle")
    ax.margins(x=0.08, y=0.12)
    ax.legend(loc="best")
    return fig


def fig_eco_m2f_exits(a, plt):
    """Exit histogram per beta (left) and mean exit layer against beta (right), per series."""
    eco = _eco_runs(a)
    hists = [(row, exit_histogram(row)) for _, row in eco.iterrows()]
    hists = [(row, h) for row, h in hists if h]
    if eco.empty or (not hists and eco[c.MEAN_EXIT].isna().all()):
        return Skip("no ECO-M2F runs with an exit histogram or mean_exit yet")
    order = {name: i for i, name in enumerate(a.ordered_series(eco["series"]))}
    several = len(order) > 1
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7.6, 3.4), layout="constrained")
    hists.sort(key=lambda rh: (order[rh[0]["series"]],
                               rh[0]["beta"] if pd.notna(rh[0]["beta"]) else -1,
                               str(rh[0]["setting"]), rh[0]["seed"]))
    layers = sorted({k for _, h in hists for k in h})
    width = 0.8 / max(1, len(hists))
    cmap = plt.get_cmap("Reds")
    for i, (row, h) in enumerate(hists):
        total = sum(h.values()) or 1
        xs = [layer - 0.4 + width * (i + 0.5) for layer in layers]
        label = f"β={row['beta']:g}" if pd.notna(row["beta"]) else str(row["setting"])
        ax1.bar(xs, [100.0 * h.get(layer, 0) / total for layer in layers], width=width,
                color=cmap(0.35 + 0.6 * i / max(1, len(hists) - 1)),
                label=f"{row['series']} {label}" if several else label)
    if hists:
        ax1.set_xticks(layers)
        top = max(100.0 * v / (sum(h.values()) or 1) for _, h in hists for v in h.values())
        ax1.set_ylim(0, top * 1.3 + 1)  # headroom: the legend sits above the bars
        ax1.legend(loc="upper center", ncols=min(3, len(hists)), columnspacing=0.8,
                   handlelength=1.2)
    ax1.set_xlabel("exit after encoder layer")
    ax1.set_ylabel("images (%)")
    ax1.set_title("Exit histogram per β")
    positive_all = []
    for name in order:
        pts = eco[eco["series"] == name].dropna(subset=["beta", c.MEAN_EXIT])
        if not len(pts):
            continue
        color, marker = a.style(name)
        agg = pts.groupby("beta", sort=True)[c.MEAN_EXIT].mean()
        ax2.plot(agg.index.astype(float), agg.to_numpy(), color=color, marker=marker,
                 label=name if several else None)
        positive_all += [b for b in agg.index.astype(float) if b > 0]
    if positive_all or eco[c.MEAN_EXIT].notna().any():
        # symlog: β = 0 (always the deepest exit, the gate's reference) stays on the axis,
        # which a log scale would drop
        ax2.set_xscale("symlog", linthresh=min(positive_all) if positive_all else 1e-3)
    if several:
        ax2.legend(loc="best", fontsize=7)
    ax2.set_xlabel("β (trade-off weight per layer; symlog: linear near 0)")
    ax2.set_ylabel("mean encoder layers per image")
    ax2.set_title("Mean exit layer vs β")
    return fig


#: name -> drawing function, drawn by ``python -m pipelines figures`` (the declaration in
#: ``pipelines/methods/early_exit.py`` names it)
FIGURES = {"eco_m2f_exits": fig_eco_m2f_exits, "eco_m2f_tradeoff": fig_eco_m2f_tradeoff}
