"""Reading tracked runs back out of MLflow for the analysis stage (Pareto, figures, report)."""
from pipelines.analysis.data import load_runs, read_runs_csv, tidy_runs, write_runs_csv

__all__ = ["load_runs", "read_runs_csv", "tidy_runs", "write_runs_csv"]
