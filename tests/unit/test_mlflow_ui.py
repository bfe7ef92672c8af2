"""Issue 18 want 5: ``python -m pipelines ui`` prints the link that opens an ablation's runs table.

The page itself is checked in headless Chromium from a fresh profile in
``tests/services/test_browser.py``; here: the view ingest stores, the link, the command's argv,
and its bad input (one line, exit 2).
"""
from __future__ import annotations

import json

import pytest

from pipelines import contract as c
from pipelines import mlflow_ui
from tests.conftest import run_cli


@pytest.fixture
def store(tmp_path):
    from mlflow import MlflowClient

    from pipelines import tracking

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


def test_link_carries_the_view_and_the_model_training_sidebar():
    link = mlflow_ui.runs_link("http://127.0.0.1:5123/", "7")
    assert link == ("http://127.0.0.1:5123/#/experiments/7/runs?viewStateShareKey="
                    f"{mlflow_ui.VIEW_KEY}&workflowType=machine_learning")


def test_ui_prints_the_link_then_starts_mlflow_ui(store, monkeypatch, capsys):
    import argparse

    uri, _, experiment_id = store
    called = {}
    monkeypatch.setattr(mlflow_ui.os, "execv", lambda path, argv: called.update(argv=argv))
    args = argparse.Namespace(tracking_uri=uri, experiment="demo", host="127.0.0.1", port=5123,
                              link_only=False)
    assert mlflow_ui.run(args) == 0
    assert f"/#/experiments/{experiment_id}/runs?" in capsys.readouterr().out
    argv = called["argv"]
    assert argv[1:] == ["ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", "5123"]
    assert argv[0].endswith("mlflow")


@pytest.mark.parametrize("what", ["no store", "no experiment"])
def test_bad_input_is_one_line(store, tmp_path, what):
    uri = store[0] if what == "no experiment" else f"sqlite:///{tmp_path / 'none.db'}"
    proc = run_cli("ui", "--link-only", "--tracking-uri", uri, "--experiment",
                   "nosuch" if what == "no experiment" else "demo")
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in err and "\n" not in err, err[-2000:]
    assert ("no experiment 'nosuch'" if what == "no experiment" else "no such store") in err
    assert not (tmp_path / "none.db").exists()
