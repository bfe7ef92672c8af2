"""From a proposed setting to the grid's run, its cost, and its result on disk.

* :func:`make_run`: one ``(variant, settings)`` -> the :class:`pipelines.grid.Run` the grid would
  make of it (same run id, same recipe), by expanding a one-point ablation built on the search's
  base ablation. The grid's own checks (unknown variant or key, bad value) apply.
* :class:`FlopsCache`: GFLOPs of a run from the real FLOPs counter (``pipelines.stages.flops``,
  in-process), traced from the run's rendered config and cached on disk by its training recipe
  and the input shape, so a setting proposed again is traced once.
* :func:`read_result`: the metrics a finished run left in the results folder, if any.
"""
from __future__ import annotations

import copy
import itertools
import json
import os
from pathlib import Path
from typing import Any, Mapping

from pipelines.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def variant_block(ablation: Mapping[str, Any], variant: str) -> dict:
    """The base ablation's block of ``variant`` without its axes and points (config, ...)."""
    block = dict(((ablation.get("grid") or {}).get("variants") or {}).get(variant) or {})
    return {k: copy.deepcopy(block[k]) for k in ("config", "max_iters", "cfg_options")
            if k in block}


def point_ablation(ablation: Mapping[str, Any], points: list[tuple[str, Mapping[str, Any]]],
                   name: str | None = None) -> dict:
    """An ablation over exactly ``points`` (``[(variant, settings)]``) on ``ablation``'s recipe,
    written with the grid's ``points:`` lists (the base grid's own axes are dropped)."""
    out = copy.deepcopy(dict(ablation))
    if name:
        out["name"] = name
    variants: dict[str, dict] = {}
    for variant, settings in points:
        block = variants.setdefault(variant, {**variant_block(ablation, variant), "points": []})
        block["points"].append({"seed": 0, **settings})  # the grid's default seed, spelt out
    out["grid"] = {"variants": variants}
    return out


def make_run(spec, variant: str, settings: Mapping[str, Any]):
    """The grid's run for one setting (same id and recipe as a grid run of the same setting)."""
    from pipelines.grid import expand_grid

    runs = expand_grid(point_ablation(spec.ablation, [(variant, settings)]), repo=REPO)
    if len(runs) != 1:
        raise UserError(f"{variant} {dict(settings)}: expected one run, the grid made {len(runs)}")
    return runs[0]


def result_paths(ablation: Mapping[str, Any], run):
    from pipelines.grid import RunPaths

    return RunPaths.of(str(ablation.get("results", "results")), str(ablation["name"]), run)


def read_result(ablation: Mapping[str, Any], run) -> dict | None:
    """``metrics.json`` of a finished run of ``ablation`` (``None`` if it has not finished)."""
    path = result_paths(ablation, run).metrics
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and "miou" in data else None


class FlopsCache:
    """GFLOPs of runs, traced by :mod:`pipelines.stages.flops` in this process and cached in a JSON file.

    Args:
        path: the cache file (``None``: in memory only).
        shape: input (H, W) to trace at (the base ablation's ``flops.shape``).
    """

    def __init__(self, *, path: str | os.PathLike | None, shape) -> None:
        self.path = Path(path) if path else None
        self.shape = tuple(int(s) for s in shape)
        self.traced = 0  # number of real traces done by this object (the rest came from cache)
        self._cache: dict[str, dict] = {}
        if self.path and self.path.is_file():
            try:
                self._cache = json.loads(self.path.read_text())
            except ValueError:
                self._cache = {}

    def key(self, run) -> str:
        """A run's key: its training recipe (what its config renders to) and the shape."""
        return f"{run.train_recipe}-{'x'.join(str(s) for s in self.shape)}"

    def gflops(self, run) -> dict:
        """``{part: GFLOPs}`` of ``run``'s model (``total``, ``pixel_decoder``, ...), traced from
        its rendered config (the text its training will read)."""
        from pipelines.grid.render import load_rendered, render_run
        from pipelines.stages.flops import flops_report

        key = self.key(run)
        if key not in self._cache:
            cfg = load_rendered(render_run(run, REPO))
            self._cache[key] = flops_report(cfg, self.shape)["gflops"]
            self.traced += 1
            if self.path:
                from pipelines.config import write_json_atomic

                write_json_atomic(self.path, self._cache)
        return dict(self._cache[key])


def make_runs(spec, points: list[tuple[str, Mapping[str, Any]]]) -> list:
    """The grid's runs of many settings at once (one expansion: much faster than
    :func:`make_run` per setting), in the order of ``points``."""
    from pipelines.grid import expand_grid

    runs = expand_grid(point_ablation(spec.ablation, points), repo=REPO)
    out = []
    for variant, settings in points:
        want = {"seed": 0, **settings}
        match = [r for r in runs if r.variant == variant and dict(r.settings) == want]
        if len(match) != 1:
            raise UserError(f"{variant} {want}: no single run of the grid matches")
        out.append(match[0])
    return out


def space_points(spec) -> list[tuple[str, dict]]:
    """Every setting of a space whose axes are all categorical (the replayed grids)."""
    points = []
    for variant, axes in spec.variants.items():
        if any(a.choices is None for a in axes):
            raise UserError(f"space.variants.{variant}: a range axis has no finite list of "
                            "settings")
        for combo in itertools.product(*(a.choices for a in axes)):
            points.append((variant, {a.axis: v for a, v in zip(axes, combo)}))
    return points


def setting_key(variant: str, settings: Mapping[str, Any]) -> str:
    """A hashable key of a setting (seed 0 spelt out, as the grid does)."""
    return json.dumps([variant, {"seed": 0, **settings}], sort_keys=True, default=str)
