"""MMSeg / MMDet plug-ins for the efficient-encoder methods, one file per method."""
from pipelines.models import deform_attn
from pipelines.models.pro_scale import ProScalePixelDecoder  # noqa: F401  (registers it)
from pipelines.models.early_exit import EarlyExitPixelDecoder  # noqa: F401  (registers it)
from pipelines.models.token_cluster import ClusterViT  # noqa: F401  (registers it)
from pipelines.models.token_sample import SampleViT  # noqa: F401  (registers it)
from pipelines.models.cluster_pixel_decoder import ClusterPixelDecoder  # noqa: F401  (registers it)

deform_attn.install()  # mmdet's deformable layers: no host syncs, bfloat16-safe (deform_attn.py)
