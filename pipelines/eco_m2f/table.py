"""The derived tables (Parquet): per-image quality of every exit and the gate features, each
with the metadata of the model they were derived from (:func:`pipelines.eco_m2f.model.model_hash`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List

from pipelines.errors import UserError

TABLE_META = b"pipelines.eco_m2f"  # key of our metadata in the Parquet schema


def write_table(path: Path, rows: List[dict], meta: dict) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(pd.DataFrame(rows), preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           TABLE_META: json.dumps(meta).encode()})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_table(path: Path, what: str = "derived table"):
    """``(DataFrame, meta)``; a missing or foreign file is a one-line UserError."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path} (write it with `python -m pipelines "
                        "derive-exits`)")
    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {})[TABLE_META])
    except (OSError, KeyError, ValueError) as err:
        raise UserError(f"{path} is not a {what} of derive-exits: {type(err).__name__}") \
            from None
    return table.to_pandas(), meta


def features_path(table: Path, given: str | None) -> Path:
    return Path(given) if given else table.with_name(table.stem + ".features.parquet")


def check_same_model(meta: dict, expected_hash: str, what: str, path) -> None:
    if meta.get("model_hash") != expected_hash:
        raise UserError(f"{what} {path} was derived from another model (hash "
                        f"{str(meta.get('model_hash'))[:12]}, this checkpoint "
                        f"{expected_hash[:12]}); run derive-exits on this checkpoint")
