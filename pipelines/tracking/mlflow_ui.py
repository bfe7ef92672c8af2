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
  prints the address to open once the server answers (the last line). Ingest writes the view,
  so the link works for any server on the store (``--link-only`` prints it for a server
  already running).

Every MLflow link (this one, the HTML report's experiment and run links) is built by
:func:`mlflow_link`, at the address :func:`ui_address` gives: the ablation's ``mlflow.ui``, the
tracking server itself, or :data:`DEFAULT_UI`, where ``ui`` starts by default; ``ui --ablation
FILE`` starts at the ablation's address, so the report's links and the server agree.

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
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from pipelines import contract as c
from pipelines.errors import UserError

#: where ``python -m pipelines ui`` starts the UI, and so what links name, unless the ablation's
#: ``mlflow.ui`` says otherwise
DEFAULT_UI = "http://127.0.0.1:5000"
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


def mlflow_link(ui: str, experiment_id, run_id: str | None = None) -> str:
    """Every MLflow UI address this project prints or writes (``ui``'s link, the HTML report's
    experiment and run links): an experiment's runs table in the shared view, or one run; each
    with ``workflowType=machine_learning``, without which a fresh browser opens MLflow's GenAI
    "Overview" instead of the page linked. ``ui``: the server's address (:func:`ui_address`)."""
    base = f"{ui.rstrip('/')}/#/experiments/{experiment_id}"
    if run_id is None:
        return f"{base}/runs?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"
    return f"{base}/runs/{run_id}?workflowType=machine_learning"


def ui_address(tracking_uri: str | None = None, configured: str | None = None) -> str:
    """The MLflow UI the links name: the ablation's ``mlflow.ui`` when set, else the tracking
    server itself (an http(s) tracking URI), else :data:`DEFAULT_UI`, where ``ui`` starts one."""
    if configured:
        return configured.rstrip("/")
    if tracking_uri and tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return DEFAULT_UI


def experiment_id_of(tracking_uri: str, experiment: str) -> str:
    """The id of an ablation's experiment; one line if the store or the experiment is missing."""
    from pipelines.tracking import store as tracking

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
                       "that opens its runs table (metric columns shown) once it answers")
    p.add_argument("--ablation", help="an ablation config: its store (mlflow.tracking_uri), "
                   "experiment (name) and UI address (mlflow.ui), the address its HTML report "
                   "links to (default: the demo's)")
    p.add_argument("--tracking-uri", help="the MLflow store (default: the ablation's)")
    p.add_argument("--experiment", help="the experiment's name (default: the ablation's)")
    p.add_argument("--host", help=f"default: the ablation's mlflow.ui, else {DEFAULT_UI}")
    p.add_argument("--port", type=tcp_port, help="1 to 65535 (default: the ablation's "
                   f"mlflow.ui, else {DEFAULT_UI})")
    p.add_argument("--link-only", action="store_true",
                   help="print the link for a server already running; start nothing")
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace) -> tuple[str, str, str, int]:
    """(tracking URI, experiment, host, port): the options, else the ablation's, else the
    demo's."""
    from pipelines.tracking.store import DEFAULT_TRACKING_URI

    config: dict = {"name": "demo"}
    if args.ablation:
        from pipelines.grid import load_ablation

        config = load_ablation(args.ablation)
    mlflow = config.get("mlflow") or {}
    address = urlsplit(ui_address(configured=mlflow.get("ui")))
    return (args.tracking_uri or mlflow.get("tracking_uri") or DEFAULT_TRACKING_URI,
            args.experiment or str(config.get("name") or "demo"),
            args.host or address.hostname or "127.0.0.1", args.port or address.port or 80)


def _answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (any status)."""
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def run(args: argparse.Namespace) -> int:
    from pipelines.tracking.store import missing_sqlite_file

    uri, experiment, host, port = _settings(args)
    if missing_sqlite_file(uri) is not None:
        raise UserError(f"{uri}: no such store (run the ablation first: make demo)")
    server = f"http://{host}:{port}"
    link = mlflow_link(server, experiment_id_of(uri, experiment))
    if args.link_only:
        print(f"{experiment}: open {link}", flush=True)
        return 0
    from pipelines.lock import die_with_parent

    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    # one worker (MLflow's default of 4 start one by one, the last after the first answers,
    # and each costs a core's worth of start-up), no access log and no library warnings: the
    # link stays the last line until the UI is used
    argv = [mlflow, "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port),
            "--workers", "1", "--uvicorn-opts", "--no-access-log"]
    print(f"{experiment}: starting mlflow ui on {server}; the link follows once it answers",
          flush=True)
    server_proc = subprocess.Popen(argv, preexec_fn=die_with_parent,
                                   env=dict(os.environ, PYTHONWARNINGS="ignore"))
    local = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/health"
    try:
        while not _answers(local):
            if server_proc.poll() is not None:
                raise UserError(f"mlflow ui stopped (exit {server_proc.returncode}) before it "
                                f"answered on {server}: is the port taken? (--port N)")
            time.sleep(0.5)
        print(f"{experiment}: open {link}", flush=True)
        return server_proc.wait()
    finally:
        if server_proc.poll() is None:
            server_proc.terminate()
            server_proc.wait()
