"""Region labelling by IoU with the ground truth, and R-CNN's bounding-box regression targets.

Label convention for regions: ``0`` is background, ``1..C`` is class ``label + 1`` of the dataset's class list,
and ``-1`` means "ignored" (never sampled).

Rules (R-CNN fine-tuning, Girshick et al. 2014, section 2.3):

* A proposal whose best IoU with a (non-ignored) ground-truth box is ``>= fg_iou`` (0.5) takes that box's class.
* Otherwise it is background, unless it overlaps an *ignored* ground-truth box (VOC ``difficult`` / COCO
  ``iscrowd``) by ``>= fg_iou``: such a region is ignored, so the network is never taught that a hard object is
  background. Ignored ground-truth boxes are also never added as positives.
* Every non-ignored ground-truth box joins the positives as a region of its own class (IoU 1 with itself).
* Background regions with IoU below ``bg_iou_lo`` can be dropped (R-CNN: 0, i.e. every region counts).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["RegionLabels", "label_regions", "encode_boxes", "decode_boxes", "BBOX_STD"]

# Targets are divided by these so that the four coordinates have similar scales (Fast R-CNN's normalisation).
BBOX_STD = (0.1, 0.1, 0.2, 0.2)


@dataclass
class RegionLabels:
    """Labelled regions of one image.

    Attributes:
        boxes (Tensor[R, 4]): ground-truth boxes first, then proposals (x1, y1, x2, y2).
        labels (Tensor[R] int64): 0 background, 1..C object class, -1 ignored.
        iou (Tensor[R]): best IoU with a non-ignored ground-truth box (0 when the image has none).
        gt_index (Tensor[R] int64): index of that ground-truth box (-1 when none).
    """

    boxes: Tensor
    labels: Tensor
    iou: Tensor
    gt_index: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def label_regions(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_ignore: Tensor | None = None,
                  fg_iou: float = 0.5, bg_iou_lo: float = 0.0, add_gt: bool = True) -> RegionLabels:
    """Label proposals of one image by IoU with its ground truth.

    Args:
        proposals (Tensor[P, 4]): (x1, y1, x2, y2).
        gt_boxes (Tensor[G, 4]), gt_labels (Tensor[G] int64 in 0..C-1), gt_ignore (Tensor[G] bool).
        fg_iou: IoU from which a region is foreground.
        bg_iou_lo: regions with a best IoU below this are dropped instead of being background.
        add_gt: add the non-ignored ground-truth boxes as foreground regions.
    Returns:
        :class:`RegionLabels` (ground-truth regions first).
    """
    proposals = proposals.float().reshape(-1, 4)
    gt_boxes = gt_boxes.float().reshape(-1, 4)
    gt_labels = gt_labels.long().reshape(-1)
    if gt_ignore is None:
        gt_ignore = torch.zeros(gt_boxes.shape[0], dtype=torch.bool)
    gt_ignore = gt_ignore.bool().reshape(-1)
    keep_gt = ~gt_ignore
    boxes = torch.cat([gt_boxes[keep_gt], proposals]) if add_gt else proposals
    n = boxes.shape[0]
    labels = torch.zeros(n, dtype=torch.int64)
    iou = torch.zeros(n)
    gt_index = torch.full((n,), -1, dtype=torch.int64)
    if keep_gt.any():
        ov = box_iou(boxes, gt_boxes)  # R x G
        ov_obj = ov.masked_fill(gt_ignore[None], -1.0)
        iou, gt_index = ov_obj.max(1)
        iou = iou.clamp(min=0)
        fg = iou >= fg_iou
        labels[fg] = gt_labels[gt_index[fg]] + 1
        gt_index[iou <= 0] = -1
    elif n and gt_boxes.shape[0]:
        ov = box_iou(boxes, gt_boxes)
    else:
        ov = torch.zeros((n, gt_boxes.shape[0]))
    if gt_ignore.any():
        hits_ignored = (ov[:, gt_ignore] >= fg_iou).any(1) if n else torch.zeros(0, dtype=torch.bool)
        labels[(labels == 0) & hits_ignored] = -1
    if bg_iou_lo > 0:
        drop = (labels == 0) & (iou < bg_iou_lo)
        labels[drop] = -1
    return RegionLabels(boxes, labels, iou, gt_index)


def encode_boxes(proposals: Tensor, gt: Tensor, std: tuple[float, ...] = BBOX_STD) -> Tensor:
    """R-CNN's regression targets (appendix C): ``t_x = (g_x - p_x) / p_w``, ``t_y = (g_y - p_y) / p_h``,
    ``t_w = log(g_w / p_w)``, ``t_h = log(g_h / p_h)`` with centres and sizes, divided by ``std``.

    Args:
        proposals (Tensor[N, 4]), gt (Tensor[N, 4]): matched pairs, (x1, y1, x2, y2).
    Returns:
        Tensor[N, 4] targets.
    """
    pw = (proposals[:, 2] - proposals[:, 0]).clamp(min=1e-3)
    ph = (proposals[:, 3] - proposals[:, 1]).clamp(min=1e-3)
    px, py = proposals[:, 0] + 0.5 * pw, proposals[:, 1] + 0.5 * ph
    gw = (gt[:, 2] - gt[:, 0]).clamp(min=1e-3)
    gh = (gt[:, 3] - gt[:, 1]).clamp(min=1e-3)
    gx, gy = gt[:, 0] + 0.5 * gw, gt[:, 1] + 0.5 * gh
    t = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], 1)
    return t / t.new_tensor(std)


def decode_boxes(proposals: Tensor, deltas: Tensor, std: tuple[float, ...] = BBOX_STD,
                 max_log_scale: float = 4.135) -> Tensor:
    """Inverse of :func:`encode_boxes`. ``deltas`` may be ``Tensor[N, 4]`` or ``Tensor[N, C, 4]`` (per class).

    ``max_log_scale`` (log(1000/16), as torchvision) caps the size change so that a wild prediction cannot overflow.
    """
    d = deltas * deltas.new_tensor(std)
    squeeze = d.dim() == 2
    if squeeze:
        d = d[:, None]
    pw = (proposals[:, 2] - proposals[:, 0])[:, None]
    ph = (proposals[:, 3] - proposals[:, 1])[:, None]
    px, py = proposals[:, 0:1] + 0.5 * pw, proposals[:, 1:2] + 0.5 * ph
    cx, cy = px + d[..., 0] * pw, py + d[..., 1] * ph
    w = pw * torch.exp(d[..., 2].clamp(max=max_log_scale))
    h = ph * torch.exp(d[..., 3].clamp(max=max_log_scale))
    out = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)
    return out[:, 0] if squeeze else out
