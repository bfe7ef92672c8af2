"""mmseg's IoUMetric, also returning the per-class IoU it already computes."""
from collections import OrderedDict

import numpy as np
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS


@METRICS.register_module()
class PerClassIoUMetric(IoUMetric):
    """Same numbers as :class:`mmseg.evaluation.IoUMetric` plus ``IoU.<class>`` (percent).

    A class that appears neither in the labels nor in the predictions has no IoU; it is
    reported as NaN and left out of mIoU, as mmseg does.
    """

    def compute_metrics(self, results: list) -> dict:
        metrics = super().compute_metrics(results)
        if self.format_only:
            return metrics
        area = [sum(part) for part in zip(*results)]
        ret = self.total_area_to_metrics(*area, ["mIoU"], self.nan_to_num, self.beta)
        per_class = OrderedDict()
        for name, iou in zip(self.dataset_meta["classes"], np.asarray(ret["IoU"])):
            per_class[f"IoU.{name}"] = float(np.round(iou * 100, 2))
        metrics.update(per_class)
        return metrics
