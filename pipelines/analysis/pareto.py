"""Pareto analysis of an ablation: non-dominated sets, hypervolume and the knee point.

Objectives (the same names as in MLflow and on the figure axes): maximise ``miou`` (percent),
minimise ``gflops_total`` (GFLOPs per image). pymoo does the work: its fast non-dominated sort
finds the first front and its ``HV`` indicator the hypervolume; both see minimisation problems,
so mIoU enters negated.

Definitions used in the paper figures:

* **Pareto front**: runs no other run beats on both objectives (ties on both are all kept).
  A run missing either metric is never on a front.
* **Hypervolume**: area dominated by the front and bounded by the reference point
  ``(gflops_ref, miou_ref)``; by default ``gflops_ref`` = 1.1 x the largest GFLOPs among the runs
  compared and ``miou_ref`` = 0, so the value is in GFLOPs x mIoU-points. Compare hypervolumes
  only under the same reference point (:func:`reference_point` of the pooled runs).
* **Knee point**: both objectives are min-max normalised over the front; the knee is the front
  point farthest from the straight line joining the front's two extreme points (the chord),
  i.e. where giving up compute starts to cost disproportionate accuracy. On fronts of one or two
  points (no chord to speak of) it is the point nearest the normalised utopia point (0, 1).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

ACCURACY = "miou"
COST = "gflops_total"


def _objectives(df: pd.DataFrame, accuracy: str, cost: str) -> tuple[np.ndarray, np.ndarray]:
    """Minimisation matrix ``[cost, -accuracy]`` of the rows with both metrics, and their mask."""
    acc = pd.to_numeric(df[accuracy], errors="coerce").to_numpy(dtype=float)
    flops = pd.to_numeric(df[cost], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(acc) & np.isfinite(flops)
    return np.column_stack([flops[ok], -acc[ok]]), ok


def pareto_mask(df: pd.DataFrame, accuracy: str = ACCURACY, cost: str = COST) -> pd.Series:
    """True for the rows on the Pareto front of ``df`` (max ``accuracy``, min ``cost``)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    F, ok = _objectives(df, accuracy, cost)
    mask = np.zeros(len(df), dtype=bool)
    if len(F):
        front = NonDominatedSorting().do(F, only_non_dominated_front=True)
        mask[np.flatnonzero(ok)[np.asarray(front, dtype=int)]] = True
    return pd.Series(mask, index=df.index, name="pareto")


def pareto_front(df: pd.DataFrame, accuracy: str = ACCURACY, cost: str = COST) -> pd.DataFrame:
    """The front's rows, sorted by increasing cost (then decreasing accuracy, then run id)."""
    front = df[pareto_mask(df, accuracy, cost).to_numpy()]
    keys = [cost, accuracy] + (["run_id"] if "run_id" in df.columns else [])
    return front.sort_values(keys, ascending=[True, False] + [True] * (len(keys) - 2),
                             kind="stable")


def fronts_by(df: pd.DataFrame, by: str = "variant", accuracy: str = ACCURACY,
              cost: str = COST) -> pd.DataFrame:
    """Every front at once: one per value of ``by`` and one ``overall``.

    Returns the front rows with a ``front`` column (the group value or ``"overall"``) and a
    boolean ``knee`` column; a run on both its variant's front and the overall one appears twice.
    """
    parts = []
    groups = [(str(k), g) for k, g in df.groupby(by, sort=True, dropna=False)]
    for name, group in [*groups, ("overall", df)]:
        front = pareto_front(group, accuracy, cost)
        if front.empty:
            continue
        front = front.assign(front=name, knee=False)
        knee = knee_point(front, accuracy, cost)
        if knee is not None:
            front.loc[knee, "knee"] = True
        parts.append(front)
    if not parts:
        return df.iloc[0:0].assign(front=pd.Series(dtype="string"), knee=pd.Series(dtype=bool))
    return pd.concat(parts).reset_index(drop=True)


def knee_point(front: pd.DataFrame, accuracy: str = ACCURACY, cost: str = COST):
    """Index label of the knee of a front (see the module docstring), or None when empty."""
    F, ok = _objectives(front, accuracy, cost)
    if not len(F):
        return None
    labels = front.index[ok]
    lo, hi = F.min(axis=0), F.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    N = (F - lo) / span                     # both in [0, 1], both "lower is better"
    order = np.lexsort((N[:, 1], N[:, 0]))  # by cost, then by accuracy
    N, labels = N[order], labels[order]
    a, b = N[0], N[-1]
    chord = b - a
    length = float(np.hypot(*chord))
    if len(N) < 3 or length == 0.0:
        return labels[int(np.argmin(np.hypot(N[:, 0], N[:, 1])))]
    # perpendicular distance of each point to the chord (2-D cross product / chord length)
    dist = np.abs(chord[0] * (N[:, 1] - a[1]) - chord[1] * (N[:, 0] - a[0])) / length
    return labels[int(np.argmax(dist))]


def reference_point(df: pd.DataFrame, accuracy: str = ACCURACY, cost: str = COST,
                    margin: float = 1.1) -> tuple[float, float]:
    """``(cost_ref, accuracy_ref)``: ``margin`` x the largest cost among ``df``, accuracy 0."""
    F, _ = _objectives(df, accuracy, cost)
    if not len(F):
        return (1.0, 0.0)
    return (float(F[:, 0].max() * margin), 0.0)


def hypervolume(df: pd.DataFrame, ref: tuple[float, float] | None = None,
                accuracy: str = ACCURACY, cost: str = COST) -> float:
    """Hypervolume (GFLOPs x mIoU points) of the runs in ``df`` w.r.t. ``ref`` (cost, accuracy).

    Points that do not dominate the reference point add nothing; no points gives 0.
    """
    from pymoo.indicators.hv import HV

    ref = reference_point(df, accuracy, cost) if ref is None else ref
    F, _ = _objectives(df, accuracy, cost)
    if not len(F):
        return 0.0
    return float(HV(ref_point=np.array([ref[0], -ref[1]], dtype=float))(F))


def hypervolume_history(trials: pd.DataFrame, ref: tuple[float, float] | None = None,
                        order: str = "trial_number", accuracy: str = ACCURACY,
                        cost: str = COST) -> pd.DataFrame:
    """Hypervolume of the first n trainings, for n = 1..len(trials), in ``order``.

    Returns columns ``trainings`` (n), ``order`` value, ``run_id``, ``hypervolume``.
    """
    trials = trials.sort_values([order, "run_id"], kind="stable")
    ref = reference_point(trials, accuracy, cost) if ref is None else ref
    rows = []
    for n in range(1, len(trials) + 1):
        rows.append({"trainings": n, order: trials[order].iloc[n - 1],
                     "run_id": trials["run_id"].iloc[n - 1],
                     "hypervolume": hypervolume(trials.iloc[:n], ref, accuracy, cost)})
    return pd.DataFrame(rows)
