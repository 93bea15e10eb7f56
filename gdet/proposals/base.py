"""The one proposal interface: ``propose(image RGB uint8) -> (boxes Tensor[N, 4] xyxy, scores Tensor[N])``."""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.ops import remove_small_boxes

from gdet.errors import GdetError


class Proposer:
    """Base class of every proposal method.

    Subclasses implement :meth:`_propose` and set ``name``. :meth:`config` returns the settings that change
    the output; it is stored in proposal files so that a resumed computation with other settings is refused
    instead of silently mixing two methods.
    """

    name: str = ""

    def propose(self, image: np.ndarray) -> tuple[Tensor, Tensor]:
        """Propose class-agnostic object boxes.

        Args:
            image (np.ndarray[H, W, 3] uint8): RGB image (gray ``[H, W]`` and RGBA are accepted).

        Returns:
            boxes (Tensor[N, 4]): float32 (x1, y1, x2, y2) in pixels of ``image``, best first.
            scores (Tensor[N]): float32, non-increasing.
        """
        image = as_rgb(image)
        h, w = image.shape[:2]
        if h < 2 or w < 2:  # nothing to segment or score: the whole image is the one region
            return torch.tensor([[0.0, 0.0, float(w), float(h)]]), torch.ones(1)
        return self._propose(image)

    def _propose(self, image: np.ndarray) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"method": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "method")
        return f"{type(self).__name__}({args})"


def as_rgb(image: np.ndarray) -> np.ndarray:
    """Check an image and return it as a contiguous ``uint8 [H, W, 3]`` array."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected an RGB numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an image of shape [H, W, 3], got {tuple(image.shape)}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    return np.ascontiguousarray(image[:, :, :3])


def dedupe_boxes(boxes: Tensor, scores: Tensor, decimals: int = 1) -> tuple[Tensor, Tensor]:
    """Drop boxes equal to an earlier (better-ranked) box after rounding to ``decimals``; order is kept.

    Args:
        boxes (Tensor[N, 4]), scores (Tensor[N]): ranked best first.
    """
    if boxes.shape[0] == 0:
        return boxes, scores
    key = np.round(boxes.numpy().astype(np.float64), decimals)
    _, first = np.unique(key, axis=0, return_index=True)
    keep = torch.from_numpy(np.sort(first))
    return boxes[keep], scores[keep]


def filter_small(boxes: Tensor, scores: Tensor, min_size: float) -> tuple[Tensor, Tensor]:
    """Drop boxes whose width or height is below ``min_size`` (and always degenerate ones), keeping order."""
    keep = remove_small_boxes(boxes, max(float(min_size), 1e-3))
    keep = keep.sort().values  # remove_small_boxes returns ascending indices already; make it explicit
    return boxes[keep], scores[keep]


def resize_longer_side(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """Resize so the longer side is ``max_side`` pixels (up or down). Returns the image and the scale factor
    (new / old); ``max_side`` None or 0 leaves the image alone (scale 1)."""
    h, w = image.shape[:2]
    if not max_side or max(h, w) == max_side:
        return image, 1.0
    scale = float(max_side) / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (nw, nh), interpolation=interp), scale


def map_boxes_back(boxes: Tensor, scale: float, width: int, height: int) -> Tensor:
    """Map boxes found on a resized image (``scale`` = new / old) back to the original ``width x height``."""
    if scale != 1.0:
        boxes = boxes / scale
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


def rank_scores(n: int) -> Tensor:
    """Scores for a ranked list without scores of its own: ``(n - i) / n`` for rank ``i`` (1 down to 1/n)."""
    return torch.arange(n, 0, -1, dtype=torch.float32) / max(n, 1)


def check_choice(value: str, choices, what: str) -> str:
    if value not in choices:
        raise GdetError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")
    return value
