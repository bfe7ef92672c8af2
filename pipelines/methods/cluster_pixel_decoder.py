"""Query clustering in the pixel decoder: what the pipeline knows of it (model and axes:
``pipelines/models/cluster_pixel_decoder.py``). Imports no model code (:mod:`pipelines.methods`);
no part of a run's code identity."""
from pipelines.methods import METHODS, Method


@METHODS.register_module(name="cluster_pixel_decoder")
class ClusterPixelDecoderMethod(Method):
    label, color, marker = "PD clustering", "#ff7f0e", "X"  # its series in figures and tables
    rank = 50
