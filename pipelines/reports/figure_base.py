"""What every figure function shares (kept apart so method figures import no figure module):
:class:`Skip`, the grid runs of an analysis, setting means drawn with their intervals, and the
tracked per-stage encoder GFLOPs columns."""
from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from pipelines import contract
from pipelines.analysis.settings import ONE_SEED


@dataclass
class Skip:
    """A figure that cannot be drawn yet (its runs do not exist)."""

    reason: str


def grid_points(runs: pd.DataFrame) -> pd.DataFrame:
    """The grid runs (the Optuna trials have their own figure)."""
    return runs[runs["role"] == contract.ROLE_RUN]


def errorbars(ax, pts: pd.DataFrame, x: str, y: str, color: str, marker: str,
               label: str | None = None, annotate: bool = True) -> None:
    """Setting means with their 95 % intervals; a one-seed setting as a hollow marker, labelled."""
    many = pts[pts["n_seeds"] >= 2]
    one = pts[pts["n_seeds"] < 2]
    if len(many):
        yerr = [(many[y] - many[f"{y}_lo"]).fillna(0).clip(lower=0),
                (many[f"{y}_hi"] - many[y]).fillna(0).clip(lower=0)]
        xerr = None
        if f"{x}_lo" in many and many[f"{x}_lo"].notna().any():
            xerr = [(many[x] - many[f"{x}_lo"]).fillna(0).clip(lower=0),
                    (many[f"{x}_hi"] - many[x]).fillna(0).clip(lower=0)]
        ax.errorbar(many[x], many[y], yerr=yerr, xerr=xerr, fmt=marker, color=color, ms=6,
                    capsize=3, elinewidth=1.0, label=label, zorder=3)
        label = None
    if len(one):
        ax.scatter(one[x], one[y], marker=marker, s=40, facecolors="white", edgecolors=color,
                   linewidths=1.2, label=label, zorder=3)
        if annotate:
            for _, r in one.iterrows():
                ax.annotate(ONE_SEED, (r[x], r[y]), xytext=(4, -9), textcoords="offset points",
                            fontsize=6, color=color)


def stage_columns(df: pd.DataFrame) -> list[str]:
    """Tracked per-stage encoder GFLOPs, e.g. ``gflops_encoder_stage1`` (when the flops stage
    logs them)."""
    pat = re.compile(r"^gflops_encoder[._]stage(\d+)$")
    cols = [c for c in df.columns if pat.match(c) and df[c].notna().any()]
    return sorted(cols, key=lambda c: int(pat.match(c).group(1)))
