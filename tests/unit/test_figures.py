"""Figures, Pareto tables and the HTML report: byte-identical re-runs, skip notes, run ids."""
from __future__ import annotations

import argparse
import csv
import filecmp
import html
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipelines.analysis.data import read_runs_csv
from pipelines.analysis.settings import analyse
from pipelines.errors import UserError
from pipelines.reports import figures, html_report, tables
from pipelines.tracking import mlflow_ui

RUNS_CSV = Path(__file__).resolve().parents[1] / "data" / "runs_small.csv"


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return read_runs_csv(RUNS_CSV)


@pytest.fixture(scope="module")
def rendered(runs, tmp_path_factory):
    """The full recorded table rendered twice into two folders."""
    outs = []
    for name in ("first", "second"):
        out = tmp_path_factory.mktemp(name)
        figures.render_all(runs, out, log=lambda *_: None)
        outs.append(out)
    return outs


def test_every_figure_written_as_pdf_and_png(rendered):
    manifest = json.loads((rendered[0] / "figures.json").read_text())
    assert manifest["skipped"] == {}
    assert sorted(manifest["figures"]) == sorted(figures.FIGURES)
    for name in figures.FIGURES:
        assert (rendered[0] / f"{name}.pdf").read_bytes().startswith(b"%PDF")
        assert (rendered[0] / f"{name}.png").read_bytes().startswith(b"\x89PNG")


def test_rerun_gives_byte_identical_files(rendered):
    first, second = rendered
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    match, mismatch, errors = filecmp.cmpfiles(first, second, names, shallow=False)
    assert mismatch == [] and errors == []


def test_no_dates_or_versions_in_metadata(rendered):
    pdf = (rendered[0] / "accuracy_vs_gflops.pdf").read_bytes()
    assert b"CreationDate" not in pdf and b"Matplotlib" not in pdf
    png = (rendered[0] / "accuracy_vs_gflops.png").read_bytes()
    assert b"Software" not in png and b"matplotlib" not in png.lower()


def test_every_pareto_point_traceable_to_its_runs(rendered, runs):
    ids = set(runs["mlflow_run_id"])
    with open(rendered[0] / "points.csv", newline="") as fh:
        points = list(csv.DictReader(fh))
    assert len(points) == int((runs["role"] == "run").sum())
    assert all(p["run_id"] and p["setting"] and p["mlflow_run_id"] in ids for p in points)
    on_front = [p for p in points if p["pareto_overall"] == "True"]
    knees = {p["setting"] for p in points if p["knee_overall"] == "True"}
    assert on_front and len(knees) == 1
    table = tables.pareto_table(runs)
    assert set(table["front"]) == {"overall", *analyse(runs).series["series"]}
    members = [i for text in table["mlflow_run_ids"] for i in json.loads(text)]
    assert set(members) <= ids and table["setting"].str.len().gt(0).all()
    md = (rendered[0] / "pareto_points.md").read_text()
    tex = (rendered[0] / "pareto_points.tex").read_text()
    for mlflow_id in members:
        assert f"`{mlflow_id}`" in md and mlflow_id in tex
    assert md.count("\n") == len(table) + 4  # header, rule, rows, blank line, the note
    assert "paired t-test" in md and "Student t" in md
    overall = table[table["front"] == "overall"]
    assert {p["setting"] for p in on_front} == set(overall["setting"])
    # every overall front point carries a verdict of the named test
    assert overall["verdict"].isin(["distinguishable", "not distinguishable",
                                    "not testable"]).all()
    # the two-seed baseline is pooled into one setting with an interval
    settings = pd.read_csv(rendered[0] / "settings.csv")
    base = settings[settings["variant"] == "baseline"].iloc[0]
    assert base["n_seeds"] == 2 and base["miou_lo"] < base["miou"] < base["miou_hi"]


