"""Offline fusion of detection results from several models or runs (``gdet fuse``, ``tools/fuse_dets.py``).

Two methods, both per image and per class, on detections already post-processed by each model:

* ``nms``: concatenate every file's detections and run per-class NMS (``gdet.nms``), keeping the best-scored box of
  each cluster. Simple and safe; it cannot raise a box's score, only pick one.
* ``wbf``: weighted boxes fusion (Solovyev et al., 2019). Boxes are visited by decreasing score and joined to the
  first cluster whose fused box overlaps them by more than ``iou_thr``; a cluster's box is the score-weighted mean
  of its members' coordinates and its score the mean member score times ``min(members, models) / models``, so a
  box found by only one of M models is down-weighted. Better localisation when the models agree.

Averaging class probabilities over models *before* NMS (``gdet detect --weights A --weights B``) remains the
paper's ensemble; these methods are for results that were produced separately.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import box_iou

from gdet.errors import GdetError
from gdet.nms import multiclass_nms

__all__ = ["fuse_detections", "weighted_boxes_fusion"]


def weighted_boxes_fusion(boxes: Tensor, scores: Tensor, num_models: int, iou_thr: float = 0.55,
                          ) -> tuple[Tensor, Tensor]:
    """Fuse the boxes of one class in one image.

    Args:
        boxes (Tensor[N, 4]), scores (Tensor[N]): every model's boxes (scores already multiplied by model weights).
        num_models: M, the number of models that contributed.
    Returns:
        fused boxes (Tensor[K, 4]) and scores (Tensor[K]), by decreasing score.
    """
    if boxes.shape[0] == 0:
        return boxes.reshape(0, 4), scores.reshape(0)
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, scores = boxes[order].double(), scores[order].double()
    members: list[list[int]] = []
    fused: list[Tensor] = []
    for i in range(boxes.shape[0]):
        if fused:
            ov = box_iou(boxes[i:i + 1], torch.stack(fused))[0]
            j = int(torch.argmax(ov))
            if ov[j] > iou_thr:
                members[j].append(i)
                w = scores[members[j]]
                fused[j] = (boxes[members[j]] * w[:, None]).sum(0) / w.sum()
                continue
        members.append([i])
        fused.append(boxes[i].clone())
    out_scores = torch.stack([scores[m].mean() * min(len(m), num_models) / num_models for m in members])
    out_boxes = torch.stack(fused)
    o = torch.argsort(out_scores, descending=True, stable=True)
    return out_boxes[o].float(), out_scores[o].float()


def check_score_weights(weights: Sequence[float], name: str = "score weights", given: str | None = None
                        ) -> list[float]:
    """``weights`` as floats if each is finite and >= 0 and not all are 0 (else NaN or infinite boxes and scores);
    otherwise a one-line :class:`GdetError` that starts with ``name`` and quotes ``given`` (what the user typed;
    default: the list)."""
    w = [float(x) for x in weights]
    shown = repr(given) if given is not None else str(w)
    bad = [x for x in w if not (math.isfinite(x) and x >= 0)]
    if bad:
        raise GdetError(f"{name}: every weight must be a finite number >= 0, got {bad[0]:g} in {shown}")
    if not any(w):
        raise GdetError(f"{name}: at least one weight must be above 0, got {shown}")
    return w


def fuse_detections(per_model: Sequence[Sequence[dict]], method: str = "nms", iou_thr: float | None = None,
                    weights: Sequence[float] | None = None, max_dets: int = 100) -> list[dict]:
    """Fuse M models' detections of the same images.

    Args:
        per_model: M lists (one per model) of per-image ``{"boxes", "scores", "labels"}``, same image order.
        method: ``nms`` or ``wbf`` (see the module docstring).
        iou_thr: NMS threshold (default 0.3) or WBF cluster threshold (default 0.55).
        weights: M score multipliers, finite and >= 0, not all 0 (default 1 each); a set weighted 0 is left out.
        max_dets: detections kept per image.
    Returns:
        per-image fused detections.
    """
    m = len(per_model)
    if m == 0:
        raise GdetError("fuse: no detection sets given")
    n = len(per_model[0])
    if any(len(p) != n for p in per_model):
        raise GdetError(f"fuse: the detection sets cover different numbers of images ({[len(p) for p in per_model]})")
    if method not in ("nms", "wbf"):
        raise GdetError(f"fuse: unknown method {method!r} (use nms or wbf)")
    w = [1.0] * m if weights is None else check_score_weights(weights, "fuse: score weights")
    if len(w) != m:
        raise GdetError(f"fuse: {len(w)} weights for {m} detection sets")
    used = [k for k in range(m) if w[k] > 0]  # a weight of 0 leaves the set out (its scores would all be 0)
    per_model, w, m = [per_model[k] for k in used], [w[k] for k in used], len(used)
    thr = iou_thr if iou_thr is not None else (0.3 if method == "nms" else 0.55)
    out = []
    for i in range(n):
        boxes = torch.cat([torch.as_tensor(p[i]["boxes"]).float().reshape(-1, 4) for p in per_model])
        scores = torch.cat([torch.as_tensor(p[i]["scores"]).float().reshape(-1) * wk for p, wk in zip(per_model, w)])
        labels = torch.cat([torch.as_tensor(p[i]["labels"]).long().reshape(-1) for p in per_model])
        if method == "nms":
            keep, s = multiclass_nms(boxes, scores, labels, thr)
            b, lab = boxes[keep], labels[keep]
        else:
            parts = [weighted_boxes_fusion(boxes[labels == c], scores[labels == c], m, thr) + (c,)
                     for c in torch.unique(labels).tolist()]
            b = torch.cat([p[0] for p in parts]) if parts else boxes[:0]
            s = torch.cat([p[1] for p in parts]) if parts else scores[:0]
            lab = torch.cat([torch.full((len(p[1]),), p[2], dtype=torch.long) for p in parts]) if parts else labels[:0]
            o = torch.argsort(s, descending=True, stable=True)
            b, s, lab = b[o], s[o], lab[o]
        out.append({"boxes": b[:max_dets], "scores": s[:max_dets], "labels": lab[:max_dets]})
    return out
