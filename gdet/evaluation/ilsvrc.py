"""ILSVRC DET AP: size-dependent IoU thresholds and the devkit's greedy matching (eval_detection.m)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from gdet.evaluation.base import DetectionEvaluator, class_order, curves_summary, group_overlaps, mean_ap, per_class_ap

PIXEL_TOLERANCE = 10.0
DEFAULT_IOU = 0.5


def ilsvrc_thresholds(boxes: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """IoU needed to detect each box of size w x h: ``min(0.5, w*h / ((w + 10) * (h + 10)))``.

    Args:
        boxes (ndarray[N, 4]): xyxy ground-truth boxes.
        plus_one: widths ``x2 - x1 + 1`` (inclusive pixel indices, as the devkit reads its XML).
    """
    o = 1.0 if plus_one else 0.0
    w = boxes[:, 2] - boxes[:, 0] + o
    h = boxes[:, 3] - boxes[:, 1] + o
    return np.minimum(DEFAULT_IOU, (w * h) / ((w + PIXEL_TOLERANCE) * (h + PIXEL_TOLERANCE)))


class ILSVRCEvaluator(DetectionEvaluator):
    """ImageNet (ILSVRC) detection mean AP.

    Within each image, detections are taken in decreasing score order (equal scores in arrival order); each
    claims, among the still unclaimed ground-truth boxes of its class, the one with the highest IoU among those
    whose IoU reaches the box's own threshold (ties: the first box); it is a TP if it claims one, else a FP.
    Per class, TP/FP over all images are sorted by score and AP is the VOC2010+ all-point area (VOCap.m), as in
    the devkit. ILSVRC has no ``difficult`` flag; a record's ``ignore`` boxes are treated as the devkit treats
    its ignored objects: they do not count as positives and a detection that claims one is neither TP nor FP.

    Args:
        class_names: names of the labels ``0..C-1``.
        use_plus_one: legacy ``+1`` widths for inclusive pixel indices (False for gdet records).
    """

    metric = "ilsvrc"

    def __init__(self, class_names: Sequence[str], use_plus_one: bool = False):
        self.use_plus_one = bool(use_plus_one)
        super().__init__(class_names)

    def match(self):
        """TP/FP flags of every detection (see :meth:`VOCEvaluator.match`)."""
        flat = self.flat()
        npos = np.bincount(flat.gt_labels[~flat.gt_ignore], minlength=self.num_classes)
        order = class_order(flat)
        D = order.size
        tp_in = np.zeros(D)
        fp_in = np.ones(D)
        g = group_overlaps(flat, self.use_plus_one)
        G = g.iou.shape[1]
        if D and G:
            thr = ilsvrc_thresholds(flat.gt_boxes, self.use_plus_one)
            ok = (g.gt_index >= 0) & (g.iou > 0)
            ok &= g.iou >= thr[np.maximum(g.gt_index, 0)]
            # rank of each detection within its (image, class) group, by decreasing score
            by_group = np.lexsort((flat.dt_seq, -flat.dt_scores, g.dt_group))
            keys = g.dt_group[by_group]
            starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
            counts = np.diff(np.r_[starts, keys.size])
            group_of = np.repeat(np.arange(starts.size), counts)
            rank = np.arange(keys.size) - np.repeat(starts, counts)
            claimed = np.zeros((starts.size, G), dtype=bool)
            # one greedy step per rank, vectorised over all groups
            for r in range(int(counts.max())):
                sel = by_group[rank == r]
                grp = group_of[rank == r]
                cand = ok[sel] & ~claimed[grp]
                score = np.where(cand, g.iou[sel], -np.inf)
                j = score.argmax(axis=1)
                got = cand[np.arange(sel.size), j]
                claimed[grp[got], j[got]] = True
                gt = g.gt_index[sel[got], j[got]]
                ign = flat.gt_ignore[gt]
                tp_in[sel[got]] = (~ign).astype(float)
                fp_in[sel[got]] = 0.0
        return flat, order, tp_in[order], fp_in[order], npos

    def evaluate(self) -> dict:
        """Per-class AP and their mean (same keys as :meth:`VOCEvaluator.evaluate`)."""
        flat, order, tp, fp, npos = self.match()
        rows, self.curves = per_class_ap(flat, order, tp, fp, npos, self.class_names, use_07_metric=False)
        m = mean_ap(rows)
        return {"metric": self.metric, "mAP": m, "summary": {"mAP": m}, "per_class": rows,
                "pr_curves": curves_summary(self.curves), "num_images": flat.num_images}
