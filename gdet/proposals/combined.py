"""The paper's combination: selective search with superpixels twice as large, united with top-200 MultiBox."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou

from gdet.errors import DataError, GdetError
from gdet.proposals.base import Proposer, dedupe_boxes
from gdet.proposals.files import ProposalSet
from gdet.proposals.multibox import MultiBoxProposer
from gdet.proposals.selective_search import SelectiveSearch


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
        ss_boxes, ss_scores = self.ss.propose(image)
        return combine(mb_boxes.cpu(), mb_scores.cpu(), ss_boxes, ss_scores, self.top_k, self.dup_iou)


def combine(mb_boxes: Tensor, mb_scores: Tensor, ss_boxes: Tensor, ss_scores: Tensor, top_k: int = 200,
            dup_iou: float = 0.9) -> tuple[Tensor, Tensor]:
    """MultiBox's first ``top_k`` boxes (scores + 1), then the selective-search boxes not duplicating any of
    them (IoU < ``dup_iou``), exact duplicates removed. Inputs are ranked best first."""
    mb_boxes, mb_scores = mb_boxes[:top_k].float(), mb_scores[:top_k].float()
    if mb_boxes.shape[0] and ss_boxes.shape[0]:
        keep = box_iou(ss_boxes.float(), mb_boxes).amax(1) < dup_iou
        ss_boxes, ss_scores = ss_boxes[keep], ss_scores[keep]
    boxes = torch.cat([mb_boxes, ss_boxes.float()])
    scores = torch.cat([1.0 + mb_scores, ss_scores.float()])
    return dedupe_boxes(boxes, scores)


def combine_sets(ss: ProposalSet, multibox: ProposalSet, top_k: int = 200, dup_iou: float = 0.9) -> ProposalSet:
    """:func:`combine` image by image for two proposal files (the images of ``ss``, in its order)."""
    if not 0.0 <= dup_iou <= 1.0:  # NaN too
        raise GdetError(f"dup_iou: must be a number in [0, 1], got {dup_iou!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise GdetError(f"top_k: must be a non-negative integer, got {top_k!r}")
    missing = [i for i in ss.image_ids if i not in multibox]
    if missing:
        raise DataError(f"{len(missing)} images of the selective-search set have no MultiBox proposals "
                        f"(first: {missing[0]!r})")
    boxes, scores = [], []
    for i in ss.image_ids:
        b, s = combine(*multibox[i], *ss[i], top_k=top_k, dup_iou=dup_iou)
        boxes.append(b)
        scores.append(s)
    meta = {"method": "combined", "top_k": top_k, "dup_iou": dup_iou, "ss": ss.meta, "multibox": multibox.meta}
    return ProposalSet.from_lists(ss.image_ids, boxes, scores, [ss.size(i) for i in ss.image_ids], meta)


def build_combined(*, weights: str, top_k: int = 200, dup_iou: float = 0.9, superpixel_scale: float = 2.0,
                   ss_mode: str = "fast", device: str = "cpu", tiles: int = 1, tile_overlap: float = 0.25,
                   multibox_kwargs: dict | None = None, **ss_kwargs) -> CombinedProposer:
    """Build the combination from a MultiBox checkpoint ``weights`` (``tiles``, ``tile_overlap``: see
    :class:`~gdet.proposals.multibox.MultiBoxProposer`); other keywords go to selective search."""
    ss = SelectiveSearch(backend="opencv", mode=ss_mode, superpixel_scale=superpixel_scale, **ss_kwargs)
    mb = MultiBoxProposer.from_checkpoint(weights=weights, device=device,
                                          **{"top_k": top_k, "tiles": tiles, "tile_overlap": tile_overlap,
                                             **(multibox_kwargs or {})})
    return CombinedProposer(ss, mb, top_k=top_k, dup_iou=dup_iou)
