"""``python -m pipelines ui`` prints the link that opens an ablation's runs table.

The page itself is checked in headless Chromium from a fresh profile in
``tests/services/test_browser.py``; here: the view ingest stores, the links (one function for
every MLflow link), the address they name, the link printed once a real server answers, and
bad input (one line, exit 2).
"""
from __future__ import annotations

import contextlib
import json

import pytest

from pipelines import contract as c
from pipelines.tracking import mlflow_ui
from tests.conftest import run_cli


@pytest.fixture
def store(tmp_path):
    from mlflow import MlflowClient

    from pipelines.tracking import store as tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment_id = tracking.get_or_create_experiment(client, "demo", str(tmp_path / "art"))
    return uri, client, experiment_id


def test_the_view_shows_metrics_and_axes_of_the_grid_runs_only():
    view = mlflow_ui.view_state(["schedule", "seed", "trc"])
    assert view["searchFilter"] == f"tags.`{c.ROLE_TAG}` = '{c.ROLE_RUN}'"
    cols = view["selectedColumns"]
    assert cols[:2] == ["metrics.`miou`", "metrics.`gflops_total`"]
    # seed once, after the variant; the axes after
    assert [x for x in cols if x.startswith("params.")] == [
        "params.`variant`", "params.`seed`", "params.`schedule`", "params.`trc`"]


def test_share_view_writes_the_experiment_tag_once(store):
    uri, client, experiment_id = store
    mlflow_ui.share_view(client, experiment_id, ["trc", "schedule", "seed", "schedule"])
    tag = client.get_experiment(experiment_id).tags[mlflow_ui.VIEW_TAG]
    assert json.loads(tag) == mlflow_ui.view_state(["schedule", "seed", "trc"])
    # unchanged axes: no second write (the tag's value is the same object in the store)
    before = client.get_experiment(experiment_id).tags
    mlflow_ui.share_view(client, experiment_id, ["schedule", "trc", "seed"])
    assert client.get_experiment(experiment_id).tags == before


def test_every_link_carries_the_model_training_sidebar():
    link = mlflow_ui.mlflow_link("http://127.0.0.1:5123/", "7")
    assert link == ("http://127.0.0.1:5123/#/experiments/7/runs?viewStateShareKey="
                    f"{mlflow_ui.VIEW_KEY}&workflowType=machine_learning")
    assert mlflow_ui.mlflow_link("http://127.0.0.1:5123", "7", "abc") == \
        "http://127.0.0.1:5123/#/experiments/7/runs/abc?workflowType=machine_learning"


def test_the_links_name_the_ablations_ui_not_port_5000(store, tmp_path):
    """The audit: the HTML report's links named port 5000 whatever the server; the report and
    `ui` now take the address from one place, the ablation's `mlflow.ui`."""
    import yaml

    uri, _, experiment_id = store
    ablation = tmp_path / "ablation.yaml"
    ablation.write_text(yaml.safe_dump({"name": "demo", "mlflow": {
        "tracking_uri": uri, "ui": "http://127.0.0.1:5123"}}))
    proc = run_cli("ui", "--ablation", str(ablation), "--link-only")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == \
        f"demo: open {mlflow_ui.mlflow_link('http://127.0.0.1:5123', experiment_id)}"
    assert mlflow_ui.ui_address(uri, "http://127.0.0.1:5123/") == "http://127.0.0.1:5123"
    assert mlflow_ui.ui_address("http://tracking:8080/") == "http://tracking:8080"
    assert mlflow_ui.ui_address(uri) == mlflow_ui.DEFAULT_UI


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a real `mlflow ui` start: 5 s idle, 35 s on a loaded 2-core machine
def test_ui_prints_the_link_once_the_server_answers(store, tmp_path):
    """The audit: the link was printed before `mlflow ui` started (on a loaded machine it
    answered ~40 s later) and Uvicorn's lines came after it. Now the link is the last line and
    the server answers when it is printed; stopping `ui` stops the server."""
    import os
    import select
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from tests.conftest import REPO

    uri, _, experiment_id = store
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines", "ui", "--tracking-uri", uri, "--experiment", "demo",
         "--port", str(port)], cwd=REPO, stdout=subprocess.PIPE,
        stderr=open(tmp_path / "server.log", "w"), text=True, start_new_session=True)
    try:
        lines, deadline = [], time.monotonic() + 300
        while not (lines and " open " in lines[-1]):
            assert proc.poll() is None and time.monotonic() < deadline, \
                (lines, (tmp_path / "server.log").read_text()[-2000:])
            if select.select([proc.stdout], [], [], 1.0)[0]:
                lines.append(proc.stdout.readline().strip())
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).close()
        assert lines[-1] == \
            f"demo: open {mlflow_ui.mlflow_link(f'http://127.0.0.1:{port}', experiment_id)}"
        os.kill(proc.pid, signal.SIGTERM)  # `ui` alone: its server follows it
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
            except OSError:
                break
            time.sleep(0.5)
        else:
            raise AssertionError("the server outlived `ui`")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("what", ["no store", "no experiment"])
def test_bad_input_is_one_line(store, tmp_path, what):
    uri = store[0] if what == "no experiment" else f"sqlite:///{tmp_path / 'none.db'}"
    proc = run_cli("ui", "--link-only", "--tracking-uri", uri, "--experiment",
                   "nosuch" if what == "no experiment" else "demo")
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in err and "\n" not in err, err[-2000:]
    assert ("no experiment 'nosuch'" if what == "no experiment" else "no such store") in err
    assert not (tmp_path / "none.db").exists()
