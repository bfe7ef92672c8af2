"""Where the workflow's ECO-M2F stages write, and which runs are gated (no torch: the
Snakefile imports it, ``workflow/rules/eco_m2f.smk``)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict


def is_gated(run) -> bool:
    """A run of the recipe: ECO-M2F's declaration (``pipelines/models/early_exit.py``) is the
    method a later stage completes (:func:`pipelines.methods.finished_later`: the run builds
    early exit and has an axis of its ``gate`` stage). ``run``: a :class:`pipelines.grid.Run` or
    its ``run.json`` dict."""
    from pipelines import methods

    method = methods.finished_later(run)
    return method is not None and method.name == "early_exit"


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
    return "|".join(re.escape(i) for i in sorted(ids)) or "(?!)"
