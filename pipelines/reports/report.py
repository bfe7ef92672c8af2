"""``python -m pipelines report``: one markdown table of an ablation's runs (quality and cost).

The workflow's last step (``write_report``); the per-run table reads the same per-run files as
``ingest``, so it needs no MLflow; the settings, fronts and verdicts under it are the analysis
saved by ``python -m pipelines analyse`` (``--analysis``; without it, for a one-off call, they
are computed from those files). The HTML report with figures is
``python -m pipelines html-report``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines import methods
from pipelines.contract import SEED
from pipelines.errors import UserError
from pipelines.grid import RunPaths
from pipelines.tracking.ingest import run_failure
from pipelines.tracking.run_files import collect_metrics

COLUMNS = (("miou", "mIoU", "{:.2f}"), ("gflops_pixel_decoder", "GFLOPs pixel dec.", "{:.3f}"),
           ("gflops_total", "GFLOPs total", "{:.3f}"), ("latency_ms", "latency ms", "{:.1f}"),
           ("latency_ms_pixel_decoder", "pixel dec. ms", "{:.1f}"),
           ("train_time_s", "train s", "{:.0f}"))


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="markdown table of an ablation's runs (the workflow's "
                       "last step)", description=__doc__)
    p.add_argument("--ablation", required=True, help="ablation name")
    p.add_argument("--results", default="results", help="results folder (default results)")
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN_JSON",
                   help="run.json of every run")
    p.add_argument("--tracking-uri", default="", help="MLflow store, mentioned in the report")
    p.add_argument("--analysis", help="the folder `python -m pipelines analyse` saved (settings, "
                   "fronts, verdicts); default: computed from the run files")
    p.add_argument("--out", required=True, help="markdown file to write")
    p.set_defaults(func=run)


def _runs_table(ablation: str, results: str, runs: list[tuple[dict, dict]]):
    """The runs as the tidy table of :mod:`pipelines.analysis.data` (no MLflow ids)."""
    import pandas as pd

    from pipelines.analysis.data import AXES_COLUMN, BASELINE_COLUMN, METHODS_COLUMN, tidy_runs

    rows = []
    for run, metrics in runs:
        params = run["params"]
        settings = run.get("settings", {})
        row = {"run_id": run["run_id"], "mlflow_run_id": "", "experiment_id": "",
               "experiment": ablation, "role": "run", "ablation": ablation, "status": "",
               **{k: v for k, v in params.items()}, **settings,
               AXES_COLUMN: json.dumps(list(settings)), **metrics,
               # the roles the grid recorded (pipelines.methods / pipelines.baseline)
               METHODS_COLUMN: ",".join(run["methods"]) if "methods" in run else pd.NA,
               BASELINE_COLUMN: run.get("baseline", pd.NA)}
        rows.append({k: (str(v) if isinstance(v, (list, tuple, dict)) else v)
                     for k, v in row.items()})
    return tidy_runs(pd.DataFrame(rows))


def _settings_markdown(analysis) -> list[str]:
    """The settings (seeds pooled) with intervals, small-object IoU, hours and front verdicts."""
    from pipelines.analysis.settings import DETERMINISM, INTERVAL_NAME, TEST_NAME
    from pipelines.data.synthetic import SMALL_CLASSES
    from pipelines.reports.tables import fmt_interval

    overall = analysis.fronts[analysis.fronts["front"] == "overall"] if len(analysis.fronts) \
        else analysis.fronts
    on_front = set(overall["setting"]) if len(overall) else set()
    head = ["setting", "seeds", "mIoU [95 % CI]", *(f"IoU {c}" for c in SMALL_CLASSES),
            "GFLOPs total", "train hours", "overall front", "vs baseline"]
    lines = ["## Settings (runs that differ only by seed, pooled)", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    verdicts = analysis.verdicts.set_index("setting") if len(analysis.verdicts) else None
    for _, r in analysis.settings.iterrows():
        name = r["setting"]
        verdict = vs_base = ""
        if verdicts is not None and name in verdicts.index:
            verdict, vs_base = verdicts.loc[name, "verdict"], verdicts.loc[name, "vs_baseline"]
        hours = r.get("train_hours")
        cells = [name, str(r["n_seeds"]), fmt_interval(r, "miou"),
                 *(fmt_interval(r, f"iou.{c}") for c in SMALL_CLASSES),
                 fmt_interval(r, "gflops_total", 3),
                 f"{hours:.3f}" if hours == hours and hours is not None else "-",
                 verdict if name in on_front else "", vs_base]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines += ["", f"Interval: {INTERVAL_NAME}. Fronts on the means; front verdicts: "
              f"{TEST_NAME}. Train hours: sum of the seeds' training wall time (CPU-hours on "
              "the CPU).", "", DETERMINISM]
    return lines


def _search_markdown(analysis) -> list[str]:
    """The searched runs (``pipelines.role=trial``: trained by ``python -m pipelines search``
    on this ablation), each with its trial number and objectives; none: no lines. The settings
    and fronts above pool the grid's runs only; the trials are drawn in ``search_hypervolume``
    (against the grid's hypervolume)."""
    runs = analysis.runs
    trials = runs[runs["role"] == "trial"] if "role" in runs else runs.iloc[:0]
    if trials.empty:
        return []

    def num(row, key, fmt):
        value = row.get(key)
        return fmt.format(float(value)) if value is not None and value == value else "-"

    lines = ["## Search", "",
             f"{len(trials)} search trials: runs trained by `python -m pipelines search` on this "
             "ablation (`pipelines.role=trial` in MLflow, with every metric of a grid run). The "
             "settings and fronts above are the grid's; the figure `search_hypervolume` draws "
             "the trials' hypervolume against the grid's.", "",
             "| run | trial | mIoU | GFLOPs total |", "|---|---|---|---|"]
    for _, r in trials.sort_values("run_id").iterrows():
        lines.append(f"| `{r['run_id']}` | {num(r, 'trial_number', '{:.0f}')} | "
                     f"{num(r, 'miou', '{:.2f}')} | {num(r, 'gflops_total', '{:.3f}')} |")
    return lines


def build_report(ablation: str, results: str, run_jsons: list[str],
                 tracking_uri: str = "", analysis=None) -> str:
    """The markdown report; ``analysis``: a saved
    :class:`~pipelines.analysis.settings.Analysis` (else one is built from the run files)."""
    from pipelines.analysis.settings import analyse

    lines = [f"# Ablation `{ablation}`", "",
             "| run | variant | setting | seed | iters | recipe | "
             + " | ".join(c[1] for c in COLUMNS) + " |",
             "|" + "---|" * (6 + len(COLUMNS))]
    failed = []  # (run id, reason): listed under the table (failures stay local)
    sections = {}  # method -> its own report lines (its declaration's report hook), under the table
    loaded = []  # (run, metrics): pooled into settings under the table
    if not Path(results).is_dir():
        raise UserError(f"results folder not found: {results} (give --results)")
    for run_json in run_jsons:
        run = read_run(run_json)
        params = run["params"]
        metrics = collect_metrics(RunPaths.of(results, ablation, run))
        loaded.append((run, metrics))
        reason = run_failure(RunPaths.of(results, ablation, run), metrics)
        if reason is not None:
            failed.append((run["run_id"], reason))
        setting = ", ".join(f"{k}={params[k]}" for k in run.get("settings", {}) if k != SEED)
        cells = [f"`{run['run_id']}`", params["variant"], setting or "-",
                 params.get(SEED, "-"), params["max_iters"], f"`{params.get('recipe', '')}`"]
        cells += [fmt.format(metrics[key]) if key in metrics else "-" for key, _, fmt in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
        for name, more in methods.run_report_lines(
                run, RunPaths.of(results, ablation, run).metrics).items():
            sections.setdefault(name, []).extend(more)
    if loaded and not failed and not any(metrics for _, metrics in loaded):
        raise UserError(f"no results of any of the {len(loaded)} runs under {results} for "
                        f"ablation {ablation!r} (wrong --results or --ablation?)")
    if analysis is not None:
        lines += [""] + _settings_markdown(analysis)
        search = _search_markdown(analysis)
        lines += [""] + search if search else []
    elif loaded:
        lines += [""] + _settings_markdown(analyse(_runs_table(ablation, results, loaded)))
    lines += methods.report_markdown(sections)
    if failed:
        lines += ["", "## Failed runs", "", "| run | reason |", "|---|---|"]
        lines += [f"| `{run_id}` | {reason.replace('|', '/')} |" for run_id, reason in failed]
    lines += ["", f"Results: `{results}/<stage>/{ablation}/<run-id>/<recipe>/`."]
    if tracking_uri:
        # `ui` prints the link to the runs table (a bare `mlflow ui` opens MLflow's GenAI page)
        lines.append(f"MLflow: `python -m pipelines ui --tracking-uri {tracking_uri} "
                     f"--experiment {ablation}` prints the link to its runs.")
    return "\n".join(lines) + "\n"


def read_run(run_json: str | Path) -> dict:
    """A run.json written by ``grid --run``; one-line :class:`UserError` when it is not one."""
    path = Path(run_json)
    if not path.is_file():
        raise UserError(f"run file not found: {path}")
    try:
        run = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UserError(f"run file {path} is not JSON: {' '.join(str(err).split())}") from None
    params = run.get("params") if isinstance(run, dict) else None
    missing = [k for k in ("run_id", "params") if not isinstance(run, dict) or k not in run]
    if not missing and isinstance(params, dict):
        missing = [f"params.{k}" for k in ("variant", "max_iters") if k not in params]
    elif not missing:
        missing = ["params (a mapping)"]
    if missing:
        raise UserError(f"run file {path} is not a run.json: no {missing[0]}")
    return run


def run(args: argparse.Namespace) -> int:
    from pipelines.config import write_lines_atomic

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give the markdown file to write")
    analysis = None
    if args.analysis:
        from pipelines.analysis.cli import load_analysis

        analysis, _ = load_analysis(args.analysis)
    text = build_report(args.ablation, args.results, args.runs, args.tracking_uri, analysis)
    write_lines_atomic(out, text.splitlines())
    print(text)
    return 0
