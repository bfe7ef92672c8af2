"""ATS: what the pipeline knows of it (model and axes:
``pipelines/models/token_sample.py``). Imports no model code (:mod:`pipelines.methods`);
no part of a run's code identity."""
from pipelines.methods import METHODS, Method


@METHODS.register_module(name="token_sample")
class TokenSampleMethod(Method):
    label, color, marker = "ATS", "#9467bd", "v"  # its series in figures and tables
    rank = 40
    recorded_as = ("ats",)
