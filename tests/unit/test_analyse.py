"""The analysis once, one way: `analyse` saves it; figures, the HTML and the
markdown report read that saved result (the HTML links the figures instead of drawing them)."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from pipelines.analysis import cli as analyse_cli
from pipelines.analysis.cli import load_analysis, save_analysis
from pipelines.analysis.data import read_runs_csv
from pipelines.analysis.settings import analyse
from pipelines.errors import UserError
from pipelines.reports import figures, html_report

RUNS_CSV = Path(__file__).resolve().parents[1] / "data" / "runs_small.csv"


def _cli(module, *argv):
    parser = argparse.ArgumentParser()
    module.add_parser(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis")
    assert _cli(analyse_cli, "analyse", "--runs-csv", str(RUNS_CSV), "--out", str(out)) == 0
    return out


def test_saved_analysis_reads_back_equal(saved):
    a = analyse(read_runs_csv(RUNS_CSV))
    b, manifest = load_analysis(saved)
    for name in analyse_cli.TABLES:
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_dtype=False)
    assert manifest["baseline"] == {"variant": "baseline", "series": "Mask2Former (baseline)"}
    assert manifest["experiment"] == "demo" and manifest["runs"] == 15
    for name in figures.FIGURES:  # the same figures from the saved result
        assert figures.png_bytes(figures.draw(name, a)) == figures.png_bytes(
            figures.draw(name, b)), name


def test_ladder_is_structured(tmp_path):
    """ECO-M2F's ladder/oracle metrics become rows (kind, exit, metric columns), and the wide
    runs table keeps none of the flattened names."""
    from pipelines import contract as c

    runs = read_runs_csv(RUNS_CSV)
    eco = runs["variant"] == "eco_m2f"
    extra = {c.LADDER_METRIC.format(exit=k, metric=m): eco.map({True: v + k, False: None})
             for k in (2, 4) for m, v in ((c.MIOU, 10.0), ("gflops_total", 1.0))}
    extra[c.ORACLE_METRIC.format(metric=c.MIOU)] = eco.map({True: 30.0, False: None})
    extra[c.ORACLE_METRIC.format(metric="gflops_total")] = eco.map({True: 2.5, False: None})
    a = analyse(runs.assign(**extra))
    assert not [col for col in a.runs.columns if col.startswith(("ladder.", "oracle."))]
    n = int(eco.sum())
    assert (a.ladder["kind"] == "ladder").sum() == 2 * n
    assert (a.ladder["kind"] == "oracle").sum() == n
    step = a.ladder[(a.ladder["kind"] == "ladder") & (a.ladder["exit"] == 4)]
    assert set(step["miou"]) == {14.0} and set(step["gflops_total"]) == {5.0}
    assert a.ladder["series"].eq("ECO-M2F").all()
    save_analysis(a, tmp_path)
    pd.testing.assert_frame_equal(load_analysis(tmp_path)[0].ladder, a.ladder, check_dtype=False)


def test_figures_and_html_read_the_saved_analysis(saved, tmp_path):
    fig_dir, page_dir = tmp_path / "figures" / "demo", tmp_path / "report" / "demo" / "html"
    assert _cli(figures, "figures", "--analysis", str(saved), "--out", str(fig_dir)) == 0
    manifest = json.loads((fig_dir / "figures.json").read_text())
    assert manifest["skipped"] == {}
    assert _cli(html_report, "html-report", "--analysis", str(saved), "--figures", str(fig_dir),
                "--out", str(page_dir), "--mlflow-ui", "http://127.0.0.1:5123") == 0
    assert sorted(p.name for p in page_dir.iterdir()) == ["index.html"]  # nothing redrawn
    page = (page_dir / "index.html").read_text()
    for name in figures.FIGURES:
        assert f'src="../../../figures/demo/{name}.png"' in page
    assert "http://127.0.0.1:5123/#/experiments/1/runs/" in page and ":5000" not in page
    assert "experiment demo (id 1)" in page
    assert "PRO-SCALE 3-3-3 TRC LPE" in page
    # every Pareto row has a verdict and a comparison with the baseline
    table = page.split("<h2>Pareto points (settings)</h2>")[1].split("</table>")[0]
    for row in re.findall(r"<tr>(.*?)</tr>", table, flags=re.S)[1:]:
        cells = re.findall(r"<td>(.*?)</td>", row, flags=re.S)
        assert cells[-4] and cells[-3], row


def test_markdown_report_reads_the_saved_analysis(saved):
    from pipelines.reports.report import _settings_markdown

    a, _ = load_analysis(saved)
    text = "\n".join(_settings_markdown(a))
    assert "| Mask2Former (baseline) |" in text and "ECO-M2F β=0.005" in text


def test_missing_saved_analysis_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no analysis.json there"):
        _cli(figures, "figures", "--analysis", str(tmp_path), "--out", str(tmp_path / "f"))
    with pytest.raises(UserError, match="no readable figures.json"):
        html_report.build_report(analyse(read_runs_csv(RUNS_CSV)), tmp_path / "h",
                                 figures_dir=tmp_path / "nope", log=lambda *_: None)


def test_notebook_reads_the_saved_analysis(saved, tmp_path):
    import nbformat
    import papermill

    analysis = Path(__file__).resolve().parents[2] / "analysis"
    out = tmp_path / "pareto.ipynb"
    papermill.execute_notebook(str(analysis / "pareto.ipynb"), str(out), cwd=str(analysis),
                               parameters={"analysis_dir": str(saved), "runs_csv": "none.csv"},
                               kernel_name="python3", progress_bar=False)
    nb = nbformat.read(out, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert "15 grid runs, 6 search trials" in "".join(o.get("text", "") for o in outputs)


def test_reading_the_store_pauses_the_garbage_collector_and_gives_it_back():
    """load_runs reads with Python's cyclic collector paused; it is on again afterwards (also
    after an error), and left off where the caller had turned it off."""
    import gc

    import pytest

    from pipelines.analysis.data import _no_cyclic_gc

    assert gc.isenabled()
    with _no_cyclic_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        with _no_cyclic_gc():
            raise RuntimeError("store gone")
    assert gc.isenabled()
    gc.disable()
    try:
        with _no_cyclic_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
