"""ECO-M2F's exit ladder and oracle gate as structured rows.

``evaluate-gated`` writes them as lists (``ladder``: one entry per fixed exit; ``oracle``) and
``ingest`` logs them to MLflow as flat metrics (:data:`pipelines.contract.LADDER_METRIC`,
:data:`pipelines.contract.ORACLE_METRIC`), since an MLflow metric is one number under one name.
Here, once, while the analysis is built, those names become rows again: one per gated run and
fixed exit (``kind`` = ``ladder``, ``exit`` = k) plus one per gated run for the oracle
(``kind`` = ``oracle``, ``exit`` missing), with a column per metric (``miou``, ``gflops_total``,
...). The wide runs table keeps none of those columns, so no figure parses names.
"""
from __future__ import annotations

import re

import pandas as pd

from pipelines import contract

LADDER, ORACLE = "ladder", "oracle"
COLUMNS = ["run_id", "kind", "exit"]


def _pattern(template: str) -> re.Pattern:
    text = re.escape(template).replace(r"\{exit\}", r"(?P<exit>\d+)")
    return re.compile(text.replace(r"\{metric\}", r"(?P<metric>.+)"))


_LADDER = _pattern(contract.LADDER_METRIC)
_ORACLE = _pattern(contract.ORACLE_METRIC)


def _parse(column: str) -> tuple[str, int | None, str] | None:
    """``(kind, exit, metric)`` of a flattened ladder/oracle metric name, else None."""
    if m := _LADDER.fullmatch(column):
        return LADDER, int(m["exit"]), m["metric"]
    if m := _ORACLE.fullmatch(column):
        return ORACLE, None, m["metric"]
    return None


def split_ladder(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(runs without the flattened columns, ladder rows)``; see the module docstring."""
    parsed = {col: p for col in runs.columns if (p := _parse(str(col))) is not None}
    rows: dict[tuple, dict] = {}
    for col, (kind, k, metric) in parsed.items():
        for run_id, value in zip(runs["run_id"], runs[col]):
            if pd.isna(value):
                continue
            row = rows.setdefault((str(run_id), kind, k), {"run_id": str(run_id), "kind": kind,
                                                             "exit": k})
            row[metric] = float(value)
    metrics = sorted({m for _, _, m in parsed.values()})
    table = pd.DataFrame(list(rows.values()), columns=COLUMNS + metrics)
    table["exit"] = table["exit"].astype("Int64")
    table["run_id"] = table["run_id"].astype("string")
    table["kind"] = table["kind"].astype("string")
    for m in metrics:
        table[m] = table[m].astype("float64")
    table = table.sort_values(["run_id", "kind", "exit"], kind="stable", na_position="last")
    return runs.drop(columns=list(parsed)), table.reset_index(drop=True)
