"""MLflow runs of one ablation (or Optuna search) -> one tidy pandas table, one row per run.

The naming contract is the ingestion's (``pipelines/tracking/store.py``):

* experiment name = ablation name; one parent run (tag ``pipelines.role=parent``) named after it;
* one child run per grid run, named by its run id, tags ``pipelines.role=run``,
  ``pipelines.run_id=<id>``, ``pipelines.ablation=<name>``, ``mlflow.parentRunId``;
* Optuna trials are tagged ``pipelines.role=trial`` and hold a ``trial_number`` metric;
* params: the fixed ones, the seed and every method alias (:data:`PARAMS`), plus any config-key
  axis a run lists in its ``pipelines.axes`` tag; metrics :data:`METRICS` plus ``iou.<class>``
  and the training curves' last values; ECO-M2F runs log an artifact ``exit_histogram.json``.
All names come from :mod:`pipelines.contract`.

The table has the same columns and dtypes whether it comes from MLflow (:func:`load_runs`) or from
a CSV written by :func:`write_runs_csv` (:func:`read_runs_csv`), so every figure can be redrawn
from a recorded table without a tracking server.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
from pathlib import Path

import pandas as pd

from pipelines import contract
from pipelines.errors import UserError

ROLE_TAG = contract.ROLE_TAG
RUN_ID_TAG = contract.RUN_ID_TAG
ABLATION_TAG = contract.ABLATION_TAG
EXIT_HISTOGRAM_ARTIFACT = contract.EXIT_HISTOGRAM_ARTIFACT

#: roles whose runs are data points (the parent run only groups them)
POINT_ROLES = contract.POINT_ROLES

_DTYPES = {"int": "Int64", "float": "Float64", "bool": "boolean", "str": "string",
           "int_list": "string", "any": "string"}


def _declared_params() -> dict[str, str]:
    """Fixed params, the seed, and every alias a method declares (its Axis type -> dtype)."""
    from pipelines import axes

    out = {"variant": "string", "config": "string", "max_iters": "Int64", "recipe": "string",
           contract.SEED: "Int64"}
    for method in axes.method_files():
        for name, axis in axes.method_axes(method).items():
            out.setdefault(name, _DTYPES[axis.type])
    return out


#: param name -> dtype of its column (config-key axes join as columns of an inferred dtype)
PARAMS = _declared_params()
#: metrics every figure may use (always present as columns, NaN when a run lacks them)
METRICS = contract.METRICS
#: identity columns, first in the table
ID_COLUMNS = ("run_id", "mlflow_run_id", "experiment_id", "experiment", "role", "ablation",
              "status")
ID_DTYPES = {c: "string" for c in ID_COLUMNS}
AXES_COLUMN = "axes"  # JSON list of a run's axis names (its `pipelines.axes` tag)
METHODS_COLUMN = "methods"  # comma-joined methods its config builds (`pipelines.methods`)
BASELINE_COLUMN = "baseline"  # a run of the ablation's baseline variant (`pipelines.baseline`)
ROLE_COLUMNS = (AXES_COLUMN, METHODS_COLUMN, BASELINE_COLUMN)


def _as_bool(value):
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return pd.NA
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    return pd.NA


def tidy_runs(df: pd.DataFrame) -> pd.DataFrame:
    """Fixed column order and dtypes, rows sorted by (role, variant, run id).

    Columns: :data:`ID_COLUMNS`, :data:`PARAMS`, :data:`METRICS`, any other ``gflops_*`` /
    ``latency_*`` metric (e.g. per-stage encoder GFLOPs), ``iou.<class>`` sorted by class, then
    ``exit_histogram`` (JSON text with sorted integer keys, empty when absent).
    """
    df = df.copy()
    for col in (*ID_COLUMNS, *PARAMS, *METRICS, "exit_histogram", *ROLE_COLUMNS):
        if col not in df.columns:
            df[col] = pd.NA
    params = dict(PARAMS)
    for name in axis_names(df):
        params.setdefault(name, _infer_dtype(df[name]) if name in df.columns else "string")
        if name not in df.columns:
            df[name] = pd.NA
    for col in ID_COLUMNS:
        df[col] = df[col].astype("string")
    df[AXES_COLUMN] = df[AXES_COLUMN].astype("string").fillna("")
    df[METHODS_COLUMN] = df[METHODS_COLUMN].astype("string")  # NA: not recorded
    df[BASELINE_COLUMN] = df[BASELINE_COLUMN].map(_as_bool).astype("boolean")
    for col, dtype in params.items():
        if dtype == "boolean":
            df[col] = df[col].map(_as_bool).astype("boolean")
        elif dtype == "string":
            df[col] = df[col].astype("string").fillna("")
        else:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(dtype)
    df["exit_histogram"] = df["exit_histogram"].map(_normalise_histogram).astype("string")
    known = {*ID_COLUMNS, *params, *METRICS, "exit_histogram", *ROLE_COLUMNS}
    extra = sorted(c for c in df.columns if c not in known and not c.startswith("iou."))
    iou = sorted(c for c in df.columns if c.startswith("iou."))
    for col in (*METRICS, *extra, *iou):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    df = df[[*ID_COLUMNS, *params, *METRICS, *extra, *iou, "exit_histogram", *ROLE_COLUMNS]]
    df = df.sort_values(["role", "variant", "run_id", "mlflow_run_id"], kind="stable",
                        na_position="last")
    return df.reset_index(drop=True)


def axis_names(df: pd.DataFrame) -> list[str]:
    """Every axis any run of the table has (from the ``axes`` column), in first-seen order."""
    seen: dict[str, None] = {}
    if AXES_COLUMN in df.columns:
        for text in df[AXES_COLUMN].dropna():
            if str(text).strip():
                seen.update(dict.fromkeys(json.loads(str(text))))
    return list(seen)


def _infer_dtype(values: pd.Series) -> str:
    """A config-key axis column's dtype from its (string) values: boolean, Int64, Float64, string."""
    present = [str(v).strip() for v in values.dropna() if str(v).strip()]
    if present and all(v.lower() in ("true", "false") for v in present):
        return "boolean"
    numbers = pd.to_numeric(pd.Series(present, dtype="object"), errors="coerce")
    if present and numbers.notna().all():
        return "Int64" if all(float(x).is_integer() and "." not in v and "e" not in v.lower()
                              for x, v in zip(numbers, present)) else "Float64"
    return "string"


