"""PASCAL VOC detection AP: the 2007 11-point metric and the 2010+ all-point metric, as the devkit scores them."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from gdet.errors import GdetError
from gdet.evaluation.base import (
    ARANGE_RECALL_THRESHOLDS,
    VOC07_RECALL_THRESHOLDS,
    DetectionEvaluator,
    class_order,
    curves_summary,
    group_overlaps,
    mean_ap,
    per_class_ap,
)

VOC_METRICS = ("voc07", "voc")
COMPAT = ("devkit", "py-faster-rcnn")


class VOCEvaluator(DetectionEvaluator):
    """PASCAL VOC mean average precision (VOCevaldet.m / VOCap.m).

    Per class, detections from all images are sorted by decreasing score (equal scores keep their arrival
    order); each is assigned to the ground-truth box of its image and class with the highest IoU (``jmax``; ties
    go to the first box). If that IoU reaches the threshold: an ``ignore`` (difficult) box makes the detection
    neither TP nor FP; an unclaimed box makes it a TP and claims the box; a claimed one makes it a FP
    (duplicate). Otherwise it is a FP. Ignored boxes do not count as positives.

    Args:
        class_names: names of the labels ``0..C-1``.
        metric: ``"voc07"`` (11-point, VOC2007 devkit) or ``"voc"`` (all-point area, VOC2010+ devkit).
        use_plus_one: legacy widths ``x2 - x1 + 1`` for boxes stored as inclusive pixel indices (0- or 1-based).
            Keep it False for gdet records: gdet's VOC reader turns ``xmin..xmax`` into ``[xmin - 1, xmax)``, so
            ``x2 - x1`` already equals the devkit's ``xmax - xmin + 1`` and the IoU is the devkit's exactly.
        iou_threshold: overlap needed for a match (0.5).
        compat: ``"devkit"`` (the official MATLAB code: ``ovmax >= 0.5``, 11 thresholds of MATLAB's ``0:0.1:1``)
            or ``"py-faster-rcnn"`` (its Python port, also used by detectron2: ``ovmax > 0.5`` and
            ``np.arange(0, 1.1, 0.1)``). They differ only for IoU exactly 0.5 and recall exactly 0.6 or 0.7.
    """

    def __init__(self, class_names: Sequence[str], metric: str = "voc", use_plus_one: bool = False,
                 iou_threshold: float = 0.5, compat: str = "devkit"):
        if metric not in VOC_METRICS:
            raise GdetError(f"unknown VOC metric {metric!r} (known: {', '.join(VOC_METRICS)})")
        if compat not in COMPAT:
            raise GdetError(f"unknown compat {compat!r} (known: {', '.join(COMPAT)})")
        self.metric = metric
        self.use_plus_one = bool(use_plus_one)
        self.iou_threshold = float(iou_threshold)
        self.compat = compat
        super().__init__(class_names)

    def reaches(self, iou: np.ndarray) -> np.ndarray:
        """Whether each IoU counts as a match: ``>=`` the threshold (devkit) or ``>`` it (py-faster-rcnn)."""
        return iou > self.iou_threshold if self.compat == "py-faster-rcnn" else iou >= self.iou_threshold

    def match(self):
        """TP/FP flags of every detection.

        Returns:
            (flat, order, tp, fp, npos): ``order`` sorts detections by class then score; ``tp``/``fp`` are
            float arrays in that order; ``npos[k]`` counts class k's non-ignored ground truth.
        """
        flat = self.flat()
        npos = np.bincount(flat.gt_labels[~flat.gt_ignore], minlength=self.num_classes)
        order = class_order(flat)
        D = order.size
        tp = np.zeros(D)
        fp = np.zeros(D)
        if D == 0:
            return flat, order, tp, fp, npos
        g = group_overlaps(flat, self.use_plus_one)
        if g.iou.shape[1] == 0:
            fp[:] = 1.0
            return flat, order, tp, fp, npos
        iou = g.iou[order]
        jmax = iou.argmax(axis=1)
        ovmax = iou[np.arange(D), jmax]
        gt = g.gt_index[order][np.arange(D), jmax]
        hit = self.reaches(ovmax) & (gt >= 0)
        difficult = np.zeros(D, dtype=bool)
        difficult[hit] = flat.gt_ignore[gt[hit]]
        claim = np.flatnonzero(hit & ~difficult)  # in score order: the first claim of a box is its TP
        _, first = np.unique(gt[claim], return_index=True)
        tp[claim[first]] = 1.0
        fp[:] = 1.0
        fp[claim[first]] = 0.0
        fp[hit & difficult] = 0.0
        return flat, order, tp, fp, npos

    def evaluate(self) -> dict:
        """Per-class AP and the mean over classes with ground truth.

        Returns:
            ``{"metric", "mAP", "summary": {"mAP"}, "per_class": [{"class", "ap", "num_gt", "num_dets"}],
            "pr_curves": {class: precision envelope at recall 0..1 step 0.01}, "num_images"}``; AP is NaN for a
            class without (non-ignored) ground truth, which the mean skips.
        """
        flat, order, tp, fp, npos = self.match()
        thresholds = VOC07_RECALL_THRESHOLDS if self.compat == "devkit" else ARANGE_RECALL_THRESHOLDS
        rows, self.curves = per_class_ap(flat, order, tp, fp, npos, self.class_names,
                                         self.metric == "voc07", thresholds)
        m = mean_ap(rows)
        return {"metric": self.metric, "mAP": m, "summary": {"mAP": m}, "per_class": rows,
                "pr_curves": curves_summary(self.curves), "num_images": flat.num_images}
