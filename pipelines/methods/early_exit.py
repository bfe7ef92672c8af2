"""ECO-M2F: what the pipeline knows of it (model and axes:
``pipelines/models/early_exit.py``). Imports no model code (:mod:`pipelines.methods`);
no part of a run's code identity."""
from pipelines.methods import METHODS, Method


@METHODS.register_module(name="early_exit")
class EarlyExitMethod(Method):
    label, color, marker = "ECO-M2F", "#d62728", "^"  # its series in figures and tables
    rank = 20
    figures = "pipelines.reports.figures_eco_m2f:FIGURES"
    report = "pipelines.eco_m2f.markdown:report_lines"
    report_title = "ECO-M2F: exit histogram, ladder and oracle"
    cost_model = "pipelines.stages.cost_model:early_exit_pixel_decoder_flops_from_cfg"
    finished_by = "gate"  # a run with a beta is completed by its gate
    not_timed = ("gated ECO-M2F run: its latency follows the exit its trained gate picks per "
                 "image, so the paired benchmark of untrained models does not time it "
                 "(python -m pipelines.benchmarks.early_exit_latency times mixed exits "
                 "against the fixed exits)")
    axis_labels = {"beta": "β={:g}"}
    recorded_as = ("eco_m2f",)
