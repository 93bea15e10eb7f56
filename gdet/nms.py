"""Non-maximum suppression on ``torchvision.ops``: per-class NMS, soft-NMS, and detection post-processing."""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou, remove_small_boxes

__all__ = ["batched_soft_nms", "multiclass_nms", "postprocess", "soft_nms"]


def soft_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.3, sigma: float = 0.5,
             method: str = "linear", score_threshold: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Soft-NMS (Bodla et al., 2017) for one class: instead of removing overlapping boxes, decay their scores.

    After the current best box ``M`` is kept, every remaining box ``b`` gets its score multiplied by
    ``1 - IoU(M, b)`` when the IoU exceeds ``iou_threshold`` (``linear``) or by ``exp(-IoU^2 / sigma)``
    (``gaussian``, where ``iou_threshold`` is unused). Boxes whose score falls below ``score_threshold`` are dropped.

    Args:
        boxes (Tensor[N, 4]): (x1, y1, x2, y2).
        scores (Tensor[N]): scores.
    Returns:
        keep (Tensor[K] int64): indices into ``boxes``, by decreasing new score.
        new_scores (Tensor[K]): the decayed scores of the kept boxes.
    """
    if method not in ("linear", "gaussian"):
        raise ValueError(f"unknown soft-NMS method {method!r} (use linear or gaussian)")
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device), scores.new_zeros(0)
    # N x N, computed once; two zero-area boxes have IoU 0/0: no overlap, as torchvision's nms treats them
    iou = box_iou(boxes.float(), boxes.float()).nan_to_num(nan=0.0)
    s = scores.float().clone()
    alive = torch.ones(n, dtype=torch.bool, device=boxes.device)
    keep, kept_scores = [], []
    neg_inf = torch.tensor(float("-inf"), device=s.device)
    for _ in range(n):
        i = int(torch.where(alive, s, neg_inf).argmax())
        if not alive[i] or s[i] < score_threshold:
            break
        keep.append(i)
        kept_scores.append(s[i].clone())
        alive[i] = False
        ov = iou[i]
        if method == "linear":
            decay = torch.where(ov > iou_threshold, 1.0 - ov, torch.ones_like(ov))
        else:
            decay = torch.exp(-(ov * ov) / sigma)
        s = torch.where(alive, s * decay, s)
        alive &= s >= score_threshold
    if not keep:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device), scores.new_zeros(0)
    return (torch.tensor(keep, dtype=torch.int64, device=boxes.device),
            torch.stack(kept_scores).to(scores.dtype))


def batched_soft_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float = 0.3,
                     sigma: float = 0.5, method: str = "linear",
                     score_threshold: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Soft-NMS within each label independently. Returns (keep, new_scores), sorted by decreasing new score."""
    keeps, new = [], []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        k, s = soft_nms(boxes[idx], scores[idx], iou_threshold, sigma, method, score_threshold)
        keeps.append(idx[k])
        new.append(s)
    if not keeps:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device), scores.new_zeros(0)
    keep, new_scores = torch.cat(keeps), torch.cat(new)
    order = torch.argsort(new_scores, descending=True, stable=True)
    return keep[order], new_scores[order]


def multiclass_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_threshold: float = 0.3,
                   soft: str | None = None, sigma: float = 0.5) -> tuple[Tensor, Tensor]:
    """Per-class NMS: boxes of different labels never suppress each other.

    Args:
        boxes (Tensor[N, 4]), scores (Tensor[N]), labels (Tensor[N] int64).
        soft: ``None`` for hard NMS (``torchvision.ops.batched_nms``), ``"linear"`` or ``"gaussian"`` for soft-NMS.
    Returns:
        keep (Tensor[K]) indices by decreasing score, and the (possibly decayed) scores (Tensor[K]).
    """
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device), scores.new_zeros(0)
    if soft:
        return batched_soft_nms(boxes, scores, labels, iou_threshold, sigma, soft)
    keep = batched_nms(boxes.float(), scores.float(), labels, iou_threshold)
    return keep, scores[keep]


def postprocess(boxes: Tensor, probs: Tensor, score_thr: float = 0.05, nms_thr: float = 0.3,
                max_dets: int = 100, min_size: float = 1e-2, soft: str | None = None,
                background: bool = True) -> dict[str, Tensor]:
    """torchvision's four steps: score threshold -> ``remove_small_boxes`` -> per-class NMS -> top-k.

    Args:
        boxes (Tensor[N, 4]) shared by all classes, or (Tensor[N, C, 4]) class-specific (after bbox regression).
        probs (Tensor[N, C+1]) softmax probabilities with background in column 0 (``background=True``), or
            (Tensor[N, C]) without one.
        score_thr: minimum class probability kept.
        nms_thr: IoU above which a lower-scored box of the same class is suppressed (R-CNN used 0.3).
        max_dets: detections kept per image.
        min_size: boxes with a side shorter than this (pixels) are dropped.
        soft: ``None``, ``"linear"`` or ``"gaussian"`` (soft-NMS instead of hard NMS).
    Returns:
        ``{"boxes": Tensor[K, 4], "scores": Tensor[K], "labels": Tensor[K] int64}``, labels 0..C-1
        (background excluded), by decreasing score.
    """
    cls_probs = probs[:, 1:] if background else probs
    n, c = cls_probs.shape
    if boxes.dim() == 2:
        boxes = boxes[:, None, :].expand(n, c, 4)
    labels = torch.arange(c, device=probs.device).view(1, c).expand(n, c)
    boxes, scores, labels = boxes.reshape(-1, 4), cls_probs.reshape(-1), labels.reshape(-1)
    # 1. score threshold
    idx = torch.nonzero(scores > score_thr).flatten()
    boxes, scores, labels = boxes[idx], scores[idx], labels[idx]
    # 2. remove small boxes
    idx = remove_small_boxes(boxes, min_size)
    boxes, scores, labels = boxes[idx], scores[idx], labels[idx]
    # 3. per-class NMS
    keep, scores = multiclass_nms(boxes, scores, labels, nms_thr, soft=soft)
    boxes, labels = boxes[keep], labels[keep]
    # 4. top-k (NMS output is already sorted by decreasing score)
    return {"boxes": boxes[:max_dets].float(), "scores": scores[:max_dets].float(), "labels": labels[:max_dets]}
