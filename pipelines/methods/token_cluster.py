"""AiluRus: what the pipeline knows of it (model and axes:
``pipelines/models/token_cluster.py``). Imports no model code (:mod:`pipelines.methods`);
no part of a run's code identity."""
from pipelines.methods import METHODS, Method


@METHODS.register_module(name="token_cluster")
class TokenClusterMethod(Method):
    label, color, marker = "AiluRus", "#2ca02c", "D"  # its series in figures and tables
    rank = 30
    parts = {"cluster": "backbone.clusterer"}  # the clustering step's own GFLOPs
    figures = "pipelines.reports.figures_token_cluster:FIGURES"
    recorded_as = ("ailurus",)
