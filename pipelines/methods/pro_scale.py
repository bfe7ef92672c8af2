"""PRO-SCALE: what the pipeline knows of it (model and axes:
``pipelines/models/pro_scale.py``). Imports no model code (:mod:`pipelines.methods`);
no part of a run's code identity."""
from pipelines.methods import METHODS, Method


@METHODS.register_module(name="pro_scale")
class ProScaleMethod(Method):
    label, color, marker = "PRO-SCALE", "#1f77b4", "s"  # its series in figures and tables
    rank = 10
    figures = "pipelines.reports.figures_pro_scale:FIGURES"
    axis_labels = {"schedule": "{}"}
    recorded_as = ("pro_scale",)
