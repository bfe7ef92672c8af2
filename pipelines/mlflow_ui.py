"""Open ``mlflow ui`` where a person looks: the ablation's training runs, metric columns shown.

MLflow 3's UI opens on a GenAI "Overview" in a fresh browser: the GenAI / model-training toggle
lives in the browser's localStorage (mlflow/mlflow#24498), and the experiment's
``mlflow.experimentKind`` tag does not move it; its runs table then hides every metric column
until "Show more columns" is ticked. Two things of MLflow's own fix that without any clicking:

* a **shared view state**: the experiment tag ``mlflow.sharedViewState.<key>`` holds a runs-table
  view (the columns shown, the search filter) as JSON; the UI applies it when the page's URL
  carries ``?viewStateShareKey=<key>`` (what its own "Share" button does);
* the URL parameter ``workflowType=machine_learning``, which the UI reads before the stored
  toggle, so the sidebar shows the model-training pages (the stored GenAI default would show
  traces, judges and an "Overview" page);
* a **deep link** to the experiment's runs table with both, which this module prints:
  ``python -m pipelines ui`` (``make ui``) starts ``mlflow ui`` on the ablation's store and
  prints the address to open. Ingest writes the view, so the link works for any server on the
  store (``--link-only`` prints it for a server already running).

MLflow's assistant panel still opens once in a new browser profile (its own first-load
behaviour, a localStorage flag no link can set); its close button keeps it shut.

The view lists the ablation's grid runs (``pipelines.role`` = run: the parent, superseded and
search records are filtered out, so no row needs expanding) with mIoU, GFLOPs, latency and the
runs' axes as columns.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from pipelines import contract as c
from pipelines.errors import UserError

VIEW_KEY = "pipelines-runs"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
#: metric columns of the view, in order (those a run has; MLflow skips the others)
VIEW_METRICS = (c.MIOU, "gflops_total", c.LATENCY_MS, c.AACC, c.MACC)
#: params shown before the axes
VIEW_PARAMS = ("variant", c.SEED)
#: the ablation's grid runs (MLflow's filter has no OR, and no IN for tags: search trials, their
#: own role, are one filter edit away)
RUNS_FILTER = f"tags.`{c.ROLE_TAG}` = '{c.ROLE_RUN}'"


def _column(kind: str, name: str) -> str:
    """MLflow's canonical column key (``metrics.`miou```), as its runs table names columns."""
    return f"{kind}.`{name}`"


def view_state(axes: list[str]) -> dict:
    """The runs-table view: the grid runs, newest first, metrics and axes as columns."""
    params = [*VIEW_PARAMS, *(a for a in axes if a not in VIEW_PARAMS)]
    return {
        "searchFilter": RUNS_FILTER,
        "orderByKey": _column("attributes", "start_time"),
        "orderByAsc": False,
        "selectedColumns": [*(_column("metrics", m) for m in VIEW_METRICS),
                            *(_column("params", p) for p in params)],
        "runListHidden": False,
        "viewMaximized": False,
    }


def share_view(client, experiment_id: str, axes: list[str]) -> None:
    """Write the runs-table view as the experiment's shared view state (when it changed)."""
    value = json.dumps(view_state(sorted(set(axes))), sort_keys=True)
    exp = client.get_experiment(experiment_id)
    if exp.tags.get(VIEW_TAG) != value:
        client.set_experiment_tag(experiment_id, VIEW_TAG, value)


def runs_link(ui: str, experiment_id: str) -> str:
    """The address that opens the experiment's runs table in the shared view."""
    return (f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}"
            "&workflowType=machine_learning")


def experiment_id_of(tracking_uri: str, experiment: str) -> str:
    """The id of an ablation's experiment; one line if the store or the experiment is missing."""
    from pipelines import tracking

    with tracking.store_errors(tracking_uri, ""):
        exp = tracking.open_client(tracking_uri).get_experiment_by_name(experiment)
    if exp is None:
        raise UserError(f"{tracking_uri}: no experiment {experiment!r} (run the ablation first: "
                        "make demo, or snakemake --configfile <ablation>)")
    return exp.experiment_id


def tcp_port(text: str) -> int:
    """``--port``: a TCP port, 1 to 65535 (argparse turns the error into one line)."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is no TCP port (1 to 65535)")
    return port


def add_parser(sub) -> None:
    p = sub.add_parser("ui", help="start mlflow ui on an ablation's store and print the link "
                       "that opens its runs table (metric columns shown)")
    p.add_argument("--tracking-uri", default="sqlite:///results/mlflow.db",
                   help="the ablation's MLflow store (default: the demo's)")
    p.add_argument("--experiment", default="demo", help="the ablation (its experiment's name)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=tcp_port, default=5000, help="1 to 65535 (default 5000)")
    p.add_argument("--link-only", action="store_true",
                   help="print the link for a server already running; start nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.tracking import missing_sqlite_file

    if missing_sqlite_file(args.tracking_uri) is not None:
        raise UserError(f"{args.tracking_uri}: no such store (run the ablation first: make "
                        "demo)")
    experiment_id = experiment_id_of(args.tracking_uri, args.experiment)
    link = runs_link(f"http://{args.host}:{args.port}", experiment_id)
    print(f"{args.experiment}: open {link}", flush=True)
    if args.link_only:
        return 0
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    argv = [mlflow, "ui", "--backend-store-uri", args.tracking_uri, "--host", args.host,
            "--port", str(args.port)]
    os.execv(mlflow, argv)
    return 0  # not reached
