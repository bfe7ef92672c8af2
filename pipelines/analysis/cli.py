"""``python -m pipelines analyse``: the analysis of an ablation, computed once and saved.

Loads the runs once (the MLflow store, or a recorded runs CSV), builds the
:class:`~pipelines.analysis.settings.Analysis` (tidy runs -> roles -> settings -> fronts on the
means -> verdicts; :func:`pipelines.analysis.settings.analyse`) and saves it under ``--out``
(the workflow: ``results/analysis/<ablation>/``):

* ``runs.parquet``: the tidy runs, one row per run, with their ``setting`` and ``series``;
* ``settings.parquet``: one row per setting (seeds pooled: mean, std, 95 % interval);
* ``fronts.parquet``: the Pareto fronts on the means (per series and ``overall``), knee marked;
* ``verdicts.parquet``: the paired tests of every point of the overall front;
* ``series.parquet``: one row per variant: series name, methods, baseline flag, colour, marker;
* ``ladder.parquet``: ECO-M2F's fixed exits and oracle gate per gated run;
* ``analysis.json`` (written last): the experiment, the baseline, counts and the file list.

``python -m pipelines figures --analysis``, ``python -m pipelines report --analysis`` and
``python -m pipelines html-report --analysis`` read that folder; none loads runs or computes a
front again.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd

from pipelines.analysis.settings import Analysis, analyse
from pipelines.errors import UserError

TABLES = ("runs", "settings", "fronts", "verdicts", "series", "ladder")
MANIFEST = "analysis.json"
FORMAT = 1


def _parquet_ready(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns (mixed axis values) as nullable strings, so Parquet can hold them."""
    out = df.copy()
    for col in out.columns:
        if out[col].dtype == object:
            values = out[col].dropna()
            kinds = {type(v) for v in values}
            if kinds <= {bool} and len(kinds):
                out[col] = out[col].astype("boolean")
            elif not kinds <= {str}:
                out[col] = out[col].map(lambda v: v if v is None or v is pd.NA or (
                    isinstance(v, float) and v != v) else str(v))
            out[col] = out[col].astype("string") if out[col].dtype == object else out[col]
    return out


def save_analysis(a: Analysis, out: str | os.PathLike, meta: dict | None = None) -> Path:
    """Write ``a`` into ``out`` (see the module docstring); returns ``out/analysis.json``."""
    from pipelines.config import ensure_writable_dir

    out = ensure_writable_dir(out, "analysis folder")
    files = []
    for name in TABLES:
        path = out / f"{name}.parquet"
        tmp = path.with_name(f".{path.name}.tmp")
        _parquet_ready(getattr(a, name)).to_parquet(tmp, index=False)
        tmp.replace(path)
        files.append(path.name)
    base = a.series.loc[a.series["baseline"].astype(bool), ["variant", "series"]] \
        if len(a.series) else pd.DataFrame(columns=["variant", "series"])
    runs = a.runs
    manifest = {
        "format": FORMAT,
        "experiment": str(runs["experiment"].dropna().iloc[0]) if runs["experiment"].notna().any()
        else "",
        "experiment_ids": sorted({str(e) for e in runs["experiment_id"].dropna() if str(e)}),
        "baseline": {"variant": str(base["variant"].iloc[0]), "series": str(base["series"].iloc[0])}
        if len(base) else None,
        "runs": int((runs["role"] == "run").sum()), "trials": int((runs["role"] == "trial").sum()),
        "settings": int(len(a.settings)),
        "front_points": int((a.fronts["front"] == "overall").sum()) if len(a.fronts) else 0,
        "files": files, **(meta or {})}
    path = out / MANIFEST
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def load_analysis(folder: str | os.PathLike) -> tuple[Analysis, dict]:
    """The :class:`Analysis` and the manifest saved by :func:`save_analysis` in ``folder``."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"--analysis {folder}: no {MANIFEST} there (run `python -m pipelines "
                        "analyse` first)")
    try:
        manifest = json.loads(manifest_path.read_text())
        tables = {name: pd.read_parquet(folder / f"{name}.parquet") for name in TABLES}
    except (OSError, ValueError) as err:
        raise UserError(f"--analysis {folder}: unreadable saved analysis: "
                        f"{' '.join(str(err).split())[:300]}") from None
    return Analysis(**tables), manifest


# --------------------------------------------------------------------------- reading the runs
def add_source_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (e.g. sqlite:///results/mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment = ablation (or search) name")
    p.add_argument("--runs-csv", help="a recorded runs table (runs.csv) instead of MLflow")


def read_runs(args: argparse.Namespace):
    """The runs table of ``--tracking-uri``/``--experiment`` or ``--runs-csv``; a store that
    cannot be read (unknown scheme, missing SQLite file: reading never creates one, a file that
    is no SQLite database or a truncated one) is one line."""
    from pipelines.analysis.data import read_source
    from pipelines.tracking import store as tracking

    uri = args.tracking_uri or ""
    if args.runs_csv:
        return read_source(runs_csv=args.runs_csv)
    db = tracking.missing_sqlite_file(uri)
    if db is not None:
        raise UserError(f"--tracking-uri {uri}: no such SQLite file {db}, or an empty one "
                        "(nothing tracked there yet?)")
    if uri:
        tracking.check_readable(uri)
    with tracking.store_errors(uri, what="cannot read MLflow store"):
        return read_source(args.tracking_uri, args.experiment)


def analysis_of(args: argparse.Namespace, what: str = "analyse") -> tuple[Analysis, dict]:
    """The saved analysis of ``--analysis``, else one built from the runs source (for a
    one-off call without the workflow)."""
    if getattr(args, "analysis", None):
        return load_analysis(args.analysis)
    df = read_runs(args)
    if df.empty:
        raise UserError(f"no runs to {what} (the experiment has no runs tagged "
                        "pipelines.role=run or trial)")
    return analyse(df, getattr(args, "baseline", None)), {
        "tracking_uri": getattr(args, "tracking_uri", None) or ""}


def add_parser(sub) -> None:
    p = sub.add_parser("analyse", help="load an ablation's runs once, compute settings, fronts "
                       "and verdicts, save them (Parquet + JSON)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_source_arguments(p)
    p.add_argument("--out", required=True, help="output folder (results/analysis/<ablation>)")
    p.add_argument("--baseline", help="the baseline variant, overriding the one the runs "
                   "record (pipelines.baseline)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    df = read_runs(args)
    if df.empty:
        raise UserError("no runs to analyse (the experiment has no runs tagged "
                        "pipelines.role=run or trial)")
    a = analyse(df, args.baseline)
    path = save_analysis(a, args.out, {"tracking_uri": args.tracking_uri or ""})
    print(f"analysed {len(a.runs)} runs in {len(a.settings)} settings, "
          f"{int((a.fronts['front'] == 'overall').sum()) if len(a.fronts) else 0} points on the "
          f"overall front -> {path.parent}")
    return 0
