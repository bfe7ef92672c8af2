"""``python -m pipelines html-report``: one self-contained HTML page about an ablation.

(``python -m pipelines report`` is the DAG's markdown report, ``pipelines/reports/report.py``.)

The page (``<out>/index.html``) reads the analysis saved by ``python -m pipelines analyse``
(``--analysis``) and links the figures ``python -m pipelines figures`` drew (``--figures``): it
draws nothing and computes no front. It shows the Pareto table, the settings and metrics of every
run and, for each run, a link to it in the MLflow UI
(:func:`pipelines.tracking.mlflow_ui.mlflow_link`; ``--mlflow-ui``: the address the user's ``mlflow ui``
answers on, by default the one ``python -m pipelines ui`` starts). Without ``--analysis`` (a
one-off call on a runs source) it analyses the runs itself and draws the figures into
``<out>/figures/``. Like the figures, the page depends only on the runs: same runs, same bytes.
"""
from __future__ import annotations

import argparse
import html
import json
import os
from pathlib import Path

import pandas as pd

from pipelines.errors import UserError
from pipelines.tracking.mlflow_ui import DEFAULT_UI, mlflow_link, ui_address

CSS = """
body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.4}
table{border-collapse:collapse;font-size:13px;margin:1em 0}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f2f2f2} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.knee td{font-weight:bold} figure{margin:1.5em 0} img{max-width:100%;border:1px solid #eee}
code{font-size:12px} .skip{color:#777}
""".strip()


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


def _links(ui: str, r) -> str:
    """One MLflow link per seed of a setting (``seed 0``, ``seed 1``...)."""
    ids = json.loads(r["mlflow_run_ids"]) if isinstance(r["mlflow_run_ids"], str) else []
    seeds = str(r.get("seeds", "") or "").split()
    out = []
    for i, mlflow_id in enumerate(ids):
        name = f"seed {seeds[i]}" if i < len(seeds) else str(mlflow_id)[:8]
        url = html.escape(mlflow_link(ui, r["experiment_id"], mlflow_id))
        out.append(f'<a class="run" href="{url}" title="{html.escape(str(mlflow_id))}">'
                   f"{html.escape(name)}</a>")
    return " ".join(out)


def _settings_table(rows: pd.DataFrame, ui: str, front: bool) -> str:
    """Settings (seeds pooled): mean [95 % CI], small-object IoU, cost, hours, run links."""
    from pipelines.data.synthetic import SMALL_CLASSES
    from pipelines.reports.tables import fmt_interval

    head = (["front", "knee"] if front else []) + [
        "setting", "seeds", "mIoU (%) [95 % CI]", *(f"IoU {c} (%)" for c in SMALL_CLASSES),
        "GFLOPs", "latency (ms)", "train hours"] + (
        ["front verdict", "vs baseline", "not distinguishable from"] if front
        else ["on overall front"]) + ["MLflow runs"]
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
           + "</tr></thead><tbody>"]
    for _, r in rows.iterrows():
        knee = bool(r.get("knee", False)) if front else False
        cells = []
        if front:
            cells += [html.escape(str(r["front"])), "★" if knee else ""]
        cells += [html.escape(str(r["setting"])), _cell(r["n_seeds"])[0],
                  html.escape(fmt_interval(r, "miou")),
                  *(html.escape(fmt_interval(r, f"iou.{c}")) for c in SMALL_CLASSES),
                  _cell(r["gflops_total"], 3)[0], _cell(r.get("latency_ms"), 1)[0],
                  _cell(r.get("train_hours"), 3)[0]]
        if front:
            cells += [html.escape(str(r.get("verdict") or "")),
                      html.escape(str(r.get("vs_baseline") or "")),
                      html.escape(str(r.get("not_distinct_from") or ""))]
        else:
            cells.append("yes" if bool(r.get("on_front", False)) else "")
        cells.append(_links(ui, r))
        cls = ' class="knee"' if knee else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _stability_text(taus: pd.DataFrame) -> str:
    """One sentence on how stable the settings' ranking by mIoU is across seeds."""
    known = taus.dropna(subset=["tau"])
    if known.empty:
        return ("<b>Ranking stability</b> across seeds: not measurable (fewer than two seeds "
                "with two or more settings each).")
    return (f"<b>Ranking stability</b> across seeds: Kendall's tau between the rankings of the "
            f"settings by mIoU under single seeds, mean {known['tau'].mean():.2f} over "
            f"{len(known)} seed pair(s) (min {known['tau'].min():.2f}, max "
            f"{known['tau'].max():.2f}; 1 = the same order every time).")


