"""The paper's combination: selective search with superpixels twice as large, united with top-200 MultiBox."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from gdet.proposals.base import Proposer, dedupe_boxes


class CombinedProposer(Proposer):
    """Union of MultiBox's top ``top_k`` boxes and selective search, duplicates removed.

    MultiBox boxes come first (score ``1 + confidence``), then the selective-search boxes in their own
    rank order (rank scores in (0, 1]); a selective-search box is a duplicate, and dropped, when its IoU with
    a kept MultiBox box is at least ``dup_iou`` (exact duplicates always go).

    Args:
        ss: a selective-search proposer (by default built with ``superpixel_scale=2``).
        multibox: a :class:`~gdet.proposals.multibox.MultiBoxProposer`.
        top_k: MultiBox boxes kept (after its NMS).
        dup_iou: IoU at which a selective-search box duplicates a MultiBox box.
    """

    name = "combined"

    def __init__(self, ss: Proposer, multibox: Proposer, top_k: int = 200, dup_iou: float = 0.9):
        self.ss, self.multibox = ss, multibox
        self.top_k, self.dup_iou = int(top_k), float(dup_iou)

    def config(self) -> dict[str, Any]:
        return {"method": self.name, "top_k": self.top_k, "dup_iou": self.dup_iou, "ss": self.ss.config(),
                "multibox": self.multibox.config()}

    def _propose(self, image: np.ndarray) -> tuple[Tensor, Tensor]:
        mb_boxes, mb_scores = self.multibox.propose(image)
        mb_boxes, mb_scores = mb_boxes[: self.top_k].cpu(), mb_scores[: self.top_k].cpu()
        ss_boxes, ss_scores = self.ss.propose(image)
        if mb_boxes.shape[0] and ss_boxes.shape[0]:
            keep = box_iou(ss_boxes, mb_boxes).amax(1) < self.dup_iou
            ss_boxes, ss_scores = ss_boxes[keep], ss_scores[keep]
        boxes = torch.cat([mb_boxes, ss_boxes])
        scores = torch.cat([1.0 + mb_scores.float(), ss_scores])
        return dedupe_boxes(boxes, scores)


def build_combined(*, weights: str, top_k: int = 200, dup_iou: float = 0.9, superpixel_scale: float = 2.0,
                   ss_mode: str = "fast", device: str = "cpu", multibox_kwargs: dict | None = None,
                   **ss_kwargs) -> CombinedProposer:
    """Build the combination from a MultiBox checkpoint ``weights``; other keywords go to selective search."""
    from gdet.proposals.multibox import MultiBoxProposer
    from gdet.proposals.selective_search import SelectiveSearch

    ss = SelectiveSearch(backend="opencv", mode=ss_mode, superpixel_scale=superpixel_scale, **ss_kwargs)
    mb = MultiBoxProposer.from_checkpoint(weights=weights, device=device,
                                          **{"top_k": top_k, **(multibox_kwargs or {})})
    return CombinedProposer(ss, mb, top_k=top_k, dup_iou=dup_iou)
