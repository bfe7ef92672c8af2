"""Pareto order of a rung's results, for the multi-fidelity search's promotions.

Non-dominated sorting on (val mIoU at the rung, up; GFLOPs, down), ties within a front broken by
each point's exclusive hypervolume contribution (reference: mIoU 0, GFLOPs = the budget), larger
first: MOASHA's promotion rule (Schmucker et al. 2021), used by
:class:`pipelines.search.fidelity.FidelitySearch`.
"""
from __future__ import annotations

from typing import Mapping


def hypervolume(points, budget: float) -> float:
    """Hypervolume of the feasible (gflops <= budget) points ``[(miou, gflops)]``; reference
    point (mIoU 0, GFLOPs = budget), both objectives turned into minimisation."""
    import numpy as np
    from pymoo.indicators.hv import HV

    feasible = [(-m, g) for m, g in points if g <= budget and m > 0]
    if not feasible:
        return 0.0
    return float(HV(ref_point=np.array([0.0, budget]))(np.array(feasible)))


def pareto_ranks(points: list[tuple[float, float]]) -> list[int]:
    """Non-dominated sorting of ``[(miou, gflops)]`` (mIoU up, GFLOPs down): 0 = the front."""
    ranks = [-1] * len(points)
    left, rank = set(range(len(points))), 0
    while left:
        front = [i for i in left if not any(
            points[j][0] >= points[i][0] and points[j][1] <= points[i][1]
            and points[j] != points[i] for j in left)]
        for i in front:
            ranks[i] = rank
        left -= set(front)
        rank += 1
    return ranks


def hv_contributions(points: list[tuple[float, float]], budget: float) -> list[float]:
    """Each point's exclusive hypervolume contribution within its own front (reference: mIoU 0,
    GFLOPs ``budget``); a point equal to another of its front contributes 0."""
    ranks = pareto_ranks(points)
    out = [0.0] * len(points)
    for rank in set(ranks):
        front = sorted((i for i in range(len(points)) if ranks[i] == rank),
                       key=lambda i: (points[i][1], -points[i][0]))
        for k, i in enumerate(front):
            miou, gflops = points[i]
            lower = points[front[k - 1]][0] if k else 0.0
            upper = points[front[k + 1]][1] if k + 1 < len(front) else budget
            if (k and points[front[k - 1]] == points[i]) or (
                    k + 1 < len(front) and points[front[k + 1]] == points[i]):
                continue
            out[i] = max(0.0, miou - lower) * max(0.0, upper - gflops)
    return out


def pareto_order(points: list[tuple[float, float]], budget: float) -> list[int]:
    """Indices of ``points`` best first: by front, then by hypervolume contribution."""
    ranks, contrib = pareto_ranks(points), hv_contributions(points, budget)
    return sorted(range(len(points)), key=lambda i: (ranks[i], -contrib[i], points[i][1]))


def promotable(results: Mapping[str, float], gflops: Mapping[str, float], promoted: set[str],
               eta: float, budget: float) -> list[str]:
    """ASHA's rule with MOASHA's order: the settings among the first ``floor(n / eta)`` of a
    rung's ``n`` results in Pareto order that were not promoted yet, best first."""
    ids = list(results)
    top = int(len(ids) // eta)
    if top < 1:
        return []
    order = pareto_order([(results[i], gflops[i]) for i in ids], budget)
    return [ids[k] for k in order[:top] if ids[k] not in promoted]
