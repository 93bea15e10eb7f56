"""Detection mAP as the official tools compute it: PASCAL VOC (2007 / 2010+), COCO (pycocotools) and ILSVRC.

Every evaluator has ``reset()``, ``process(image_records, detections)`` and ``evaluate() -> dict``; result files
are read and written with :func:`read_results` / :func:`write_results`.
"""
from __future__ import annotations

from typing import Sequence

from gdet.errors import GdetError
from gdet.evaluation.base import DetectionEvaluator, voc_ap
from gdet.evaluation.coco import COCO_STAT_NAMES, COCOEvaluator
from gdet.evaluation.ilsvrc import ILSVRCEvaluator, ilsvrc_thresholds
from gdet.evaluation.report import format_table, jsonable, plot_pr_curves, save_result_json
from gdet.evaluation.results import read_results, write_results
from gdet.evaluation.voc import VOCEvaluator

METRICS = ("voc07", "voc", "coco", "ilsvrc")


def parse_metrics(text: str, option: str = "--metrics") -> list[str]:
    """``"voc,coco"`` as ``["voc", "coco"]``, every name checked (an empty text: no metric)."""
    out = [m.strip() for m in str(text).split(",") if m.strip()]
    bad = [m for m in out if m not in METRICS]
    if bad:
        raise GdetError(f"{option}: unknown metric {bad[0]!r} (known: {', '.join(METRICS)})")
    return list(dict.fromkeys(out))


def build_evaluator(metric: str, class_names: Sequence[str], **kwargs) -> DetectionEvaluator:
    """The evaluator for ``metric`` (``voc07``, ``voc``, ``coco`` or ``ilsvrc``); kwargs go to its constructor."""
    if metric in ("voc07", "voc"):
        return VOCEvaluator(class_names, metric=metric, **kwargs)
    if metric == "coco":
        return COCOEvaluator(class_names, **kwargs)
    if metric == "ilsvrc":
        return ILSVRCEvaluator(class_names, **kwargs)
    raise GdetError(f"unknown metric {metric!r} (known: {', '.join(METRICS)})")


__all__ = [
    "COCOEvaluator", "COCO_STAT_NAMES", "DetectionEvaluator", "ILSVRCEvaluator", "METRICS", "VOCEvaluator",
    "build_evaluator", "format_table", "ilsvrc_thresholds", "jsonable", "parse_metrics", "plot_pr_curves",
    "read_results", "save_result_json", "voc_ap", "write_results",
]
