"""MMSeg / MMDet plug-ins for the efficient-encoder methods, one file per method."""
from pipelines.models.pro_scale import ProScalePixelDecoder  # noqa: F401  (registers it)