def build_report(data, out: str | os.PathLike, ui: str = DEFAULT_UI,
                 title: str | None = None, log=print,
                 figures_dir: str | os.PathLike | None = None) -> Path:
    """Write ``out/index.html`` from an analysis; returns the page.

    Args:
        data: an :class:`~pipelines.analysis.settings.Analysis` (saved by ``analyse``), or a
            runs table analysed here once.
        figures_dir: the folder ``python -m pipelines figures`` wrote (its ``figures.json``
            says what is there); the page links those files by a relative path. None: the
            figures are drawn into ``out/figures``.

    The page lists settings (mean and interval over seeds, one MLflow link per seed), not runs,
    so it stays readable with thousands of runs; MLflow holds the per-run detail.
    """
    from pipelines.analysis.settings import (
        DETERMINISM,
        INTERVAL_NAME,
        ONE_SEED,
        TEST_NAME,
        Analysis,
        analyse,
        ranking_stability,
    )
    from pipelines.config import ensure_writable_dir
    from pipelines.reports.figures import FIGURES, render_all
    from pipelines.reports.tables import pareto_table

    out = ensure_writable_dir(out, "report folder")
    a = data if isinstance(data, Analysis) else analyse(data)
    if figures_dir is None:
        manifest = render_all(a, out / "figures", log=log)
        rel = "figures"
    else:
        figures_dir = Path(figures_dir)
        try:
            manifest = json.loads((figures_dir / "figures.json").read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"--figures {figures_dir}: no readable figures.json there "
                            f"({' '.join(str(err).split())[:200]}); run `python -m pipelines "
                            "figures` first") from None
        drawn = (manifest.get("runs"), manifest.get("settings"))
        if drawn != (None, None) and drawn != (len(a.runs), len(a.settings)):
            # figures of another analysis (e.g. drawn before a search added its runs): the page
            # would count the runs of one and show the figures, or skip notes, of the other
            raise UserError(f"--figures {figures_dir}: drawn from another analysis ({drawn[0]} "
                            f"runs, {drawn[1]} settings; this one has {len(a.runs)} runs, "
                            f"{len(a.settings)} settings): run `python -m pipelines figures` "
                            "on this analysis first")
        rel = Path(os.path.relpath(figures_dir.resolve(), out.resolve())).as_posix()
    runs = a.runs
    experiment = str(runs["experiment"].dropna().iloc[0]) if runs["experiment"].notna().any() \
        else ""
    name = title or experiment or "ablation"
    pareto = pareto_table(a)
    grid = runs[runs["role"] == "run"]
    exp_ids = sorted({str(e) for e in runs["experiment_id"].dropna() if str(e)})
    exp_links = ", ".join(f'<a href="{html.escape(mlflow_link(ui, e))}">'
                          f"experiment {html.escape(experiment)} (id {html.escape(e)})</a>"
                          for e in exp_ids)
    overall = set(a.fronts.loc[a.fronts["front"] == "overall", "setting"]) if len(a.fronts) \
        else set()
    hours = a.settings["train_hours"].sum() if "train_hours" in a.settings else float("nan")
    body = [f"<h1>Ablation report: {html.escape(name)}</h1>",
            f"<p>{len(grid)} grid runs in {len(a.settings)} settings "
            f"(a setting: the runs that differ only by their seed), "
            f"{int((runs['role'] == 'trial').sum())} search trials; "
            f"{_cell(hours, 3)[0]} training hours in all (CPU-hours on the CPU). "
            "Objectives: maximise <code>miou</code> (%), minimise <code>gflops_total</code> "
            "(GFLOPs per image). Every number is the <b>mean over seeds</b> with its "
            f"{html.escape(INTERVAL_NAME)}; a setting with one seed shows "
            f"\u201c{ONE_SEED}\u201d. The Pareto fronts are computed on the means. Knee point "
            "(★): the front point farthest from the chord between the front's extremes, both "
            "objectives min-max normalised.</p>",
            f"<p><b>Front verdicts</b>: {html.escape(TEST_NAME)}. A point is "
            "<i>distinguishable</i> when it differs from the baseline and from every other point "
            "of the overall front, <i>not distinguishable</i> when some test does not separate "
            "it, <i>not testable</i> with fewer than two seeds in common.</p>",
            f"<p>{_stability_text(ranking_stability(runs))}</p>",
            f"<p>{html.escape(DETERMINISM)}</p>",
            "<p>Tables: "
            f'<a href="{rel}/pareto_points.md">Markdown</a>, '
            f'<a href="{rel}/pareto_points.tex">LaTeX</a>, '
            f'<a href="{rel}/settings.csv">settings (CSV)</a>, '
            f'<a href="{rel}/points.csv">all runs (CSV)</a>'
            + (f"; every run in MLflow: {exp_links}" if exp_links else "") + ".</p>",
            f"<p>MLflow links point at <code>{html.escape(ui.rstrip('/'))}</code>: start the "
            "UI there (<code>python -m pipelines ui --ablation ABLATION.yaml</code>; "
            "<code>make ui</code> for the demo), or give the ablation another "
            "<code>mlflow.ui</code> and write the page again.</p>",
            "<h2>Figures</h2>"]
    for fig in FIGURES:
        if fig in manifest["figures"]:
            body.append(f'<figure><a href="{rel}/{fig}.pdf"><img src="{rel}/{fig}.png" '
                        f'alt="{fig}"></a><figcaption><code>{fig}</code> '
                        f'(<a href="{rel}/{fig}.pdf">PDF</a>)</figcaption></figure>')
        else:
            reason = html.escape(manifest["skipped"].get(fig, ""))
            body.append(f'<p class="skip">Skipped <code>{fig}</code>: {reason}.</p>')
    body.append("<h2>Pareto points (settings)</h2>")
    body.append(_settings_table(pareto, ui, front=True))
    body.append("<h2>All settings</h2>")
    body.append(_settings_table(a.settings.assign(on_front=a.settings["setting"].isin(overall))
                                if len(a.settings) else a.settings, ui, front=False))
    configs = sorted({str(c) for c in runs["config"].dropna() if str(c)})
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
    from pipelines.analysis.cli import add_source_arguments

    p = sub.add_parser("html-report", help="HTML report of an ablation: figures, Pareto table, "
                       "settings, links to the MLflow runs", description=__doc__)
    p.add_argument("--analysis", help="a folder saved by `python -m pipelines analyse`; else "
                   "the runs are read from:")
    add_source_arguments(p)
    p.add_argument("--figures", help="the folder `python -m pipelines figures` wrote (linked, "
                   "not redrawn); default: draw them into OUT/figures")
    p.add_argument("--out", required=True, help="output folder (index.html [+ figures/])")
    p.add_argument("--mlflow-ui", help="MLflow UI base URL for run links (default: the tracking "
                   f"URI when it is http(s), else {DEFAULT_UI})")
    p.add_argument("--title", help="page title (default: the experiment name)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.analysis.cli import analysis_of

    a, meta = analysis_of(args, "report")
    uri = args.tracking_uri or meta.get("tracking_uri") or ""
    build_report(a, args.out, ui=ui_address(uri, args.mlflow_ui), title=args.title,
                 figures_dir=args.figures)
    return 0
