"""The record types every module shares: one annotated image, and per-image detections.

Box convention everywhere in gdet: float ``Tensor[N, 4]`` in (x1, y1, x2, y2) pixels of the original image.
Per-image detections are dicts ``{"boxes": Tensor[N, 4], "scores": Tensor[N], "labels": Tensor[N] (int64)}``;
conversion to COCO's (x, y, w, h) happens only at the COCO boundary.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class ImageRecord:
    """One annotated image.

    Attributes:
        image_id: a unique id within its dataset (the VOC file stem or the COCO image id, as a string or int).
        path: path of the image file.
        width, height: image size in pixels.
        boxes (Tensor[N, 4]): float boxes in (x1, y1, x2, y2) pixels.
        labels (Tensor[N]): int64 class indices, contiguous 0..C-1 into the dataset's class-name list.
        ignore (Tensor[N]): bool flags, True for VOC ``difficult`` / COCO ``iscrowd`` objects.
        extra: format-specific fields kept for round trips (e.g. VOC ``truncated``, COCO ``area``).
    """

    image_id: Any
    path: str
    width: int
    height: int
    boxes: Tensor = field(default_factory=lambda: torch.zeros((0, 4), dtype=torch.float32))
    labels: Tensor = field(default_factory=lambda: torch.zeros((0,), dtype=torch.int64))
    ignore: Tensor = field(default_factory=lambda: torch.zeros((0,), dtype=torch.bool))
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = torch.as_tensor(self.boxes, dtype=torch.float32).reshape(-1, 4)
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64).reshape(-1)
        n = self.boxes.shape[0]
        if self.ignore is None or (isinstance(self.ignore, Tensor) and self.ignore.numel() == 0 and n):
            self.ignore = torch.zeros(n, dtype=torch.bool)
        self.ignore = torch.as_tensor(self.ignore, dtype=torch.bool).reshape(-1)
        if not (self.labels.shape[0] == n and self.ignore.shape[0] == n):
            raise ValueError(
                f"image {self.image_id}: {n} boxes but {self.labels.shape[0]} labels and {self.ignore.shape[0]} flags"
            )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def empty_detections(device: torch.device | str = "cpu") -> dict[str, Tensor]:
    """An image with no detections, in the per-image result format."""
    return {
        "boxes": torch.zeros((0, 4), dtype=torch.float32, device=device),
        "scores": torch.zeros((0,), dtype=torch.float32, device=device),
        "labels": torch.zeros((0,), dtype=torch.int64, device=device),
    }
