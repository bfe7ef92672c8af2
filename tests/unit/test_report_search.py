"""The searched runs in the reports: the markdown report's search section counts
and lists them; the HTML report refuses figures drawn from another analysis (before a search
added its runs), instead of counting the trials and showing the figures' "no trials yet"."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.analysis.data import read_runs_csv
from pipelines.analysis.settings import analyse
from pipelines.errors import UserError
from pipelines.reports import html_report
from pipelines.reports.figures import render_all
from pipelines.reports.report import _search_markdown

RUNS_CSV = Path(__file__).resolve().parents[1] / "data" / "runs_small.csv"


@pytest.fixture(scope="module")
def runs():
    return read_runs_csv(RUNS_CSV)


def test_search_section_counts_and_lists_the_trials(runs):
    trials = runs[runs["role"] == "trial"]
    assert len(trials) >= 1
    text = "\n".join(_search_markdown(analyse(runs)))
    assert text.startswith("## Search")
    assert f"{len(trials)} search trials" in text
    for run_id in trials["run_id"]:
        assert f"`{run_id}`" in text
    assert _search_markdown(analyse(runs[runs["role"] != "trial"])) == []


def test_html_report_refuses_figures_of_another_analysis(runs, tmp_path):
    before = analyse(runs[runs["role"] != "trial"])  # the figures drawn before the search
    render_all(before, tmp_path / "figures", log=lambda m: None)
    with pytest.raises(UserError, match="drawn from another analysis"):
        html_report.build_report(analyse(runs), tmp_path / "html",
                                 figures_dir=tmp_path / "figures")
