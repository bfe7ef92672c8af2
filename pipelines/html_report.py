"""``python -m pipelines html-report``: one self-contained HTML page about an ablation.

(``python -m pipelines report`` is the DAG's markdown report, ``pipelines/report.py``.)

The page (``<out>/index.html``) shows every figure of ``python -m pipelines figures`` (drawn into
``<out>/figures/``), the Pareto table, the settings and metrics of every run and, for each run, a
link to it in the MLflow UI (``<ui>/#/experiments/<experiment id>/runs/<MLflow run id>``). Like
the figures, the page depends only on the runs: same runs, same bytes.
"""
from __future__ import annotations

import argparse
import html
import os
from pathlib import Path

import pandas as pd

from pipelines.errors import UserError

DEFAULT_UI = "http://127.0.0.1:5000"

CSS = """
body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.4}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f2f2f2} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.knee td{font-weight:bold} figure{margin:1.5em 0} img{max-width:100%;border:1px solid #eee}
code{font-size:12px} .skip{color:#777}
""".strip()


def run_url(ui: str, experiment_id, mlflow_run_id) -> str:
    """MLflow UI address of one run."""
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs/{mlflow_run_id}"


def default_ui(tracking_uri: str | None) -> str:
    if tracking_uri and tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return DEFAULT_UI


def _cell(value, digits: int = 2) -> tuple[str, bool]:
    """(escaped text, is number)"""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return "–", False
    if isinstance(value, bool):
        return ("yes" if value else "no"), False
    if isinstance(value, float):
        return f"{value:.{digits}f}", True
    if isinstance(value, int):
        return str(value), True
    return html.escape(str(value)), False


def _table(rows: pd.DataFrame, columns: list[tuple[str, str]], ui: str,
           knee_col: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in columns)
    out = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
    for _, r in rows.iterrows():
        cls = ' class="knee"' if knee_col and bool(r.get(knee_col, False)) else ""
        cells = []
        for col, _ in columns:
            if col == "mlflow_link":
                url = html.escape(run_url(ui, r["experiment_id"], r["mlflow_run_id"]))
                cells.append(f'<td><a href="{url}"><code>{html.escape(str(r["mlflow_run_id"]))}'
                             f"</code></a></td>")
                continue
            text, num = _cell(r[col], 3 if col.startswith("gflops") else 2)
            if col == "knee":
                text, num = ("★" if bool(r[col]) else ""), False
            cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        out.append(f"<tr{cls}>{''.join(cells)}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def build_report(df: pd.DataFrame, out: str | os.PathLike, ui: str = DEFAULT_UI,
                 title: str | None = None, log=print) -> Path:
    """Draw the figures into ``out/figures`` and write ``out/index.html``; returns the page."""
    from pipelines.analysis.data import PARAMS, tidy_runs
    from pipelines.config import ensure_writable_dir
    from pipelines.figures import FIGURES, pareto_table, points_table, render_all

    out = ensure_writable_dir(out, "report folder")
    df = tidy_runs(df)
    manifest = render_all(df, out / "figures", log=log)
    name = title or (str(df["experiment"].dropna().iloc[0]) if df["experiment"].notna().any()
                     else "ablation")
    ids = df[["mlflow_run_id", "experiment_id"]].drop_duplicates()
    pareto = pareto_table(df).merge(ids, on="mlflow_run_id", how="left")
    points = points_table(df)
    body = [f"<h1>Ablation report: {html.escape(name)}</h1>",
            f"<p>{int((df['role'] == 'run').sum())} grid runs, "
            f"{int((df['role'] == 'trial').sum())} search trials. Objectives: maximise "
            "<code>miou</code> (%), minimise <code>gflops_total</code> (GFLOPs per image). "
            "Knee point (★): the front point farthest from the chord between the front's "
            "extremes, both objectives min-max normalised. Tables: "
            '<a href="figures/pareto_points.md">Markdown</a>, '
            '<a href="figures/pareto_points.tex">LaTeX</a>, '
            '<a href="figures/points.csv">all points (CSV)</a>.</p>',
            "<h2>Figures</h2>"]
    for fig in FIGURES:
        if fig in manifest["figures"]:
            body.append(f'<figure><a href="figures/{fig}.pdf"><img src="figures/{fig}.png" '
                        f'alt="{fig}"></a><figcaption><code>{fig}</code> '
                        f'(<a href="figures/{fig}.pdf">PDF</a>)</figcaption></figure>')
        else:
            reason = html.escape(manifest["skipped"].get(fig, ""))
            body.append(f'<p class="skip">Skipped <code>{fig}</code>: {reason}.</p>')
    body.append("<h2>Pareto points</h2>")
    body.append(_table(pareto, [("front", "front"), ("knee", "knee"), ("run_id", "run id"),
                                ("setting", "setting"), ("miou", "mIoU (%)"),
                                ("gflops_total", "GFLOPs"), ("latency_ms", "latency (ms)"),
                                ("mlflow_link", "MLflow run")], ui, knee_col="knee"))
    body.append("<h2>All runs</h2>")
    params = [p for p in PARAMS if p not in ("config",) and points.get(p) is not None]
    cols = [("run_id", "run id"), ("variant", "variant")]
    cols += [(p, p) for p in params if p in points.columns and p != "variant"]
    cols += [("miou", "mIoU (%)"), ("gflops_total", "GFLOPs"),
             ("gflops_encoder", "encoder GFLOPs"), ("latency_ms", "latency (ms)"),
             ("pareto_overall", "on overall front"), ("mlflow_link", "MLflow run")]
    body.append(_table(points, cols, ui, knee_col="knee_overall"))
    configs = sorted({str(c) for c in df["config"].dropna() if str(c)})
    if configs:
        body.append("<h2>Model configs</h2><ul>"
                    + "".join(f"<li><code>{html.escape(c)}</code></li>" for c in configs)
                    + "</ul>")
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(name)}: ablation report</title><style>{CSS}</style></head>"
            "<body>\n" + "\n".join(body) + "\n</body></html>\n")
    path = out / "index.html"
    tmp = path.with_name(".index.html.tmp")
    tmp.write_text(page, encoding="utf-8", newline="\n")
    tmp.replace(path)
    log(f"wrote report -> {path}")
    return path


def add_parser(sub) -> None:
    from pipelines.figures import add_source_arguments

    p = sub.add_parser("html-report", help="HTML report of an ablation: figures, Pareto table, "
                       "settings, links to the MLflow runs", description=__doc__)
    add_source_arguments(p)
    p.add_argument("--out", required=True, help="output folder (index.html + figures/)")
    p.add_argument("--mlflow-ui", help="MLflow UI base URL for run links (default: the tracking "
                   f"URI when it is http(s), else {DEFAULT_UI})")
    p.add_argument("--title", help="page title (default: the experiment name)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.analysis.data import read_source

    df = read_source(args.tracking_uri, args.experiment, args.runs_csv)
    if df.empty:
        raise UserError("no runs to report")
    build_report(df, args.out, ui=args.mlflow_ui or default_ui(args.tracking_uri),
                 title=args.title)
    return 0
