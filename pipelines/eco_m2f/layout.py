"""Where the workflow's ECO-M2F stages write, and which runs are gated (no torch: the
Snakefile imports it, ``workflow/rules/eco_m2f.smk``)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict

GATE_AXIS = "beta"  # the gate-stage axis of pipelines/models/early_exit.py


def is_gated(run) -> bool:
    """A run of the recipe: its config builds early exit and it has a gate-stage ``beta``.
    ``run``: a :class:`pipelines.grid.Run` or its ``run.json`` dict."""
    if isinstance(run, dict):
        methods, stages = run.get("methods") or [], run.get("stages") or {}
    else:
        methods, stages = run.methods, run.stages
    return "early_exit" in methods and stages.get(GATE_AXIS) == "gate"


def stage_files(results: str, ablation: str, run) -> Dict[str, str]:
    """Where the workflow's ECO-M2F stages of ``run`` write.

    ``derive`` (summary JSON), ``table`` and ``features`` (Parquet) belong to the run's training
    (``results/derive/<ablation>/<train-id>/<train recipe>/``, shared by every beta); ``gate``
    (summary JSON) and ``gate_weights`` to the run (``results/gate/<ablation>/<run-id>/<recipe>/``):
    keyed by content like every other output (:class:`pipelines.grid.RunPaths`).
    """
    derive = Path(results) / "derive" / ablation / run.train_id / run.train_recipe
    gate = Path(results) / "gate" / ablation / run.run_id / run.recipe
    return {"derive": str(derive / "derive.json"), "table": str(derive / "quality.parquet"),
            "features": str(derive / "quality.features.parquet"),
            "gate": str(gate / "gate.json"), "gate_weights": str(gate / "gate.pth")}


def id_pattern(ids) -> str:
    """A regular expression matching exactly ``ids`` (and nothing when there is none)."""
    import re

    return "|".join(re.escape(i) for i in sorted(ids)) or "(?!)"
