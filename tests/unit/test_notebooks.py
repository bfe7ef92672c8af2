"""The analysis notebooks run headless (papermill) on the recorded runs table without errors."""
from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]
ANALYSIS = REPO / "analysis"
RUNS_CSV = REPO / "tests" / "data" / "runs_small.csv"
DEMO_CSV = REPO / "tests" / "data" / "runs_demo.csv"  # recorded from a real `make demo`
NOTEBOOKS = ("pareto", "ablation")


def _errors(nb) -> list[str]:
    return [f"{o.get('ename')}: {o.get('evalue')}" for c in nb.cells if c.cell_type == "code"
            for o in c.get("outputs", []) if o.output_type == "error"]


def _images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_parameterised(name):
    nb = nbformat.read(ANALYSIS / f"{name}.ipynb", as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    for key in ("tracking_uri", "experiment", "runs_csv"):
        assert f"{key} =" in params[0].source
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")  # source copy


def _execute(name: str, runs_csv: Path, tmp_path: Path):
    """Run notebook ``name`` headless with papermill on ``runs_csv``; the executed notebook."""
    import papermill

    out = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(str(ANALYSIS / f"{name}.ipynb"), str(out), cwd=str(ANALYSIS),
                               parameters={"runs_csv": str(runs_csv), "tracking_uri": ""},
                               kernel_name="python3", progress_bar=False)
    return nbformat.read(out, as_version=4)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_on_the_recorded_table(name, tmp_path):
    nb = _execute(name, RUNS_CSV, tmp_path)
    assert _errors(nb) == []
    assert _images(nb) >= 2
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "15 grid runs, 6 search trials" in text


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_kept_executed_copy_has_no_errors(name):
    nb = nbformat.read(ANALYSIS / "executed" / f"{name}.ipynb", as_version=4)
    assert _errors(nb) == [] and _images(nb) >= 2
    assert nb.metadata.get("papermill", {}).get("exception") in (None, False)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_on_the_demo_recorded_from_a_real_run(name, tmp_path):
    """The table a real `make demo` wrote (baseline + 2 PRO-SCALE schedules, 3 seeds): the notebooks
    must also cope with variants and the search being absent."""
    nb = _execute(name, DEMO_CSV, tmp_path)
    assert _errors(nb) == []
    assert _images(nb) >= 1
