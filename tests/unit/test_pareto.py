"""Pareto fronts, hypervolume and knee point on small hand-checked sets."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from pipelines.analysis import pareto


def table(points, variant="a"):
    """(gflops, miou) pairs -> a runs table."""
    return pd.DataFrame({"run_id": [f"r{i}" for i in range(len(points))],
                         "mlflow_run_id": [f"m{i}" for i in range(len(points))],
                         "variant": variant,
                         "gflops_total": [p[0] for p in points],
                         "miou": [p[1] for p in points]})


def brute_force_front(points):
    """Test oracle: i is on the front unless some j is no worse on both and better on one."""
    keep = []
    for i, (ci, ai) in enumerate(points):
        dominated = any(cj <= ci and aj >= ai and (cj < ci or aj > ai)
                        for j, (cj, aj) in enumerate(points) if j != i)
        if not dominated and not (math.isnan(ci) or math.isnan(ai)):
            keep.append(i)
    return keep


def test_front_of_a_known_set():
    df = table([(1, 50), (2, 60), (2, 55), (3, 58), (4, 70), (0.5, 10)])
    mask = pareto.pareto_mask(df)
    assert list(df.index[mask]) == [0, 1, 4, 5]
    front = pareto.pareto_front(df)
    assert list(front["run_id"]) == ["r5", "r0", "r1", "r4"]  # sorted by GFLOPs


def test_front_matches_definition_on_random_sets():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pts = [(float(c), float(a)) for c, a in rng.integers(0, 6, size=(12, 2))]
        df = table(pts)
        assert list(df.index[pareto.pareto_mask(df)]) == brute_force_front(pts)


def test_ties_kept_and_missing_metrics_never_on_front():
    df = table([(1, 50), (1, 50), (float("nan"), 99), (0.1, float("nan"))])
    assert list(pareto.pareto_mask(df)) == [True, True, False, False]
    assert pareto.pareto_mask(table([])).empty


def test_hypervolume_of_a_staircase():
    df = table([(1, 50), (2, 60)])
    # area dominated up to (3 GFLOPs, 0 mIoU): 2*50 + 1*(60-50)
    assert pareto.hypervolume(df, ref=(3.0, 0.0)) == pytest.approx(110.0)
    # a dominated point and a point beyond the reference add nothing
    more = table([(1, 50), (2, 60), (2.5, 40), (5, 99)])
    assert pareto.hypervolume(more, ref=(3.0, 0.0)) == pytest.approx(110.0)
    assert pareto.hypervolume(table([]), ref=(3.0, 0.0)) == 0.0


def test_default_reference_point():
    assert pareto.reference_point(table([(1, 50), (10, 60)])) == (pytest.approx(11.0), 0.0)


def test_knee_is_the_point_farthest_from_the_chord():
    df = table([(0, 0), (1, 9), (10, 10), (5, 9.5)])
    assert df.loc[pareto.knee_point(pareto.pareto_front(df)), "run_id"] == "r1"
    # a straight front has every point on the chord: the first of the tied maxima is kept
    two = table([(1, 50), (2, 60)])
    assert pareto.knee_point(two) in two.index
    assert pareto.knee_point(table([])) is None


def test_fronts_by_variant_and_overall_with_one_knee_each():
    df = pd.concat([table([(1, 50), (2, 60), (3, 55)], "a"),
                    table([(1.5, 58), (4, 61)], "b")], ignore_index=True)
    df["run_id"] = [f"r{i}" for i in range(len(df))]
    fronts = pareto.fronts_by(df)
    assert sorted(fronts["front"].unique()) == ["a", "b", "overall"]
    assert fronts.groupby("front")["knee"].sum().eq(1).all()
    overall = fronts[fronts["front"] == "overall"]
    assert list(overall["run_id"]) == ["r0", "r3", "r1", "r4"]


def test_hypervolume_history_never_decreases():
    rng = np.random.default_rng(1)
    trials = table([(float(c), float(a)) for c, a in rng.uniform(1, 10, size=(8, 2))])
    trials["trial_number"] = list(range(8))[::-1]
    hist = pareto.hypervolume_history(trials)
    assert list(hist["trainings"]) == list(range(1, 9))
    assert list(hist["trial_number"]) == list(range(8))
    assert all(b >= a for a, b in itertools.pairwise(hist["hypervolume"]))
    assert hist["hypervolume"].iloc[-1] == pytest.approx(pareto.hypervolume(trials))
