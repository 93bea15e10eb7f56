"""COCO box AP through pycocotools' COCOeval, fed from arrays (no per-image conversion, no printing)."""
from __future__ import annotations

import contextlib
import io
import math
from typing import Sequence

import numpy as np

from gdet.errors import GdetError
from gdet.evaluation.base import RECALL_POINTS, DetectionEvaluator, FlatData
from gdet.evaluation.fast_coco import fast_cocoeval

# COCOeval.stats, in its order.
COCO_STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def coco_image_ids(image_ids: Sequence) -> np.ndarray:
    """Internal COCO image id (1..N) of each image, in the order pycocotools would sort the original ids.

    COCOeval walks images in ``sorted(imgIds)`` order, which breaks ties between equal scores in different
    images; numbering images by the rank of their original id (numeric if all are integers, else as strings)
    keeps that order, so the result equals pycocotools run on the original files.
    """
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in image_ids):
        keys = np.asarray(image_ids, dtype=np.int64)
    else:
        keys = np.asarray([str(i) for i in image_ids])
    order = np.argsort(keys, kind="stable")
    ids = np.empty(len(image_ids), dtype=np.int64)
    ids[order] = np.arange(1, len(image_ids) + 1)
    return ids


def _annotations(flat: FlatData, gt: bool, image_ids: np.ndarray) -> list[dict]:
    """COCO annotation dicts built column-wise (image ids from ``image_ids``, category ids ``label + 1``)."""
    boxes = flat.gt_boxes if gt else flat.dt_boxes
    x, y = boxes[:, 0], boxes[:, 1]
    w, h = boxes[:, 2] - x, boxes[:, 3] - y
    img = image_ids[flat.gt_img if gt else flat.dt_img]
    cat = (flat.gt_labels if gt else flat.dt_labels) + 1
    ids = range(1, img.size + 1)
    cols = [c.tolist() for c in (img, cat, x, y, w, h)]
    if gt:
        cols += [flat.gt_area.tolist(), flat.gt_ignore.astype(np.int64).tolist()]
        return [{"id": i, "image_id": im, "category_id": c, "bbox": [bx, by, bw, bh], "area": a, "iscrowd": cr}
                for i, im, c, bx, by, bw, bh, a, cr in zip(ids, *cols)]
    cols += [(w * h).tolist(), flat.dt_scores.tolist()]
    return [{"id": i, "image_id": im, "category_id": c, "bbox": [bx, by, bw, bh], "area": a, "score": s,
             "iscrowd": 0} for i, im, c, bx, by, bw, bh, a, s in zip(ids, *cols)]


def coco_objects(flat: FlatData, class_names: Sequence[str], image_ids: Sequence | None = None):
    """The ground-truth and result :class:`pycocotools.coco.COCO` objects of ``flat``, built directly.

    Equivalent to ``COCO(gt_json)`` and ``coco_gt.loadRes(results)`` (same ``area``, ``id`` and ``iscrowd`` for
    results as ``loadRes`` sets), without its per-detection Python loop and printing. ``image_ids`` are the
    original ids (their sort order is kept, see :func:`coco_image_ids`); default: processing order.
    """
    from pycocotools.coco import COCO

    ids = coco_image_ids(list(image_ids)) if image_ids is not None else np.arange(1, flat.num_images + 1)
    images = [{"id": i} for i in ids.tolist()]
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "categories": categories, "annotations": _annotations(flat, True, ids)}
        coco_gt.createIndex()
        coco_dt = COCO()
        coco_dt.dataset = {"images": list(images), "categories": categories,
                           "annotations": _annotations(flat, False, ids)}
        coco_dt.createIndex()
    return coco_gt, coco_dt


def run_cocoeval(coco_gt, coco_dt, max_dets: Sequence[int] = (1, 10, 100)):
    """``COCOeval(bbox)``: evaluate, accumulate, summarize, with its printing silenced; returns the COCOeval."""
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        E = COCOeval(coco_gt, coco_dt, iouType="bbox")
        E.params.maxDets = [int(m) for m in max_dets]
        E.evaluate()
        E.accumulate()
        E.summarize()
    return E


