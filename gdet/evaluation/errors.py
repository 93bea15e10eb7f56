"""What each class's best detections are: correct, or which kind of false positive.

The analysis of Hoiem, Chodpathumwan and Dai ("Diagnosing Error in Object Detectors", ECCV 2012), on the VOC
devkit's matching: per class, the ``N`` highest-scoring detections, ``N`` being the class's (non-ignored)
ground-truth count, are split into

* ``correct``: a true positive under the VOC rules;
* ``localisation``: best IoU with an object of its class in ``[low_iou, iou_threshold)``;
* ``duplicate``: it reaches the threshold on an object of its class that a higher-scoring detection claimed;
* ``confusion``: IoU >= ``low_iou`` with an object of another class (and not one of the above);
* ``background``: IoU below ``low_iou`` with every object of its image.

Detections matched to an ignored (difficult) object are neither right nor wrong in VOC and are skipped, as the
devkit skips them. Where a class's false positives are mostly ``background``, the median side (square root of the
area) of those boxes tells whether they are small proposals the detector never learned to reject.
"""
from __future__ import annotations

import math
import os

import numpy as np

from gdet.evaluation.base import group_overlaps, pairwise_iou
from gdet.evaluation.voc import VOCEvaluator
from gdet.plotting import pyplot, save_figure

KINDS = ("correct", "localisation", "duplicate", "confusion", "background")


def error_breakdown(ev: VOCEvaluator, low_iou: float = 0.1) -> dict:
    """Split each class's top detections of a processed :class:`VOCEvaluator` into :data:`KINDS`.

    Returns:
        ``{"iou_threshold", "low_iou", "per_class": [{"class", "n", <kind>: count..., "background_side"}],
        "total": {"n", <kind>: count...}}``; ``background_side`` is the median side in pixels of the background
        false positives (NaN without any).
    """
    flat, order, tp, fp, npos = ev.match()
    # best IoU with an object of the same class (-inf without one); match() takes the same maximum for its flags
    same_best = group_overlaps(flat, ev.use_plus_one).iou[order].max(axis=1, initial=-np.inf)
    hit = ev.reaches(same_best)
    labels = flat.dt_labels[order]
    bounds = np.searchsorted(labels, np.arange(ev.num_classes + 1))
    by_image = np.argsort(flat.gt_img, kind="stable")
    gt_of_image = np.split(by_image, np.searchsorted(flat.gt_img[by_image], np.arange(1, flat.num_images)))
    rows = []
    for k, name in enumerate(ev.class_names):
        s, e = bounds[k], bounds[k + 1]
        counted = np.flatnonzero((tp[s:e] + fp[s:e]) > 0)[:int(npos[k])] + s  # skip detections of ignored objects
        row = {"class": name, "n": int(counted.size), **{kind: 0 for kind in KINDS}}
        sides = []
        for i in counted:
            if tp[i]:
                row["correct"] += 1
            elif hit[i]:
                row["duplicate"] += 1
            elif same_best[i] >= low_iou:
                row["localisation"] += 1
            else:
                d = order[i]
                g = gt_of_image[flat.dt_img[d]]
                g = g[flat.gt_labels[g] != k]
                other = pairwise_iou(flat.dt_boxes[d][None], flat.gt_boxes[g], ev.use_plus_one) if g.size else []
                if np.any(np.asarray(other) >= low_iou):
                    row["confusion"] += 1
                else:
                    row["background"] += 1
                    w, h = flat.dt_boxes[d, 2:] - flat.dt_boxes[d, :2]
                    sides.append(math.sqrt(max(w, 0.0) * max(h, 0.0)))
        row["background_side"] = float(np.median(sides)) if sides else math.nan
        rows.append(row)
    total = {"n": sum(r["n"] for r in rows), **{kind: sum(r[kind] for r in rows) for kind in KINDS}}
    return {"iou_threshold": ev.iou_threshold, "low_iou": float(low_iou), "per_class": rows, "total": total}


def format_errors(result: dict) -> str:
    """The breakdown as a table: per class, the share (%) of its top-N detections of each kind."""
    rows = result["per_class"] + [{"class": "all", **result["total"], "background_side": math.nan}]
    w = max(len(r["class"]) for r in rows)
    head = f"{'class':<{w}}  {'N':>5}  " + "  ".join(f"{k:>{len(k)}}" for k in KINDS) + "  bg side"
    lines = [f"top-N detections per class (N = its ground-truth objects), IoU {result['iou_threshold']:g}, "
             f"background below IoU {result['low_iou']:g}", head, "-" * len(head)]
    for i, r in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * len(head))
        share = "  ".join(f"{100 * r[k] / r['n']:{len(k)}.1f}" if r["n"] else f"{'-':>{len(k)}}" for k in KINDS)
        side = "" if math.isnan(r["background_side"]) else f"{r['background_side']:5.0f} px"
        lines.append(f"{r['class']:<{w}}  {r['n']:>5}  {share}  {side}".rstrip())
    return "\n".join(lines)


def plot_errors(result: dict, path: str | os.PathLike, title: str = "") -> None:
    """One PNG: a horizontal bar per class, split into the shares of :data:`KINDS`."""
    plt = pyplot()

    rows = result["per_class"][::-1]
    fig, ax = plt.subplots(figsize=(7.0, 0.9 + 0.32 * len(rows)))
    left = np.zeros(len(rows))
    colours = ("#4c9a2a", "#e6a532", "#c9cc3f", "#7b5ea7", "#b0413e")
    for kind, colour in zip(KINDS, colours):
        share = np.array([r[kind] / r["n"] if r["n"] else 0.0 for r in rows])
        ax.barh(np.arange(len(rows)), share, left=left, color=colour, label=kind, height=0.75)
        left += share
    ax.set_yticks(np.arange(len(rows)), [r["class"] for r in rows], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the class's top-N detections (N = its ground-truth objects)", fontsize=8)
    ax.legend(ncol=len(KINDS), fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    save_figure(fig, path, title, dpi=100, fontsize=9, y=0.995)
