"""The synthetic set as an MMSeg dataset (ADE20K folder layout, our class list)."""
from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from pipelines.data.synthetic import CLASSES, PALETTE


@DATASETS.register_module()
class SyntheticShapesDataset(BaseSegDataset):
    """Images ``*.jpg`` and label maps ``*.png`` in ADE20K's layout.

    Label 0 is a real class (``background``), so unlike ADE20K nothing is reduced.
    """

    METAINFO = dict(classes=CLASSES, palette=[list(c) for c in PALETTE])

    def __init__(self, img_suffix=".jpg", seg_map_suffix=".png", reduce_zero_label=False,
                 **kwargs) -> None:
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)
