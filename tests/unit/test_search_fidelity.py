"""Multi-fidelity search: Pareto order, ASHA-style promotion, the fidelity block, and a replay
against the recorded learning curves (tests/data/grid_curves*.csv)."""
from __future__ import annotations

import itertools
import random

import pytest

from pipelines.benchmarks.search_replay import hypervolume
from pipelines.errors import UserError
from pipelines.search_fidelity import (hv_contributions, pareto_order, pareto_ranks,
                                       parse_fidelity, promotable)


def _random_points(seed, n=12):
    rng = random.Random(seed)
    return [(round(rng.uniform(0, 60), 1), round(rng.uniform(0.1, 0.6), 2)) for _ in range(n)]


@pytest.mark.parametrize("seed", range(5))
def test_pareto_ranks_are_non_dominated_sorting(seed):
    points = _random_points(seed)
    ranks = pareto_ranks(points)

    def dominates(a, b):
        return a[0] >= b[0] and a[1] <= b[1] and a != b

    for i, j in itertools.permutations(range(len(points)), 2):
        if dominates(points[i], points[j]):
            assert ranks[i] < ranks[j]
    for i in range(len(points)):  # every point below the front is dominated by the one above
        if ranks[i]:
            assert any(dominates(points[j], points[i]) for j in range(len(points))
                       if ranks[j] == ranks[i] - 1)


@pytest.mark.parametrize("seed", range(5))
def test_hv_contribution_is_what_the_front_loses_without_the_point(seed):
    points = _random_points(seed)
    ranks, contrib = pareto_ranks(points), hv_contributions(points, 0.65)
    front = [p for p, r in zip(points, ranks) if r == 0]
    whole = hypervolume(front, 0.65)
    for p, r, c in zip(points, ranks, contrib):
        if r == 0:
            rest = [q for q in front if q != p]
            assert c == pytest.approx(whole - hypervolume(rest, 0.65), abs=1e-9)


def test_promotion_takes_the_first_1_over_eta_in_pareto_order_once():
    results = {"a": 50.0, "b": 40.0, "c": 30.0, "d": 10.0, "e": 45.0}
    gflops = {"a": 0.5, "b": 0.3, "c": 0.2, "d": 0.6, "e": 0.5}
    order = pareto_order([(results[k], gflops[k]) for k in results], 0.65)
    assert [list(results)[i] for i in order][-1] == "d"  # dominated by every other
    assert promotable(results, gflops, set(), 2, 0.65) == [list(results)[i] for i in order[:2]]
    first = promotable(results, gflops, set(), 2, 0.65)[0]
    assert first not in promotable(results, gflops, {first}, 2, 0.65)
    assert promotable({"a": 1.0}, {"a": 0.1}, set(), 2, 0.65) == []  # floor(1 / 2) = 0


def test_the_fidelity_block_adds_the_full_budget_and_refuses_bad_rungs():
    f = parse_fidelity({"rungs": [12, 24, 48], "eta": 3}, 100)
    assert f.rungs == (12, 24, 48, 100) and f.eta == 3 and f.full == 100
    assert [f.cost(k) for k in range(4)] == [12, 12, 24, 52]
    assert parse_fidelity(None, 100) is None
    for bad, words in (({"rungs": [24, 12]}, "increasing"), ({"rungs": [12, 200]}, "increasing"),
                       ({"rungs": "12"}, "list of iterations"), ({"rungs": [12], "eta": 1},
                                                                  "eta"),
                       ({"rungs": [12], "proposals": "grid"}, "proposals"),
                       ({"rungs": [12], "speed": 1}, "unknown key")):
        with pytest.raises(UserError, match=words):
            parse_fidelity(bad, 100)