class COCOEvaluator(DetectionEvaluator):
    """COCO-style box AP (AP at IoU 0.50:0.95 and the other 11 COCOeval summary numbers), by pycocotools.

    ``ignore`` boxes go to COCOeval as crowd regions (``iscrowd=1``), its one way to ignore objects. A record's
    ``extra["area"]`` (COCO segment areas) is used for the small/medium/large split when present, else box area.

    Args:
        class_names: names of the labels ``0..C-1``.
        backend: ``"fast"`` (gdet's vectorised evaluate/accumulate, :mod:`gdet.evaluation.fast_coco`, the same
            numbers in seconds) or ``"pycocotools"`` (COCOeval's own evaluate/accumulate). Both end in
            pycocotools' ``summarize()``.
        max_dets: COCOeval's ``params.maxDets``: three increasing detection limits per image (AR1, AR10, AR100
            and the AP figures use the last).
    """

    metric = "coco"

    def __init__(self, class_names: Sequence[str], backend: str = "fast", max_dets: Sequence[int] = (1, 10, 100)):
        if backend not in ("fast", "pycocotools"):
            raise GdetError(f"unknown COCO backend {backend!r} (known: fast, pycocotools)")
        md = list(max_dets)
        if len(md) != 3 or any(isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1 for m in md) \
                or sorted(md) != md:
            raise GdetError(f"COCO max_dets must be three increasing positive integers, got {max_dets!r}")
        self.max_dets = tuple(int(m) for m in md)
        self.backend = backend
        super().__init__(class_names)
        self.cocoeval = None

    def evaluate(self) -> dict:
        """Run COCOeval.

        Returns:
            ``{"metric": "coco", "mAP": AP, "summary": {AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs,
            ARm, ARl}, "per_class": [{"class", "ap", "ap50", "num_gt", "num_dets"}], "pr_curves", "num_images"}``;
            -1 from COCOeval (nothing to measure) becomes NaN.
        """
        flat = self.flat()
        if self.backend == "fast":
            E = fast_cocoeval(flat, coco_image_ids(self._image_ids), self.num_classes, self.max_dets)
        else:
            coco_gt, coco_dt = coco_objects(flat, self.class_names, self._image_ids)
            E = run_cocoeval(coco_gt, coco_dt, self.max_dets)
        self.cocoeval = E
        summary = {n: (float(v) if v > -1 else math.nan) for n, v in zip(COCO_STAT_NAMES, E.stats)}
        prec = E.eval["precision"]  # [T IoUs, R recalls, K classes, A areas, M maxDets]
        num_gt = np.bincount(flat.gt_labels[~flat.gt_ignore], minlength=self.num_classes)
        num_dt = np.bincount(flat.dt_labels, minlength=self.num_classes)
        rows, self.curves, pr = [], {}, {}
        for k, name in enumerate(self.class_names):
            p = prec[:, :, k, 0, -1]
            ap = float(p[p > -1].mean()) if (p > -1).any() else math.nan
            p50 = p[0]
            ap50 = float(p50[p50 > -1].mean()) if (p50 > -1).any() else math.nan
            rows.append({"class": name, "ap": ap, "ap50": ap50, "num_gt": int(num_gt[k]), "num_dets": int(num_dt[k])})
            curve = np.where(p50 > -1, p50, 0.0)
            self.curves[name] = (np.asarray(E.params.recThrs, dtype=np.float64), curve)
            pr[name] = [round(float(v), 6) for v in np.interp(RECALL_POINTS, E.params.recThrs, curve)]
        return {"metric": self.metric, "mAP": summary["AP"], "summary": summary, "per_class": rows,
                "pr_curves": pr, "num_images": flat.num_images}