def _normalise_histogram(value) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, str):
        if not value.strip():
            return ""
        value = json.loads(value)
    hist = {int(k): int(v) for k, v in dict(value).items()}
    return json.dumps({str(k): hist[k] for k in sorted(hist)})


def exit_histogram(row) -> dict[int, int]:
    """A row's exit histogram as ``{exit_layer: count}`` (empty when the run has none)."""
    text = row["exit_histogram"]
    if text is None or text is pd.NA or not str(text):
        return {}
    return {int(k): int(v) for k, v in json.loads(text).items()}


def _read_histogram(client, run_id: str):
    names = {a.path for a in client.list_artifacts(run_id)}
    if EXIT_HISTOGRAM_ARTIFACT not in names:
        return None
    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    saved = {k: os.environ.get(k) for k in quiet}
    os.environ.update(quiet)
    try:
        local = client.download_artifacts(run_id, EXIT_HISTOGRAM_ARTIFACT)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return json.loads(Path(local).read_text())


def load_runs(tracking_uri: str, experiment: str, roles=POINT_ROLES) -> pd.DataFrame:
    """All data-point runs of one experiment (ablation or search) as a tidy table.

    Args:
        tracking_uri: MLflow tracking URI (``sqlite:///mlflow.db``, ``http://host:5000``, a
            ``file:`` store, ``postgresql://...``).
        experiment: experiment name, i.e. the ablation (or search) name.
        roles: values of the ``pipelines.role`` tag to keep (the parent run is left out).

    Returns:
        One row per run; see :func:`tidy_runs` for the columns.

    Raises:
        UserError: the store cannot be reached or has no such experiment.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        exp = client.get_experiment_by_name(experiment)
    except MlflowException as err:
        raise UserError(f"cannot read MLflow store {tracking_uri}: {err.message}") from None
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise UserError(f"no MLflow experiment {experiment!r} at {tracking_uri} "
                        f"(experiments: {', '.join(names) or 'none'})")
    with _no_cyclic_gc():
        rows = _read_rows(client, exp, roles)
    return tidy_runs(pd.DataFrame(rows))


@contextlib.contextmanager
def _no_cyclic_gc():
    """Python's cyclic garbage collector paused (then one collection): reading 10,000 runs
    builds about 800,000 ORM objects in MLflow's store, and the collector's passes over the
    growing heap tripled the read (38.7 -> 13.2 CPU s at 10,000 runs, the load benchmark's
    `load` stage)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
            gc.collect()


def _read_rows(client, exp, roles) -> list[dict]:
    """One dict per data-point run of ``exp`` (MLflow's search, page by page)."""
    rows, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token,
                                  order_by=["attributes.run_name ASC"])
        for run in page:
            tags = run.data.tags
            role = tags.get(ROLE_TAG, "")
            if role not in roles:
                continue
            row = {
                "run_id": tags.get(RUN_ID_TAG) or run.info.run_name,
                "mlflow_run_id": run.info.run_id,
                "experiment_id": exp.experiment_id,
                "experiment": exp.name,
                "role": role,
                "ablation": tags.get(ABLATION_TAG, exp.name),
                "status": run.info.status,
            }
            axes = json.loads(tags.get(contract.AXES_TAG, "[]") or "[]")
            row[AXES_COLUMN] = json.dumps(axes)
            row[METHODS_COLUMN] = tags.get(contract.METHODS_TAG, pd.NA)
            row[BASELINE_COLUMN] = tags.get(contract.BASELINE_TAG, pd.NA)
            row.update({k: v for k, v in run.data.params.items() if k in PARAMS or k in axes})
            row.update({k: v for k, v in run.data.metrics.items()
                        if not k.startswith(contract.CURVE_PREFIXES)})
            if contract.MEAN_EXIT in row:
                row["exit_histogram"] = _read_histogram(client, run.info.run_id)
            rows.append(row)
        token = page.token
        if not token:
            return rows


def write_runs_csv(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """The tidy table as CSV (stable float format, so the same runs give the same bytes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tidy_runs(df).to_csv(path, index=False, float_format="%.10g", lineterminator="\n")
    return path


def read_runs_csv(path: str | os.PathLike) -> pd.DataFrame:
    """A table written by :func:`write_runs_csv` (or recorded by hand with the same columns)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"runs table not found: {path}")
    strings = [p for p, dtype in PARAMS.items() if dtype == "string"]
    df = pd.read_csv(path, dtype={c: "string" for c in (*ID_COLUMNS, *strings, "exit_histogram",
                                                        AXES_COLUMN, METHODS_COLUMN)},
                     keep_default_na=True)
    return tidy_runs(df)


def read_source(tracking_uri: str | None = None, experiment: str | None = None,
                runs_csv: str | os.PathLike | None = None) -> pd.DataFrame:
    """Either a recorded CSV (``runs_csv``) or the MLflow store (``tracking_uri`` + ``experiment``)."""
    if runs_csv:
        return read_runs_csv(runs_csv)
    if not tracking_uri or not experiment:
        raise UserError("give --tracking-uri and --experiment, or --runs-csv")
    return load_runs(tracking_uri, experiment)
