"""Write the source notebooks ``pareto.ipynb`` and ``ablation.ipynb`` (cells kept here, as code,
so that a diff of a notebook is a diff of this file). Figure code lives in ``pipelines/``; the
notebooks only call it.

    .venv/bin/python analysis/build_notebooks.py      # rewrite the two source notebooks
    bash analysis/run_notebooks.sh [RUNS_CSV]          # execute them headless (papermill)
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

PARAMETERS = '''\
# Parameters (papermill: -p NAME VALUE). Give the saved analysis (`python -m pipelines analyse`,
# the workflow's results/analysis/<ablation>), or a tracking URI + experiment, or a runs CSV
# (a `runs.csv` written by `python -m pipelines figures`, or the recorded test table).
analysis_dir = ""          # e.g. "../results/analysis/demo"; used first
tracking_uri = ""          # e.g. "sqlite:///../results/mlflow.db"
experiment = "demo"        # MLflow experiment = ablation (or search) name
runs_csv = "../tests/data/runs_small.csv"  # used when tracking_uri is empty
'''

SETUP = '''\
import sys
from pathlib import Path

# the repository root, so that `pipelines` imports without `pip install -e .`
root = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "pipelines").is_dir())
sys.path.insert(0, str(root))

import pandas as pd
from IPython.display import Image, display

from pipelines.analysis.cli import load_analysis
from pipelines.analysis.data import read_source
from pipelines.analysis.settings import analyse
from pipelines.reports.figures import Skip, draw, png_bytes

# the analysis the figures and reports read: the saved one, else built here once
if analysis_dir:
    a, _ = load_analysis(analysis_dir)
elif tracking_uri:
    a = analyse(read_source(tracking_uri, experiment))
else:
    csv = Path(runs_csv)
    a = analyse(read_source(runs_csv=csv if csv.is_absolute() or csv.exists()
                            else root / csv.name))
runs = a.runs
grid = runs[runs["role"] == "run"]
print(f"{len(grid)} grid runs, {int((runs['role'] == 'trial').sum())} search trials; "
      f"series: {', '.join(a.series['series'])}")


def show(name):
    """Draw one paper figure (the same code as `python -m pipelines figures`)."""
    fig = draw(name, a)
    if isinstance(fig, Skip):
        print(f"skipped {name}: {fig.reason}")
    else:
        display(Image(data=png_bytes(fig)))
'''


def pareto_notebook():
    return new_notebook(cells=[
        new_markdown_cell("# Pareto analysis of an ablation\n\nObjectives: maximise `miou` "
                          "(%), minimise `gflops_total` (GFLOPs per image). Fronts, hypervolume "
                          "and knee point come from `pipelines.analysis.pareto` (pymoo underneath); see "
                          "its docstring for the definitions."),
        new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
        new_code_cell(SETUP),
        new_markdown_cell("## Pareto fronts: per series and overall (settings, on the means)"),
        new_code_cell('''\
# computed once by the analysis (seeds pooled into settings, fronts on the means)
fronts = a.fronts.merge(a.verdicts, on="setting", how="left")
cols = ["front", "knee", "setting", "n_seeds", "miou", "gflops_total", "latency_ms", "verdict"]
fronts[[c for c in cols if c in fronts]]'''),
        new_markdown_cell("## Hypervolume per series (one reference point for all)"),
        new_code_cell('''\
from pipelines.analysis.pareto import hypervolume, reference_point

settings = a.settings
ref = reference_point(settings)
hv = pd.Series({s: hypervolume(settings[settings["series"] == s], ref)
                for s in a.series["series"]}, name="hypervolume")
hv["overall"] = hypervolume(settings, ref)
print(f"reference point: {ref[0]:.3f} GFLOPs, {ref[1]:g} mIoU")
hv.to_frame()'''),
        new_markdown_cell("## Knee point of the overall front"),
        new_code_cell('''\
knee = fronts[(fronts["front"] == "overall") & fronts["knee"]]
knee[[c for c in cols if c in knee]]'''),
        new_markdown_cell("## Figures"),
        new_code_cell('show("accuracy_vs_gflops")'),
        new_code_cell('show("search_hypervolume")'),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                "language": "python"},
                 "language_info": {"name": "python"}})


def ablation_notebook():
    return new_notebook(cells=[
        new_markdown_cell("# Ablation overview\n\nSettings and results of every run, then the "
                          "per-method figures. A figure whose runs do not exist yet prints a "
                          "one-line note instead."),
        new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
        new_code_cell(SETUP),
        new_markdown_cell("## Runs"),
        new_code_cell('''\
from pipelines.reports.tables import points_table

points_table(a)'''),
        new_markdown_cell("## Settings: seeds pooled (mean and 95 % CI)"),
        new_code_cell('''\
# runs that differ only by seed, pooled into one setting: the same analysis the figures and
# the report read (mean, std and Student-t 95 % CI per metric; axes from the runs' own tags)
settings = a.settings
cols = ["setting", "n_seeds", *(f"{m}{s}" for m in ("miou", "gflops_total", "latency_ms")
                                for s in ("", "_lo", "_hi") if f"{m}{s}" in settings)]
settings[cols].round(3)'''),
        new_markdown_cell("## PRO-SCALE: encoder GFLOPs per schedule"),
        new_code_cell('show("encoder_gflops_by_schedule")'),
        new_markdown_cell("## ECO-M2F: exits"),
        new_code_cell('show("eco_m2f_exits")'),
        new_markdown_cell("## AiluRus: clustering fraction"),
        new_code_cell('show("accuracy_vs_cluster_fraction")'),
        new_markdown_cell("## Does wall clock follow FLOPs?"),
        new_code_cell('show("latency_vs_gflops")'),
    ], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                "language": "python"},
                 "language_info": {"name": "python"}})


def main() -> None:
    for name, nb in (("pareto", pareto_notebook()), ("ablation", ablation_notebook())):
        for i, cell in enumerate(nb.cells):  # stable ids: no churn when rebuilt
            cell["id"] = f"{name}-{i:02d}"
        nbformat.validate(nb)
        nbformat.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
