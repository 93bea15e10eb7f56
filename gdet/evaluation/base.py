"""The evaluator interface (reset / process / evaluate), the per-image store and the shared AP arithmetic."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from gdet.errors import GdetError
from gdet.structures import ImageRecord

# MATLAB's ``0:0.1:1`` (the VOC2007 devkit's loop ``for t=0:0.1:1``), built as MATLAB's colon operator does:
# the first half as ``a + k*d``, the second half as ``b - k*d`` and the middle as ``(a+b)/2``. It differs from
# numpy's ``arange(0, 1.1, 0.1)`` (py-faster-rcnn, detectron2) at 0.6 and 0.7, which arange overshoots by one ulp,
# so a recall of exactly 0.6 or 0.7 (e.g. 3/5, 7/10) counts in the devkit but not in those ports.
_D = 0.1
VOC07_RECALL_THRESHOLDS = np.array([k * _D for k in range(5)] + [0.5] + [1.0 - k * _D for k in range(4, -1, -1)])
ARANGE_RECALL_THRESHOLDS = np.arange(0.0, 1.1, 0.1)


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07_metric: bool = False,
           thresholds: np.ndarray = VOC07_RECALL_THRESHOLDS) -> float:
    """Average precision from a precision/recall curve, as the PASCAL VOC devkit computes it.

    Args:
        rec (ndarray[D]): recall after each detection, in decreasing score order.
        prec (ndarray[D]): precision after each detection.
        use_07_metric: VOC2007's 11-point metric (mean over ``thresholds`` of the best precision at recall >= t)
            instead of VOC2010+'s area under the monotone precision envelope (all points).
        thresholds: the 11 recall thresholds of the 2007 metric.

    Returns:
        AP in [0, 1].
    """
    rec = np.asarray(rec, dtype=np.float64)
    prec = np.asarray(prec, dtype=np.float64)
    if use_07_metric:
        ap = 0.0
        for t in thresholds:
            sel = prec[rec >= t]
            ap += (sel.max() if sel.size else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope, right to left
    i = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1  # where recall changes
    return float(np.sum((mrec[i] - mrec[i - 1]) * mpre[i]))


def pr_curve(tp: np.ndarray, fp: np.ndarray, npos: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative recall and precision from per-detection TP/FP flags (in decreasing score order).

    Detections that are neither (matched to an ignored object) keep the previous point, as in the devkit;
    a leading 0/0 precision is 0 (the devkit's NaN, which its ``max`` skips, gives the same AP).
    """
    tp = np.cumsum(tp, dtype=np.float64)
    fp = np.cumsum(fp, dtype=np.float64)
    rec = tp / npos if npos > 0 else np.full_like(tp, np.nan)
    denom = tp + fp
    prec = np.divide(tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return rec, prec


def envelope_at(rec: np.ndarray, prec: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Interpolated precision (the best precision at recall >= r) at each recall in ``points``; 0 beyond the curve."""
    if rec.size == 0 or not np.isfinite(rec).all():
        return np.zeros_like(points)
    env = np.maximum.accumulate(prec[::-1])[::-1]
    idx = np.searchsorted(rec, points, side="left")
    out = np.zeros_like(points)
    ok = idx < rec.size
    out[ok] = env[idx[ok]]
    return out


@dataclass
class FlatData:
    """Every image's ground truth and detections, concatenated (one row per box).

    ``*_img`` index the images in the order they were processed; ``dt_seq`` is each detection's arrival order
    (image order, then its position within the image), the tie-break for equal scores.
    """

    num_images: int
    num_classes: int
    gt_img: np.ndarray
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_ignore: np.ndarray
    gt_area: np.ndarray
    dt_img: np.ndarray
    dt_boxes: np.ndarray
    dt_scores: np.ndarray
    dt_labels: np.ndarray

    @property
    def dt_seq(self) -> np.ndarray:
        return np.arange(self.dt_scores.size)


def _to_numpy(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu")
        return x.numpy().astype(dtype, copy=False) if x.dtype != torch.bfloat16 else x.float().numpy().astype(dtype)
    return np.asarray(x, dtype=dtype)


class DetectionEvaluator:
    """Base of every evaluator: ``reset()``, ``process(image_records, detections)``, ``evaluate() -> dict``.

    ``process`` may be called once per batch; each image must be processed exactly once. Detections are kept in
    arrival order, which breaks ties between equal scores (see docs/evaluation.md).

    Args:
        class_names: names of the contiguous labels ``0..C-1``.
    """

    metric = ""

    def __init__(self, class_names: Sequence[str]):
        self.class_names = [str(c) for c in class_names]
        if not self.class_names:
            raise GdetError("evaluator: the class list is empty")
        self.curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.reset()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def reset(self) -> None:
        """Forget every processed image."""
        self._seen: dict[str, int] = {}
        self._image_ids: list = []
        self._gt: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._dt: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.curves = {}

    def process(self, image_records: Sequence[ImageRecord], detections: Sequence[dict]) -> None:
        """Add a batch of images.

        Args:
            image_records: the images' ground truth (boxes xyxy, labels 0..C-1, ignore flags).
            detections: per image ``{"boxes": Tensor[N, 4] xyxy, "scores": Tensor[N], "labels": Tensor[N]}``
                (any device; numpy arrays also accepted).
        """
        if len(image_records) != len(detections):
            raise GdetError(f"evaluator: {len(image_records)} images but {len(detections)} detection sets")
        C = self.num_classes
        for rec, det in zip(image_records, detections):
            key = str(rec.image_id)
            if key in self._seen:
                raise GdetError(f"evaluator: image {rec.image_id!r} processed twice")
            self._seen[key] = len(self._image_ids)
            self._image_ids.append(rec.image_id)
            labels = _to_numpy(rec.labels, np.int64).reshape(-1)
            if labels.size and (labels.min() < 0 or labels.max() >= C):
                raise GdetError(f"image {rec.image_id!r}: ground-truth label {int(labels.max())} out of range "
                                f"for {C} classes")
            boxes = _to_numpy(rec.boxes, np.float64).reshape(-1, 4)
            ignore = _to_numpy(rec.ignore, bool).reshape(-1)
            area = rec.extra.get("area") if isinstance(rec.extra, dict) else None
            if area is not None and len(area) == labels.size:
                area = np.asarray(area, dtype=np.float64)
            else:
                area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            self._gt.append((boxes, labels, ignore, area))
            try:
                d_boxes = _to_numpy(det["boxes"], np.float64).reshape(-1, 4)
                d_scores = _to_numpy(det["scores"], np.float64).reshape(-1)
                d_labels = _to_numpy(det["labels"], np.int64).reshape(-1)
            except KeyError as e:
                raise GdetError(f"image {rec.image_id!r}: detections lack {e.args[0]!r} "
                                "(expected keys boxes, scores, labels)") from None
            if not (d_boxes.shape[0] == d_scores.size == d_labels.size):
                raise GdetError(f"image {rec.image_id!r}: {d_boxes.shape[0]} boxes, {d_scores.size} scores and "
                                f"{d_labels.size} labels in its detections")
            if d_labels.size and (d_labels.min() < 0 or d_labels.max() >= C):
                bad = int(d_labels[(d_labels < 0) | (d_labels >= C)][0])
                raise GdetError(f"image {rec.image_id!r}: detection label {bad} out of range for {C} classes")
            if not (np.isfinite(d_boxes).all() and np.isfinite(d_scores).all()):
                raise GdetError(f"image {rec.image_id!r}: detections contain NaN or infinite values")
            self._dt.append((d_boxes, d_scores, d_labels))

    def __len__(self) -> int:
        return len(self._image_ids)

    def flat(self) -> FlatData:
        """The processed images as concatenated arrays."""
        n = len(self._gt)
        gt_counts = np.array([g[1].size for g in self._gt], dtype=np.int64)
        dt_counts = np.array([d[1].size for d in self._dt], dtype=np.int64)

        def cat(parts, shape, dtype):
            return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(shape, dtype)

        return FlatData(
            num_images=n, num_classes=self.num_classes,
            gt_img=np.repeat(np.arange(n), gt_counts),
            gt_boxes=cat([g[0] for g in self._gt], (0, 4), np.float64).reshape(-1, 4),
            gt_labels=cat([g[1] for g in self._gt], (0,), np.int64),
            gt_ignore=cat([g[2] for g in self._gt], (0,), bool),
            gt_area=cat([g[3] for g in self._gt], (0,), np.float64),
            dt_img=np.repeat(np.arange(n), dt_counts),
            dt_boxes=cat([d[0] for d in self._dt], (0, 4), np.float64).reshape(-1, 4),
            dt_scores=cat([d[1] for d in self._dt], (0,), np.float64),
            dt_labels=cat([d[2] for d in self._dt], (0,), np.int64),
        )

    def evaluate(self) -> dict:
        raise NotImplementedError


def pairwise_iou(a: np.ndarray, b: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """IoU of aligned box arrays ``a[..., 4]`` and ``b[..., 4]`` (broadcast), computed as the VOC devkit does.

    With ``plus_one`` widths are ``x2 - x1 + 1`` (boxes in inclusive integer pixel indices). Pairs that do not
    overlap get 0.
    """
    o = 1.0 if plus_one else 0.0
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + o
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + o
    inter = iw * ih
    ua = (a[..., 2] - a[..., 0] + o) * (a[..., 3] - a[..., 1] + o) + \
         (b[..., 2] - b[..., 0] + o) * (b[..., 3] - b[..., 1] + o) - inter
    overlap = (iw > 0) & (ih > 0)
    return np.where(overlap, inter / np.where(overlap, ua, 1.0), 0.0)


@dataclass
class Groups:
    """Detections paired with the ground truth of the same image and class, padded to ``G`` per group.

    ``gt_index[i, j]`` is the j-th ground-truth box (by input order) sharing detection i's image and class, or -1;
    ``iou[i, j]`` its overlap (-inf where there is none).
    """

    gt_index: np.ndarray  # [D, G] int64
    iou: np.ndarray  # [D, G] float64
    dt_group: np.ndarray  # [D] group id (image * C + class)


def group_overlaps(flat: FlatData, plus_one: bool = False, chunk: int = 1 << 22) -> Groups:
    """IoU of every detection with every ground-truth box of its image and class, vectorised."""
    C = flat.num_classes
    gt_key = flat.gt_img * C + flat.gt_labels
    dt_key = flat.dt_img * C + flat.dt_labels
    D = dt_key.size
    order = np.argsort(gt_key, kind="stable")
    keys, starts, counts = np.unique(gt_key[order], return_index=True, return_counts=True)
    G = int(counts.max()) if counts.size else 0
    if D == 0 or G == 0:
        return Groups(np.full((D, 0), -1, np.int64), np.full((D, 0), -np.inf), dt_key)
    pad = np.full((keys.size + 1, G), -1, dtype=np.int64)  # last row: groups without ground truth
    rank = np.arange(order.size) - np.repeat(starts, counts)
    pad[np.repeat(np.arange(keys.size), counts), rank] = order
    pos = np.searchsorted(keys, dt_key)
    pos_c = np.minimum(pos, keys.size - 1)
    found = keys[pos_c] == dt_key
    gt_index = pad[np.where(found, pos_c, keys.size)]
    iou = np.full((D, G), -np.inf)
    step = max(1, chunk // G)
    for s in range(0, D, step):
        gi = gt_index[s:s + step]
        valid = gi >= 0
        ov = pairwise_iou(flat.dt_boxes[s:s + step, None, :], flat.gt_boxes[np.maximum(gi, 0)], plus_one)
        iou[s:s + step] = np.where(valid, ov, -np.inf)
    return Groups(gt_index, iou, dt_key)


def class_order(flat: FlatData) -> np.ndarray:
    """Detections sorted by class, then decreasing score, ties kept in arrival order (a stable sort)."""
    return np.lexsort((flat.dt_seq, -flat.dt_scores, flat.dt_labels))


def per_class_ap(flat: FlatData, order: np.ndarray, tp: np.ndarray, fp: np.ndarray, npos: np.ndarray,
                 class_names: list[str], use_07_metric: bool, thresholds: np.ndarray = VOC07_RECALL_THRESHOLDS,
                 ) -> tuple[list[dict], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """AP of each class from TP/FP flags given in ``order`` (class, then score); returns rows and PR curves."""
    labels_sorted = flat.dt_labels[order]
    bounds = np.searchsorted(labels_sorted, np.arange(len(class_names) + 1))
    rows, curves = [], {}
    for k, name in enumerate(class_names):
        s, e = bounds[k], bounds[k + 1]
        n = int(npos[k])
        rec, prec = pr_curve(tp[s:e], fp[s:e], n)
        ap = voc_ap(rec, prec, use_07_metric, thresholds) if n > 0 else math.nan
        rows.append({"class": name, "ap": ap, "num_gt": n, "num_dets": int(e - s)})
        curves[name] = (rec, prec)
    return rows, curves


def mean_ap(rows: list[dict]) -> float:
    """Mean AP over the classes that have at least one (non-ignored) ground-truth object."""
    aps = [r["ap"] for r in rows if not math.isnan(r["ap"])]
    return float(np.mean(aps)) if aps else math.nan


RECALL_POINTS = np.linspace(0.0, 1.0, 101)


def curves_summary(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, list[float]]:
    """Interpolated precision at recall 0, 0.01, ..., 1 per class (small enough for the JSON)."""
    return {name: [round(float(v), 6) for v in envelope_at(rec, prec, RECALL_POINTS)]
            for name, (rec, prec) in curves.items()}
