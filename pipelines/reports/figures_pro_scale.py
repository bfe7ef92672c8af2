"""PRO-SCALE's figure, for the runs that build the ``pro_scale`` method and no other (its
declaration in ``pipelines/methods/pro_scale.py`` names :data:`FIGURES`):

* ``encoder_gflops_by_schedule``: tracked encoder GFLOPs per schedule (stacked by stage when the
  flops stage logged them), next to the baseline's.
"""
from __future__ import annotations

import pandas as pd

from pipelines.analysis.roles import uses
from pipelines.reports.figure_base import Skip, grid_points, stage_columns

METHOD = "pro_scale"


def fig_encoder_gflops_by_schedule(a, plt):
    runs = grid_points(a.runs)
    # the schedule's own effect: runs that build PRO-SCALE and no other method
    pro = runs[uses(runs, METHOD, only=True)].dropna(subset=["gflops_encoder"])
    if pro.empty:
        return Skip("no PRO-SCALE runs with a tracked gflops_encoder yet")
    base = runs[runs["baseline"].fillna(False).astype(bool)].dropna(subset=["gflops_encoder"])
    stages = stage_columns(pro)
    cols = ["gflops_encoder", *stages]
    rows = []
    if len(base):
        rows.append(("baseline (6 layers)", base[cols].mean(), len(base),
                     str(base["series"].iloc[0])))
    keyed = pro.assign(_trc=pro["trc"].fillna(False).astype(bool))

    def schedule_key(s: str):
        return tuple(int(p) if p.isdigit() else 0 for p in str(s).split("-"))

    for (schedule, trc), grp in sorted(keyed.groupby(["schedule", "_trc"]),
                                       key=lambda kv: (schedule_key(kv[0][0]), kv[0][1])):
        label = (schedule or "?") + (" +TRC" if trc else "")
        rows.append((label, grp[cols].mean(), len(grp), str(grp["series"].iloc[0])))
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
        colors = [a.style(r[3])[0] for r in rows]
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


#: name -> drawing function, drawn by ``python -m pipelines figures``
FIGURES = {"encoder_gflops_by_schedule": fig_encoder_gflops_by_schedule}
