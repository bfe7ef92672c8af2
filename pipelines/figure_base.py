"""What every figure function shares (kept apart so method figures import no figure module):
:class:`Skip` and the grid runs of an analysis."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from pipelines import contract


@dataclass
class Skip:
    """A figure that cannot be drawn yet (its runs do not exist)."""

    reason: str


def grid_points(runs: pd.DataFrame) -> pd.DataFrame:
    """The grid runs (the Optuna trials have their own figure)."""
    return runs[runs["role"] == contract.ROLE_RUN]