def test_missing_variants_are_skipped_with_a_note(runs, rendered, tmp_path):
    baseline = runs[(runs["role"] == "run") & (runs["variant"] == "baseline")]
    notes = []
    shutil.copytree(rendered[0], tmp_path, dirs_exist_ok=True)  # a folder from a fuller table
    manifest = figures.render_all(baseline, tmp_path, log=notes.append)
    skipped = {"encoder_gflops_by_schedule", "eco_m2f_exits", "eco_m2f_tradeoff",
               "accuracy_vs_cluster_fraction",
               "search_hypervolume"}
    assert set(manifest["skipped"]) == skipped
    assert sorted(n.split(":")[0] for n in notes if n.startswith("skipped")) == sorted(
        f"skipped {name}" for name in skipped)
    for name in skipped:  # no stale plot from the earlier, fuller table
        assert not (tmp_path / f"{name}.png").exists()
    assert (tmp_path / "accuracy_vs_gflops.png").exists()
    # and they appear once their runs exist (the full table draws everything: see above)


def test_per_stage_encoder_split_used_when_tracked(runs):
    assert figures._stage_columns(runs) == []
    staged = runs.assign(gflops_encoder_stage2=0.5, gflops_encoder_stage1=0.2)
    assert figures._stage_columns(staged) == ["gflops_encoder_stage1", "gflops_encoder_stage2"]
    assert not isinstance(figures.draw("encoder_gflops_by_schedule", staged), figures.Skip)


def test_latex_escaping():
    assert tables._tex("a_b 50% β") == r"a\_b 50\% $\beta$"


