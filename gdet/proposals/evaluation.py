"""Proposal quality: recall at IoU thresholds, average recall (0.5:0.95) and MABO, by object size and count.

Definitions (Hosang et al., 2015; Uijlings et al., 2013), over the ground-truth boxes that are not ignored:

- best overlap of a ground truth = the highest IoU of any of the first ``n`` proposals (the ``n`` best ranked);
- recall@t = fraction of ground truths whose best overlap is >= t;
- AR = mean of recall@t over t = 0.50, 0.55, ..., 0.95;
- ABO = mean best overlap of the ground truths of one class; MABO = mean of ABO over the classes present;
- sizes as COCO areas of the ground-truth box: small < 32^2, medium < 96^2, large >= 96^2 pixels.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from gdet.plotting import pyplot, save_figure

AR_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
DEFAULT_COUNTS: tuple[int | None, ...] = (100, 500, 1000, 2000, None)  # None = all
CURVE_COUNTS = (1, 2, 5, 10, 20, 50, 100, 200, 300, 500, 700, 1000, 1500, 2000, 3000, 5000)
SIZES = {"small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2), "large": (96.0 ** 2, math.inf)}


def count_label(n: int | None) -> str:
    return "all" if n is None else str(n)


def best_overlaps(gt: Tensor, proposals: Tensor, counts: Sequence[int | None]) -> Tensor:
    """Best IoU of each ground truth among the first ``n`` proposals, for each ``n`` in ``counts``.

    Args:
        gt (Tensor[G, 4]), proposals (Tensor[N, 4]): xyxy boxes; proposals ranked best first.
        counts: numbers of proposals kept (None: all).

    Returns:
        Tensor[len(counts), G]: float best overlaps (0 where no proposal is kept).
    """
    g, n = gt.shape[0], proposals.shape[0]
    out = torch.zeros((len(counts), g), dtype=torch.float32)
    if g == 0 or n == 0:
        return out
    iou = box_iou(gt.float(), proposals.float())  # G x N
    running = iou.cummax(dim=1).values  # best over the first j + 1 proposals
    for k, c in enumerate(counts):
        m = n if c is None else min(int(c), n)
        if m > 0:
            out[k] = running[:, m - 1]
    return out


class ProposalEvaluator:
    """Accumulates best overlaps image by image (``reset / process / evaluate``).

    Args:
        counts: numbers of proposals kept at which everything is reported (None: all).
        curve_counts: extra counts for the recall-vs-count curve.
    """

    def __init__(self, counts: Sequence[int | None] = DEFAULT_COUNTS, curve_counts: Sequence[int] = CURVE_COUNTS):
        self.counts = list(counts)
        self.curve_counts = list(curve_counts)
        self.reset()

    def reset(self) -> None:
        self._overlaps: list[Tensor] = []  # each [C, G_i] over self._all_counts
        self._areas: list[Tensor] = []
        self._labels: list[Tensor] = []
        self._num_props: list[int] = []

    @property
    def _all_counts(self) -> list[int | None]:
        return self.counts + self.curve_counts

    def process(self, gt_boxes: Tensor, gt_labels: Tensor, proposals: Tensor, ignore: Tensor | None = None) -> None:
        """Add one image: its ground truth (``ignore`` flags drop VOC difficult / COCO crowd objects) and its
        ranked proposals ``Tensor[N, 4]``."""
        gt_boxes = torch.as_tensor(gt_boxes, dtype=torch.float32).reshape(-1, 4)
        gt_labels = torch.as_tensor(gt_labels, dtype=torch.int64).reshape(-1)
        if ignore is not None and len(ignore):
            keep = ~torch.as_tensor(ignore, dtype=torch.bool)
            gt_boxes, gt_labels = gt_boxes[keep], gt_labels[keep]
        proposals = torch.as_tensor(proposals, dtype=torch.float32).reshape(-1, 4)
        self._overlaps.append(best_overlaps(gt_boxes, proposals, self._all_counts))
        wh = (gt_boxes[:, 2:] - gt_boxes[:, :2]).clamp(min=0)
        self._areas.append(wh[:, 0] * wh[:, 1])
        self._labels.append(gt_labels)
        self._num_props.append(int(proposals.shape[0]))

    def evaluate(self) -> dict:
        """Returns::

            {"images", "num_gt", "proposals_per_image",
             "counts": ["100", ..., "all"],
             "overall": {count: {"recall@0.5", "recall@0.7", "ar", "abo", "mabo", "proposals_per_image"}},
             "by_size": {"small"|"medium"|"large": {"num_gt", count: {...same...}}},
             "curve": {"counts": [...], "recall@0.5": [...], "recall@0.7": [...], "ar": [...]}}
        """
        c_all = len(self._all_counts)
        ov = torch.cat(self._overlaps, 1) if self._overlaps else torch.zeros((c_all, 0))
        areas = torch.cat(self._areas) if self._areas else torch.zeros(0)
        labels = torch.cat(self._labels) if self._labels else torch.zeros(0, dtype=torch.int64)
        nprops = np.array(self._num_props, dtype=np.float64)
        used = {count_label(c): float(np.minimum(nprops, c if c is not None else np.inf).mean()) if len(nprops)
                else 0.0 for c in self._all_counts}

        def summary(mask: Tensor) -> dict:
            res = {}
            for k, c in enumerate(self.counts):
                res[count_label(c)] = {**_metrics(ov[k][mask], labels[mask]), "proposals_per_image": used[count_label(c)]}
            return res

        everything = torch.ones(ov.shape[1], dtype=torch.bool)
        by_size = {}
        for name, (lo, hi) in SIZES.items():
            m = (areas >= lo) & (areas < hi)
            by_size[name] = {"num_gt": int(m.sum()), **summary(m)}
        curve_idx = range(len(self.counts), c_all)
        curve = {"counts": [used[count_label(self._all_counts[k])] for k in curve_idx],
                 "recall@0.5": [_metrics(ov[k], labels)["recall@0.5"] for k in curve_idx],
                 "recall@0.7": [_metrics(ov[k], labels)["recall@0.7"] for k in curve_idx],
                 "ar": [_metrics(ov[k], labels)["ar"] for k in curve_idx]}
        # Drop repeated points where every image has fewer proposals than the count.
        keep = [i for i in range(len(curve["counts"])) if i == 0 or curve["counts"][i] > curve["counts"][i - 1]]
        curve = {k: [v[i] for i in keep] for k, v in curve.items()}
        return {"images": len(self._num_props), "num_gt": int(ov.shape[1]),
                "proposals_per_image": float(nprops.mean()) if len(nprops) else 0.0,
                "counts": [count_label(c) for c in self.counts], "overall": summary(everything),
                "by_size": by_size, "curve": curve}


def _metrics(best: Tensor, labels: Tensor) -> dict:
    """recall@0.5, recall@0.7, AR, ABO and MABO of a vector of best overlaps (NaN when there is no object)."""
    if best.numel() == 0:
        nan = float("nan")
        return {"recall@0.5": nan, "recall@0.7": nan, "ar": nan, "abo": nan, "mabo": nan}
    recalls = {t: float((best >= t - 1e-9).float().mean()) for t in AR_THRESHOLDS}
    abo_per_class = [float(best[labels == c].mean()) for c in torch.unique(labels).tolist()]
    return {"recall@0.5": recalls[0.5], "recall@0.7": recalls[0.7], "ar": float(np.mean(list(recalls.values()))),
            "abo": float(best.mean()), "mabo": float(np.mean(abo_per_class))}


def evaluate_proposals(records, proposals, counts: Sequence[int | None] = DEFAULT_COUNTS) -> dict:
    """Evaluate a :class:`~gdet.proposals.files.ProposalSet` against ``records`` (ImageRecords).

    An image without proposals in the set counts as having none (its objects are missed).
    """
    ev = ProposalEvaluator(counts)
    missing = 0
    for r in records:
        if r.image_id in proposals:
            boxes = proposals[r.image_id][0]
        else:
            missing += 1
            boxes = torch.zeros((0, 4))
        ev.process(r.boxes, r.labels, boxes, r.ignore)
    res = ev.evaluate()
    res["images_without_proposals"] = missing
    return res


def plot_recall_curves(results: dict[str, dict], png_path, title: str | None = None) -> None:
    """Recall@0.5, recall@0.7 and AR against proposals per image (log scale), one line per method."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, key, label in zip(axes, ("recall@0.5", "recall@0.7", "ar"),
                              ("recall at IoU 0.5", "recall at IoU 0.7", "average recall (IoU 0.5:0.95)")):
        for name, res in results.items():
            c = res["curve"]
            ax.plot(c["counts"], c[key], marker="o", ms=3, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("proposals per image")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, png_path, title)


def format_table(results: dict[str, dict]) -> str:
    """A plain-text table: one row per (method, count) with recall@0.5, recall@0.7, AR and MABO."""
    lines = [f"{'method':<28} {'kept':>6} {'boxes/img':>9} {'R@0.5':>6} {'R@0.7':>6} {'AR':>6} {'MABO':>6}"
             f" {'R@0.5 S/M/L':>17}"]
    for name, res in results.items():
        for c in res["counts"]:
            o = res["overall"][c]
            sml = "/".join(_fmt(res["by_size"][s][c]["recall@0.5"]) for s in SIZES)
            lines.append(f"{name:<28} {c:>6} {o['proposals_per_image']:>9.1f} {o['recall@0.5']:>6.3f} "
                         f"{o['recall@0.7']:>6.3f} {o['ar']:>6.3f} {o['mabo']:>6.3f} {sml:>17}")
    return "\n".join(lines)


def _fmt(v: float) -> str:
    return "  - " if v != v else f"{v:.2f}"
