"""optuna-dashboard on a search's study, on loopback, seen by headless Chromium: the trials, the
Pareto front of the feasible trials, and the infeasible trials marked as such."""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.services.local_slurm import free_port

pytestmark = pytest.mark.services


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _dump_dom(browser: str, url: str, tmp: Path) -> str:
    """The page's DOM after its scripts ran (the dashboard is a React app fed by its API)."""
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           f"--user-data-dir={tmp / 'chromium'}", "--virtual-time-budget=20000",
                           "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


class _Points(HTMLParser):
    """The fill style of every marker (``path.point``) drawn inside the element ``root_id``."""

    def __init__(self, root_id: str):
        super().__init__()
        self.root_id, self.depth, self.fills = root_id, 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if self.depth:
            self.depth += tag not in VOID
            if tag == "path" and "point" in (attrs.get("class") or "").split():
                style = dict((k.strip(), v.strip()) for k, _, v in
                             (part.partition(":") for part in
                              (attrs.get("style") or "").split(";")) if v)
                self.fills.append(style.get("fill", ""))
        elif attrs.get("id") == self.root_id:
            self.depth = 1

    def handle_endtag(self, tag):
        if self.depth and tag not in VOID:
            self.depth -= 1


VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}
INFEASIBLE_FILL = "rgb(204, 204, 204)"  # the dashboard's grey (#cccccc) for infeasible trials


def pareto_fills(dom: str) -> list[str]:
    """The fill of every point of the dashboard's Pareto-front plot (``#graph-pareto-front``;
    the timeline and other plots are elsewhere in the page)."""
    parser = _Points("graph-pareto-front")
    parser.feed(dom)
    return parser.fills


def test_dashboard_shows_trials_and_pareto_front(tmp_path):

    from pipelines.benchmarks.search_replay import SPACE
    from pipelines.search.cli import ReplayExecutor, Search, open_storage, open_study
    from pipelines.search.space import load_search_space

    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium missing: apt-get install -y chromium")
    from tests.unit.test_search import TABLE as table
    spec = dataclasses.replace(load_search_space(SPACE), name="dash", max_trials=30,
                               max_trainings=8, batch=3, seed=2)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    study = open_study(spec, open_storage(storage))
    Search(spec=spec, study=study, executor=ReplayExecutor(table=table),
           cost=lambda run: table[run.run_id]["gflops_total"], log=lambda m: None).run()
    trials = study.get_trials()
    infeasible = [t.number for t in trials if t.user_attrs.get("status") == "infeasible"]
    front = sorted(t.number for t in study.best_trials)
    assert infeasible and front

    port = free_port()
    dashboard = subprocess.Popen([str(Path(sys.executable).with_name("optuna-dashboard")),
                                  storage, "--host", "127.0.0.1", "--port", str(port)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/studies", timeout=2).read()
                break
            except OSError:
                assert dashboard.poll() is None, dashboard.stdout.read()
                assert time.monotonic() < deadline, "optuna-dashboard did not answer"
                time.sleep(0.5)
        dom = _dump_dom(browser, f"{base}/dashboard/studies/{study._study_id}", tmp_path)
        assert "Pareto Front" in dom
        # the Pareto plot draws each infeasible trial (told COMPLETE at the mIoU floor) in the
        # infeasible grey, and nothing else in it (the timeline's "Infeasible" legend is
        # another plot)
        drawn = [t for t in trials if t.state.name == "COMPLETE"]
        plotted_infeasible = [t.number for t in drawn if t.user_attrs.get("status") ==
                              "infeasible"]
        fills = pareto_fills(dom)
        assert len(fills) == len(drawn), fills  # every COMPLETE trial is a point
        assert plotted_infeasible and fills.count(INFEASIBLE_FILL) == len(plotted_infeasible), \
            (fills, plotted_infeasible)
        for name in ("miou", "gflops_total"):  # the study's metric names label the axes
            assert f'data-unformatted="{name}"' in dom
        # several best trials are listed as "Trial N", a single one as "Best Trial (number=N)"
        shown = sorted(int(many or one) for many, one in re.findall(
            r">Trial (\d+)<|Best Trial \(number=(\d+)\)", dom))
        assert shown == front, (shown, front)  # the best trials = the feasible Pareto front
        assert not set(shown) & set(infeasible)
        trials_dom = _dump_dom(browser, f"{base}/dashboard/studies/{study._study_id}/trials",
                               tmp_path)
        listed = set(int(n) for n in re.findall(r"Trial (\d+)", trials_dom))
        assert listed >= {t.number for t in trials[:5]}  # the trial list shows the trials
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)