def _cli(module, *argv):
    parser = argparse.ArgumentParser()
    module.add_parser(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_needs_a_source(tmp_path):
    with pytest.raises(UserError, match="--tracking-uri"):
        _cli(figures, "figures", "--out", str(tmp_path))
    with pytest.raises(UserError, match="not found"):
        _cli(figures, "figures", "--runs-csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path))


def test_html_report_links_every_run_and_is_deterministic(runs, tmp_path):
    assert _cli(html_report, "html-report", "--runs-csv", str(RUNS_CSV),
                "--out", str(tmp_path / "a"), "--mlflow-ui", "http://mlflow:5000/") == 0
    page = (tmp_path / "a" / "index.html").read_text()
    for _, run in runs[runs["role"] == "run"].iterrows():
        url = (f"http://mlflow:5000/#/experiments/{run['experiment_id']}/runs/"
               f"{run['mlflow_run_id']}?workflowType=machine_learning")
        assert f'href="{url}"' in page
    # the audit: without workflowType a fresh browser opened MLflow's GenAI "Overview"; every
    # MLflow link is the one `python -m pipelines ui` prints, the experiment's included
    links = re.findall(r'href="(http://mlflow:5000/[^"]*)"', page)
    assert links and all(link.endswith("workflowType=machine_learning") for link in links)
    experiment = runs["experiment_id"].dropna().astype(str).iloc[0]
    assert html.escape(mlflow_ui.mlflow_link("http://mlflow:5000", experiment)) in page
    for name in figures.FIGURES:
        assert f'src="figures/{name}.png"' in page
    html_report.build_report(runs, tmp_path / "b", ui="http://mlflow:5000", log=lambda *_: None)
    assert page == (tmp_path / "b" / "index.html").read_text()


def test_load_runs_reads_the_ingestion_contract_back(tmp_path, monkeypatch, runs):
    """A few runs logged into a SQLite store the way the ingestion does come back exactly as
    recorded in runs_small.csv (apart from MLflow's random ids)."""
    import importlib.util

    from pipelines.analysis.data import load_runs

    spec = importlib.util.spec_from_file_location("record", RUNS_CSV.with_name(
        "record_runs_small.py"))
    record = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(record)
    keep = {"baseline-s0", "pro_scale-3-3-3-trc", "eco_m2f-b0.005"}
    monkeypatch.setattr(record, "RUNS", [r for r in record.RUNS if r[0] in keep])
    monkeypatch.setattr(record, "TRIALS", record.TRIALS[:1])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    record.log_runs(uri, "demo", artifact_location=str(tmp_path / "artifacts"))
    got = load_runs(uri, "demo")
    assert list(got["role"]) == ["run", "run", "run", "trial"]  # the parent run is left out
    assert got["mlflow_run_id"].str.len().eq(32).all()
    want = runs[runs["run_id"].isin(keep | {"trial-000"})].reset_index(drop=True)
    ignore = ["mlflow_run_id", "experiment_id"]
    # axis columns exist for the axes the logged runs have (the full table has more variants)
    absent = [c for c in want.columns if c not in got.columns]
    assert want[absent].isna().all().all()
    want = want.drop(columns=absent)
    pd.testing.assert_frame_equal(got.drop(columns=ignore), want.drop(columns=ignore))
    assert json.loads(got.loc[got["run_id"] == "eco_m2f-b0.005", "exit_histogram"].iloc[0]) == {
        "2": 5, "3": 9, "4": 8, "5": 6, "6": 4}
    with pytest.raises(UserError, match="no MLflow experiment 'nope'"):
        load_runs(uri, "nope")


def test_color_by_any_axis(tmp_path):
    """`figures --color-by AXIS`: one more figure coloured by that axis; a name that is not an
    axis of the runs is one line."""
    out = tmp_path / "fig"
    assert _cli(figures, "figures", "--runs-csv", str(RUNS_CSV), "--out", str(out),
                "--color-by", "schedule") == 0
    manifest = json.loads((out / "figures.json").read_text())
    assert manifest["figures"]["accuracy_vs_gflops_by_schedule"] == [
        "accuracy_vs_gflops_by_schedule.pdf", "accuracy_vs_gflops_by_schedule.png"]
    with pytest.raises(UserError, match="--color-by colour: no axis 'colour'"):
        _cli(figures, "figures", "--runs-csv", str(RUNS_CSV), "--out", str(out),
             "--color-by", "colour")


def test_search_hypervolume_uses_the_searchs_own_budget_as_reference(runs):
    """With the budget the search logs on its trial runs, the reference point is fixed before
    any run (mIoU 0 at the budget) instead of being inferred from the points drawn."""
    from pipelines import contract

    trials = runs["role"] == "trial"
    inferred = figures.draw("search_hypervolume", runs)
    budgeted = figures.draw("search_hypervolume",
                            runs.assign(**{contract.SEARCH_GFLOPS_BUDGET:
                                           trials.map({True: 7.25, False: float("nan")})}))
    assert "reference: 7.25 GFLOPs, 0 mIoU" in budgeted.axes[0].get_title()
    assert "7.25" not in inferred.axes[0].get_title()
    assert "budget" in " ".join(t.get_text() for t in budgeted.axes[0].texts)


def test_searched_runs_are_drawn_beside_the_grid(runs):
    """The Optuna trial runs are points of the accuracy figure (not of its
    fronts, which pool the grid's settings)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.analysis.settings import analyse

    a = analyse(runs)
    trials = figures.searched_points(a)
    assert len(trials) == (runs["role"] == "trial").sum() > 0
    fig = figures.fig_accuracy_vs_gflops(a, plt)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert f"searched: {len(trials)} Optuna trial run(s), one seed each" in labels
    plt.close(fig)
    grid_only = analyse(runs[runs["role"] != "trial"])
    fig = figures.fig_accuracy_vs_gflops(grid_only, plt)
    assert not any(lab.startswith("searched") for lab in
                   fig.axes[0].get_legend_handles_labels()[1])
    plt.close(fig)


def test_accuracy_figure_names_every_setting_and_keeps_its_legend_honest():
    """Every setting is named beside its point (not only the knee), a series' legend marker is
    the marker it is plotted with, and 'line: its front' is promised only where one is drawn
    (the demo: one-point fronts; the small table: multi-point fronts)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    promised = []
    for name in ("runs_demo.csv", "runs_small.csv"):
        a = tables._analysis(read_runs_csv(RUNS_CSV.parent / name))
        fig = figures.fig_accuracy_vs_gflops(a, plt)
        ax = fig.axes[0]
        if name == "runs_demo.csv":
            assert {"1-1-1 TRC LPE", "3-3-3 TRC LPE", "baseline"} <= {t.get_text()
                                                                     for t in ax.texts}
        legend = ax.get_legend()
        for handle, text in zip(legend.legend_handles, legend.get_texts()):
            for series in a.ordered_series(a.settings["series"]):
                if text.get_text().startswith(f"{series} (mean"):
                    assert handle.get_marker() == a.style(series)[1]
                    drawn = len(a.fronts[a.fronts["front"] == series]) >= 2
                    assert ("its front" in text.get_text()) == drawn
                    promised.append(drawn)
        plt.close(fig)
    assert True in promised and False in promised
